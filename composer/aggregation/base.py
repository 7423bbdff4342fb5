"""The aggregation seam: turn routed queries into answers by running one or more stages.

An Aggregator receives the queries, their RouteDecisions and a `run_stage(work, upcoming)`
callable (the executor's, through the scheduler), and returns one Answer per query. The
proposer stage and any aggregator stages all go through `run_stage`, so every generation call
is grouped by expert and every load is counted.
"""

from __future__ import annotations

import abc
from typing import Callable

from composer.executors import StageResult
from composer.scheduler import WorkItem
from composer.types import Answer, Candidate, Query, RouteDecision, Usage

RunStage = Callable[[list[WorkItem], "list[set[str]] | None"], StageResult]


def stage_record(name: str, res: StageResult, work: list[WorkItem]) -> dict:
    """What the report shows for one stage: calls, loads/unloads with durations, time, usage."""
    usage = sum((c.usage for c in res.candidates), Usage())
    return {"stage": name, "calls": len(work), "experts": sorted({w.expert for w in work}),
            "events": res.events, "loads": res.loads, "unloads": res.unloads,
            "wall_s": round(res.wall_s, 4), "usage": usage.to_dict()}


def best_candidate(cands: list[Candidate], decision: RouteDecision) -> Candidate | None:
    """The first successful candidate in the router's order of preference."""
    rank = {e: i for i, e in enumerate(decision.experts)}
    ok = sorted((c for c in cands if c.ok), key=lambda c: rank.get(c.expert, len(rank)))
    return ok[0] if ok else None


def errors_of(cands: list[Candidate]) -> str:
    return "; ".join(c.error for c in cands if c.error) or "no candidate"


class Aggregator(abc.ABC):
    kind = "base"
    PARAMS: frozenset[str] = frozenset()  # the `params` keys this kind reads (experts.yaml checks them)

    def __init__(self, expert: str | None = None, **params):
        self.expert = expert
        self.params = params

    @abc.abstractmethod
    def run(self, queries: list[Query], decisions: list[RouteDecision], run_stage: RunStage) -> list[Answer]: ...


class NoAggregation(Aggregator):
    """Each query's routed experts answer; the router's most preferred successful answer wins."""

    kind = "none"

    def run(self, queries, decisions, run_stage):
        work = [WorkItem(q, e) for q, d in zip(queries, decisions) for e in d.experts]
        res = run_stage(work, None)
        stage = stage_record("proposers", res, work)
        by_q: dict[str, list[Candidate]] = {}
        for c in res.candidates:
            by_q.setdefault(c.query_id, []).append(c)
        answers = []
        for q, d in zip(queries, decisions):
            cands = by_q.get(q.id, [])
            best = best_candidate(cands, d)
            usage = sum((c.usage for c in cands), Usage())
            answers.append(Answer(q.id, best.text if best else "", [c.expert for c in cands], cands,
                                  usage, d, [stage], None if best else errors_of(cands)))
        return answers
