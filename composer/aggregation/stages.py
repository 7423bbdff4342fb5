"""Helpers shared by the aggregators: one scheduled stage of calls, and its per-query report.

Each generation call of a pipeline is a `Call` (which query, which expert, the exact Query sent).
A stage's calls go to `run_stage` together, so the scheduler groups them by expert and loads each
expert once. Sub-calls get derived ids (`<query id>/<stage>/<n>`) so a stage never holds two
calls with one id; the candidates come back with the original query id and the sub-call in
`metadata["call"]`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from composer.scheduler import WorkItem
from composer.types import Answer, Candidate, Query, RouteDecision, Usage


@dataclass
class Call:
    qi: int  # index of the original query in the batch
    expert: str
    query: Query  # what is actually sent
    role: str  # "proposer" or "aggregator"
    meta: dict = field(default_factory=dict)


def sample_query(q: Query, sample: int | None, params: dict, suffix: str) -> Query:
    """The query sent for one call. With `sample` set, it is sample number `sample` at the
    pipeline's temperature with its own seed (base seed + sample) so samples differ."""
    if sample is None:
        return dataclasses.replace(q, id=f"{q.id}/{suffix}")
    base = params.get("seed", q.seed if q.seed is not None else 0)
    return dataclasses.replace(q, id=f"{q.id}/{suffix}", temperature=float(params.get("temperature", 0.7)),
                               seed=int(base) + sample)


def run_calls(calls: list[Call], queries: list[Query], run_stage, upcoming: list[set[str]] | None,
              stage: str = "") -> tuple[list[Candidate], dict]:
    """Run one stage; returns candidates aligned with `calls` and the batch-level record."""
    work = [WorkItem(c.query, c.expert, tag=c.role) for c in calls]
    res = run_stage(work, upcoming) if work else None
    out = []
    for call, cand in zip(calls, res.candidates if res else []):
        meta = {**cand.metadata, **call.meta, "call": call.query.id, "role": call.role,
                "stage": stage, "temperature": call.query.temperature, "seed": call.query.seed}
        out.append(dataclasses.replace(cand, query_id=queries[call.qi].id, metadata=meta))
    if res is not None and len(out) != len(calls):
        raise RuntimeError(f"stage '{stage}' returned {len(out)} candidates for {len(calls)} calls")
    batch = {"calls": len(work), "experts": sorted({w.expert for w in work}),
             "loads": res.loads if res else 0, "unloads": res.unloads if res else 0,
             "events": res.events if res else [], "wall_s": round(res.wall_s, 4) if res else 0.0,
             "upcoming": [sorted(s) for s in upcoming] if upcoming else []}
    return out, batch


def total_usage(cands: list[Candidate]) -> Usage:
    return sum((c.usage for c in cands), Usage())


def query_stage(name: str, kind: str, cands: list[Candidate], batch: dict, **extra) -> dict:
    """One stage as one query's report shows it: its candidates (every one, failed included),
    its tokens, cost and latency, and the batch-level loads and wall time."""
    usage = total_usage(cands)
    return {"stage": name, "kind": kind, "calls": len(cands),
            "experts": sorted({c.expert for c in cands}),
            "candidates": [c.to_dict() for c in cands],
            "usage": usage.to_dict(),
            "latency_s": round(max((c.usage.latency_s for c in cands), default=0.0), 4),
            "loads": batch["loads"], "unloads": batch["unloads"], "batch": batch, **extra}


def answer_from(q: Query, d: RouteDecision, cands: list[Candidate], text: str, stages: list[dict],
                error: str | None) -> Answer:
    experts = list(dict.fromkeys(c.expert for c in cands))
    return Answer(q.id, text, experts, cands, total_usage(cands), d, stages, error)


def upcoming_after(stages: list[set[str]], i: int) -> list[set[str]] | None:
    """The experts of the stages after stage i (for the scheduler's furthest-next-use eviction)."""
    rest = [s for s in stages[i + 1:] if s]
    return rest or None
