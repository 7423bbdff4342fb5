"""`composer collect`: every chosen expert on every prompt of a set, graded, into a resumable
long outcome table (composer/collect/store.py) that `router train` and `eval` read.

The run goes through the core's runtime (`Composer.run_work`), chunk by chunk: one chunk is one
scheduled stage of every pending (prompt, expert) call, so each local model is loaded once per
chunk at most, and the scheduler keeps models resident between chunks while the memory budget
allows (`upcoming` names the next stage's experts): a whole run then loads each local model
once, the lower bound. With a judge, a second stage per chunk runs the judge's calls. A chunk's
rows are written durably at its end (at most one chunk is redone after a kill -9).

A call that fails (load error, timeout, a judge call that fails) writes no row: the pair stays
pending, is retried by the next run on the same --out, and the summary counts it. A judge
verdict that cannot be parsed is a result: the row is written with its score missing and the
reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from composer.collect.judge import Judge
from composer.collect.prompts import PromptItem, grade
from composer.collect.store import OutcomeStore
from composer.errors import BadRequestError
from composer.scheduler import WorkItem
from composer.types import Candidate, Query


@dataclass
class CollectReport:
    store: str
    prompts: int
    experts: list[str]
    pairs_total: int
    pairs_before: int  # already stored when the run started (resume)
    pairs_written: int = 0
    failed: list[dict] = field(default_factory=list)  # {"query_id", "expert", "error"}
    loads: int = 0
    lower_bound: int = 0
    load_events: list[dict] = field(default_factory=list)
    chunks: int = 0
    wall_s: float = 0.0
    judge_calls: int = 0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _row(p: PromptItem, c: Candidate, max_tokens: int, graded: dict) -> dict:
    u = c.usage
    return {"query_id": p.id, "prompt": p.prompt, "task": p.task, "expert": c.expert,
            "score": graded.get("score"), "cost": u.cost, "response": c.text,
            "latency": round(u.latency_s, 4), "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens, "tokens": u.total_tokens, "max_tokens": max_tokens,
            "finish_reason": c.finish_reason, "reference": p.reference,
            **{k: v for k, v in graded.items() if k != "score"}, "finished_at": time.time()}


def collect(composer, prompts: list[PromptItem], experts: list[str], store: OutcomeStore, *,
            max_tokens: dict[str, int], seed: int = 0, judge: Judge | None = None,
            chunk_size: int = 16, progress: Callable[[int, int, CollectReport], None] | None = None) -> CollectReport:
    """Run `experts` on `prompts`, grade, append to `store`; skip pairs already stored.

    `progress(done_pairs, total_pairs, report_so_far)` is called after each chunk (the CLI's
    progress bar, or a line per chunk).
    """
    if chunk_size < 1:
        raise BadRequestError("chunk size must be at least 1")
    for e in [*experts, *([judge.expert] if judge else [])]:
        composer.expert_spec(e)  # raises naming the known experts
    if judge is None and any(p.benchmark is None and p.reference is None for p in prompts):
        raise BadRequestError("some prompts have no reference answer; grade them with --judge EXPERT")
    ref_expert = judge.reference_expert if judge and judge.mode == "pairwise" else None
    if ref_expert is not None and ref_expert not in experts:
        raise BadRequestError(f"the reference expert '{ref_expert}' must be one of the collected experts "
                              f"({', '.join(experts)})")

    t0 = time.perf_counter()
    store.repair()
    stored = store.rows()
    done = {(str(r["query_id"]), str(r["expert"])) for r in stored}
    ref_answers = {str(r["query_id"]): r["response"] for r in stored if r["expert"] == ref_expert}
    total = len(prompts) * len(experts)
    before = sum((p.id, e) in done for p in prompts for e in experts)
    report = CollectReport(str(store.path), len(prompts), list(experts), total, before)
    local = [e for e in dict.fromkeys([*experts, *([judge.expert] if judge else [])])
             if not composer.backend(e).remote]
    resident = set(composer.loaded_experts())
    report.lower_bound = sum(e not in resident for e in local)
    pending = [p for p in prompts if any((p.id, e) not in done for e in experts)]
    chunks = [pending[i:i + chunk_size] for i in range(0, len(pending), chunk_size)]
    judge_set = {judge.expert} if judge else set()
    finished = before
    if progress:
        progress(finished, total, report)
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        # answers: every pending (prompt, expert) of the chunk in ONE stage
        work = [WorkItem(Query(p.prompt, id=p.id, task=p.task, max_tokens=max_tokens[e], temperature=0.0,
                               seed=seed), e, tag=p.id)
                for p in chunk for e in experts if (p.id, e) not in done]
        later = [] if last else [set(experts)]
        upcoming = [judge_set, *later] if judge else later
        stage = composer.run_work(work, upcoming=upcoming)
        _count_loads(report, stage)
        by_prompt = {p.id: p for p in chunk}
        answered: list[tuple[PromptItem, str, Candidate]] = []
        for w, c in zip(work, stage.candidates):
            if not c.ok or c.expert != w.expert:  # a fallback's answer is not this expert's outcome
                report.failed.append({"query_id": w.tag, "expert": w.expert,
                                      "error": c.error or f"answered by fallback '{c.expert}'"})
                continue
            answered.append((by_prompt[w.tag], w.expert, c))
            if w.expert == ref_expert:
                ref_answers[w.tag] = c.text
        rows = _grade_chunk(composer, answered, judge, ref_answers, max_tokens, report,
                            upcoming=[] if last else [set(experts)])
        report.pairs_written += store.append(rows)
        done.update((r["query_id"], r["expert"]) for r in rows)
        finished += len(rows)
        report.chunks += 1
        if progress:
            progress(finished, total, report)
    report.wall_s = round(time.perf_counter() - t0, 3)
    return report


def _count_loads(report: CollectReport, stage) -> None:
    loads = [e for e in stage.events if e.get("event") == "load"]
    report.loads += len(loads)
    report.load_events.extend({"expert": e.get("expert"), "seconds": round(float(e.get("seconds") or 0), 3)}
                              for e in loads)


def _grade_chunk(composer, answered, judge: Judge | None, ref_answers: dict, max_tokens: dict,
                 report: CollectReport, upcoming) -> list[dict]:
    if judge is None:
        return [_row(p, c, max_tokens[e], {**grade(p, c.text), "grader": "gold" if p.benchmark else "reference"})
                for p, e, c in answered]
    jobs, work = [], []
    for p, e, c in answered:
        if judge.mode == "pairwise" and e != judge.reference_expert and p.id not in ref_answers:
            report.failed.append({"query_id": p.id, "expert": e,
                                  "error": f"no answer from the reference expert '{judge.reference_expert}'"})
            continue
        qs = judge.queries(p.id, e, p.prompt, c.text, p.reference, ref_answers.get(p.id))
        jobs.append((p, e, c, len(work), len(qs)))
        work.extend(WorkItem(q, judge.expert, tag=f"{p.id}\x00{e}") for q in qs)
    cands: list[Candidate] = []
    if work:
        stage = composer.run_work(work, upcoming=upcoming)
        _count_loads(report, stage)
        cands = stage.candidates
        report.judge_calls += len(work)
    rows = []
    for p, e, c, start, k in jobs:
        mine = cands[start:start + k]
        bad = [j for j in mine if not j.ok or j.expert != judge.expert]
        if bad:
            report.failed.append({"query_id": p.id, "expert": e,
                                  "error": f"judge '{judge.expert}' failed: {bad[0].error or 'fallback answered'}"})
            continue
        rows.append(_row(p, c, max_tokens[e], {**judge.verdict(e, mine), "grader": f"judge:{judge.mode}"}))
    return rows


def summarise(rows: list[dict], experts: list[str] | None = None) -> dict:
    """Per expert: n, mean score (missing excluded and counted), total cost, tokens, mean latency;
    and the oracle (best expert per query) over the queries every listed expert answered."""
    experts = experts or list(dict.fromkeys(r["expert"] for r in rows))
    out: dict = {"experts": {}}
    by_q: dict[str, dict[str, float]] = {}
    for e in experts:
        mine = [r for r in rows if r["expert"] == e]
        scores = [r["score"] for r in mine if r.get("score") is not None]
        out["experts"][e] = {
            "n": len(mine), "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
            "missing": len(mine) - len(scores), "total_cost": sum(float(r.get("cost") or 0) for r in mine),
            "tokens": sum(int(r.get("tokens") or 0) for r in mine),
            "mean_latency_s": round(sum(float(r.get("latency") or 0) for r in mine) / len(mine), 3) if mine else None,
            "judge_cost": sum(float(r.get("judge_cost") or 0) for r in mine)}
        for r in mine:
            if r.get("score") is not None:
                by_q.setdefault(str(r["query_id"]), {})[e] = float(r["score"])
    full = [s for s in by_q.values() if len(s) == len(experts)]
    out["oracle"] = round(sum(max(s.values()) for s in full) / len(full), 4) if full else None
    out["queries_all_experts"] = len(full)
    return out
