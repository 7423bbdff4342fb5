"""Mixture-of-Agents (Wang et al., 2024), Self-MoA and sequential Self-MoA (Li et al., 2025).

- `MoA`: `layers` layers of the routed proposers; layer 1 answers the question, each later layer
  sees the previous layer's answers (as untrusted data) and answers again; a final aggregator
  synthesises the last layer. Every layer is ONE scheduled stage (grouped by expert), and each
  stage tells the scheduler which experts the later stages need, so they stay resident.
- `SelfMoA`: `samples` answers from the one routed expert at `temperature` > 0, each with its own
  seed (seed, seed+1, ...), then one aggregation.
- `SelfMoASeq`: the same samples aggregated through a sliding window of `window` texts: step 1
  takes the first `window` samples, every later step takes the running synthesis plus the next
  `window - 1` samples, so the largest aggregator prompt holds at most `window` answers of at most
  max_tokens each, plus the question, whatever `samples` is.

The aggregator expert is the router's `aggregator_expert`, else the pipeline's, else the first
routed expert. Prompts are built by composer.aggregation.prompts (untrusted-data framing, the
"even" cut policy when the prompt would overflow the aggregator's context).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from composer.aggregation.base import Aggregator, errors_of
from composer.aggregation.prompts import fit_to_context, messages
from composer.aggregation.stages import (Call, answer_from, query_stage, run_calls, sample_query,
                                         upcoming_after)
from composer.aggregation.vote import CHOICE_TASKS, NUMBER_TASKS, has_options
from composer.types import Candidate, Query, RouteDecision, Usage


def prompt_format(q: Query, requested: str = "auto") -> str:
    """The output format the aggregator is told to keep: choice, number, exact or free."""
    if requested != "auto":
        return requested
    task = (q.task or "").lower()
    if task in CHOICE_TASKS or has_options(q.text):
        return "choice"
    return "number" if task in NUMBER_TASKS else "free"


class SynthesisAggregator(Aggregator):
    """Shared machinery: building aggregation calls under the context policy."""

    kind = "synthesis"
    PARAMS = frozenset({"answer_format", "aggregator_temperature", "chars_per_token", "context_length"})
    expert_spec_: Callable | None = None

    def bind(self, expert_spec: Callable) -> "SynthesisAggregator":
        """Give the aggregator the registry's `expert_spec(name)` (context lengths, defaults)."""
        self.expert_spec_ = expert_spec
        return self

    def aggregator_for(self, d: RouteDecision) -> str:
        return d.aggregator_expert or self.expert or d.experts[0]

    def _limits(self, expert: str, q: Query) -> tuple[int | None, int]:
        spec = self.expert_spec_(expert) if self.expert_spec_ else None
        ctx = self.params.get("context_length", spec.context_length if spec else None)
        default_mt = spec.generation.max_tokens if spec else 256
        return ctx, q.max_tokens if q.max_tokens is not None else default_mt

    def synthesis_call(self, qi: int, q: Query, expert: str, texts: list[str], suffix: str, role: str,
                       synthesis: str | None = None, meta: dict | None = None):
        """(Call, input record) or (None, input record with the error) when it cannot fit."""
        fmt = prompt_format(q, self.params.get("answer_format", "auto"))
        ctx, mt = self._limits(expert, q)
        fitted = fit_to_context(q.text, texts, context_length=ctx, max_tokens=mt, answer_format=fmt,
                                synthesis=synthesis,
                                chars_per_token=float(self.params.get("chars_per_token", 3.0)))
        record = {"answer_format": fmt, "truncation": fitted.report}
        if fitted.error:
            record["error"] = fitted.error
            return None, record
        msgs = messages(q.text, fitted.candidates, fmt, fitted.synthesis)
        record["input"] = [dict(m) for m in msgs]
        sq = dataclasses.replace(q, id=f"{q.id}/{suffix}", text=msgs[-1]["content"], messages=msgs,
                                 temperature=float(self.params.get("aggregator_temperature", 0.0)))
        return Call(qi, expert, sq, role, dict(meta or {})), record


def failed_candidate(q: Query, expert: str, message: str, stage: str) -> Candidate:
    return Candidate(q.id, expert, "", Usage(), error=message,
                     metadata={"stage": stage, "role": "aggregator", "retryable": False})


class _Staged:
    """Book-keeping for a multi-stage run: per-query candidates, stage reports and errors."""

    def __init__(self, n: int):
        self.cands: list[list[Candidate]] = [[] for _ in range(n)]
        self.stages: list[list[dict]] = [[] for _ in range(n)]
        self.error: list[str | None] = [None] * n

    def alive(self) -> list[int]:
        return [i for i, e in enumerate(self.error) if e is None]

    def add(self, qi: int, name: str, kind: str, cands: list[Candidate], batch: dict, **extra) -> None:
        self.cands[qi] += cands
        self.stages[qi].append(query_stage(name, kind, cands, batch, **extra))

    def run_synthesis(self, agg: SynthesisAggregator, name: str, role: str, run_stage, queries,
                      jobs: list[tuple[int, str, list[str], str | None, dict]],
                      upcoming) -> dict[tuple[int, str], Candidate]:
        """One stage of synthesis calls: jobs are (qi, expert, texts, synthesis, meta)."""
        calls, records, out = [], [], {}
        for qi, expert, texts, synthesis, meta in jobs:
            q = queries[qi]
            call, rec = agg.synthesis_call(qi, q, expert, texts, f"{name}/{expert}/{len(calls)}", role,
                                           synthesis, meta)
            if call is None:
                c = failed_candidate(q, expert, rec["error"], name)
                self.add(qi, name, role, [c], {"calls": 0, "experts": [], "loads": 0, "unloads": 0,
                                               "events": [], "wall_s": 0.0, "upcoming": []}, **rec)
                self.error[qi] = rec["error"]
                continue
            calls.append(call)
            records.append(rec)
        cands, batch = run_calls(calls, queries, run_stage, upcoming, stage=name)
        by_q: dict[int, list[tuple[Candidate, dict]]] = {}
        for call, cand, rec in zip(calls, cands, records):
            by_q.setdefault(call.qi, []).append((cand, rec))
            out[(call.qi, call.expert)] = cand
        for qi, pairs in by_q.items():
            extra = pairs[0][1] if len(pairs) == 1 else {"inputs": [r for _, r in pairs]}
            if len(pairs) == 1:
                extra = {**extra, "output": pairs[0][0].text}
            self.add(qi, name, role, [c for c, _ in pairs], batch, **extra)
        return out

    def answers(self, queries, decisions, final: dict[int, Candidate]):
        out = []
        for qi, (q, d) in enumerate(zip(queries, decisions)):
            c = final.get(qi)
            err = self.error[qi] or (None if c is not None and c.ok else errors_of([c] if c else []))
            out.append(answer_from(q, d, self.cands[qi], c.text if c is not None and c.ok else "",
                                   self.stages[qi], err))
        return out


class MoA(SynthesisAggregator):
    """Params: layers (default 1), temperature (proposers; default: the query's), seed,
    aggregator_temperature (default 0), answer_format (auto|choice|number|exact|free)."""

    kind = "moa"
    PARAMS = SynthesisAggregator.PARAMS | {"layers", "temperature", "seed"}

    def run(self, queries, decisions, run_stage):
        layers = int(self.params.get("layers", 1))
        if layers < 1:
            raise ValueError(f"moa: layers must be >= 1, got {layers}")
        st = _Staged(len(queries))
        proposers = {e for d in decisions for e in d.experts}
        plan = [proposers] * layers + [{self.aggregator_for(d) for d in decisions}]
        prev: dict[int, list[str]] = {}
        sampled = "temperature" in self.params
        for layer in range(1, layers + 1):
            name = f"layer{layer}"
            if layer == 1:
                calls = [Call(qi, e, sample_query(q, j if sampled else None, self.params, f"{name}/{j}"),
                              "proposer", {"layer": layer})
                         for qi, (q, d) in enumerate(zip(queries, decisions)) for j, e in enumerate(d.experts)]
                cands, batch = run_calls(calls, queries, run_stage, upcoming_after(plan, 0), stage=name)
                for qi in range(len(queries)):
                    mine = [c for c, call in zip(cands, calls) if call.qi == qi]
                    st.add(qi, name, "proposers", mine, batch)
                    prev[qi] = [c.text for c in mine if c.ok]
            else:
                jobs = [(qi, e, prev[qi], None, {"layer": layer})
                        for qi in st.alive() for e in decisions[qi].experts]
                res = st.run_synthesis(self, name, "proposer", run_stage, queries, jobs,
                                       upcoming_after(plan, layer - 1))
                for qi in st.alive():
                    prev[qi] = [res[(qi, e)].text for e in decisions[qi].experts
                                if (qi, e) in res and res[(qi, e)].ok]
            for qi in st.alive():
                if not prev[qi]:
                    st.error[qi] = f"every proposer of {name} failed: " + errors_of(
                        [c for c in st.cands[qi] if c.metadata.get("stage") == name])
        jobs = [(qi, self.aggregator_for(decisions[qi]), prev[qi], None, {}) for qi in st.alive()]
        res = st.run_synthesis(self, "aggregate", "aggregator", run_stage, queries, jobs, None)
        final = {qi: c for (qi, _), c in res.items()}
        return st.answers(queries, decisions, final)


class SelfMoA(SynthesisAggregator):
    """Params: samples (default 4), temperature (default 0.7), seed (default: the query's, else 0),
    aggregator_temperature (default 0), answer_format."""

    kind = "self_moa"
    PARAMS = SynthesisAggregator.PARAMS | {"samples", "temperature", "seed"}

    def _samples(self, queries, decisions, run_stage, st: _Staged, upcoming) -> dict[int, list[str]]:
        n = int(self.params.get("samples", 4))
        if n < 1:
            raise ValueError(f"{self.kind}: samples must be >= 1, got {n}")
        if float(self.params.get("temperature", 0.7)) <= 0:
            raise ValueError(f"{self.kind}: temperature must be > 0 so samples differ")
        calls = [Call(qi, d.experts[0], sample_query(q, s, self.params, f"sample/{s}"), "proposer",
                      {"sample": s}) for qi, (q, d) in enumerate(zip(queries, decisions)) for s in range(n)]
        cands, batch = run_calls(calls, queries, run_stage, upcoming, stage="samples")
        texts = {}
        for qi in range(len(queries)):
            mine = [c for c, call in zip(cands, calls) if call.qi == qi]
            st.add(qi, "samples", "proposers", mine, batch)
            texts[qi] = [c.text for c in mine if c.ok]
            if not texts[qi]:
                st.error[qi] = "every sample failed: " + errors_of(mine)
        return texts

    def run(self, queries, decisions, run_stage):
        st = _Staged(len(queries))
        texts = self._samples(queries, decisions, run_stage, st, [{self.aggregator_for(d) for d in decisions}])
        jobs = [(qi, self.aggregator_for(decisions[qi]), texts[qi], None, {}) for qi in st.alive()]
        res = st.run_synthesis(self, "aggregate", "aggregator", run_stage, queries, jobs, None)
        return st.answers(queries, decisions, {qi: c for (qi, _), c in res.items()})


class SelfMoASeq(SelfMoA):
    """Sequential Self-MoA. Params as SelfMoA plus window (default 3, >= 2)."""

    kind = "self_moa_seq"
    PARAMS = SelfMoA.PARAMS | {"window"}

    def run(self, queries, decisions, run_stage):
        w = int(self.params.get("window", 3))
        if w < 2:
            raise ValueError(f"self_moa_seq: window must be >= 2 (a synthesis plus one new answer), got {w}")
        st = _Staged(len(queries))
        aggs = {self.aggregator_for(d) for d in decisions}
        texts = self._samples(queries, decisions, run_stage, st, [aggs])
        synth: dict[int, Candidate] = {}
        pos = {qi: 0 for qi in st.alive()}
        step = 0
        while True:
            jobs = []
            for qi in st.alive():
                if pos[qi] >= len(texts[qi]) and qi in synth:
                    continue
                take = w if qi not in synth else w - 1
                window = texts[qi][pos[qi]: pos[qi] + take]
                jobs.append((qi, self.aggregator_for(decisions[qi]), window,
                             synth[qi].text if qi in synth else None,
                             {"step": step + 1, "window": [pos[qi], pos[qi] + len(window)]}))
                pos[qi] += len(window)
            if not jobs:
                break
            step += 1
            more = any(pos[qi] < len(texts[qi]) for qi, *_ in jobs)
            res = st.run_synthesis(self, f"aggregate{step}", "aggregator", run_stage, queries, jobs,
                                   [aggs] if more else None)
            for (qi, _), c in res.items():
                if c.ok:
                    synth[qi] = c
                else:
                    st.error[qi] = f"aggregation step {step} failed: {c.error}"
        return st.answers(queries, decisions, synth)
