"""Reliability around the stage runner: timeouts, retries, fallbacks, cooldowns, overflow, cancel.

`Reliability.wrap(run_stage)` returns a stage runner with the same contract (work in, one
Candidate per work item out, aligned) that the core hands to every aggregator, so the CLI, the
SDK and the HTTP endpoint all get the same policy:

- per-call timeout: an expert group of n items gets `timeout_s * ceil(n / concurrency)` seconds
  (ExpertSpec); past it the items fail with error_type "timeout" (retryable) and the expert is
  marked busy until the abandoned call returns, so no other call runs on it concurrently;
- retries with exponential backoff and jitter, only for retryable errors; a "bad_request"
  (HTTP 400 class) is never retried and never sent elsewhere;
- fallbacks: after the retries (or at once for non-retryable errors) the item moves along its
  expert's `fallbacks` chain, bounded by `max_fallbacks`, never visiting an expert twice;
- cooldown: an expert that fails `cooldown_after` times in a row, while at least
  `cooldown_rate` of its last `window` calls failed, is skipped for `cooldown_s` seconds and
  comes back by itself (the next call is a trial: one more failure sends a still-failing expert
  back at once). The rate guard keeps an expert that fails now and then (a flaky 25 %) in
  service, where streaks of three happen every few dozen calls; a dead one fails them all;
- context overflow: the item goes to the smallest expert with a larger context window (its
  fallbacks first) instead of being retried;
- cancel(query_ids): a cancelled query gets no further attempts and its waiting stops.

Every candidate that comes out carries `metadata["experts_tried"]` (in order) and
`metadata["attempts"]` (expert, error_type, error per failed attempt).

    >>> policy = Reliability(composer.experts)
    >>> run_stage = policy.wrap(composer.executor.run_stage)
"""

from __future__ import annotations

import math
import random
from collections import deque
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from composer.executors import StageResult
from composer.scheduler import WorkItem
from composer.types import Candidate, Usage

_OVERFLOW = re.compile(r"context (window|length)|exceed.*context|maximum context|too many tokens", re.I)


def classify(c: Candidate) -> tuple[str, bool]:
    """(error_type, retryable) of a failed candidate, from its metadata, else from its text."""
    meta = c.metadata or {}
    etype = meta.get("error_type")
    if etype is None:
        etype = "context_overflow" if _OVERFLOW.search(c.error or "") else "error"
    retryable = bool(meta.get("retryable", etype in ("timeout", "rate_limit", "unavailable")))
    if etype in ("context_overflow", "bad_request", "cancelled"):
        retryable = False
    return etype, retryable


@dataclass
class ExpertHealth:
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    abandoned_calls: int = 0  # calls we stopped waiting for that have not returned yet
    failures: int = 0
    successes: int = 0
    cooldowns: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=20))  # True = failed


@dataclass
class _Item:
    index: int
    work: WorkItem
    chain: list[str]  # remaining experts to try after the current one
    expert: str
    tried: list[str] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    retries_here: int = 0
    hops: int = 0
    result: Candidate | None = None
    ready_at: float = 0.0


class Reliability:
    """Policy state shared by every request of one Composer (one per process/replica)."""

    def __init__(self, experts: dict, *, max_retries: int = 2, backoff_s: float = 0.05,
                 backoff_max_s: float = 2.0, cooldown_after: int = 3, cooldown_s: float = 10.0,
                 cooldown_rate: float = 0.6, window: int = 20, max_fallbacks: int = 3, seed: int | None = None, get_backend=None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.experts = experts
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.cooldown_after = cooldown_after
        self.cooldown_s = cooldown_s
        self.cooldown_rate = cooldown_rate
        self.window = window
        self.max_fallbacks = max_fallbacks
        self.seed = seed
        self.get_backend = get_backend  # to signal `cancel(query_ids)` to backends that support it
        self.clock = clock
        self.sleep = sleep
        self._health: dict[str, ExpertHealth] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._rng: random.Random | None = None

    # -- state ------------------------------------------------------------------------------
    def health(self, expert: str) -> ExpertHealth:
        with self._lock:
            return self._health_locked(expert)

    def _health_locked(self, expert: str) -> ExpertHealth:
        h = self._health.get(expert)
        if h is None:
            h = self._health[expert] = ExpertHealth(recent=deque(maxlen=self.window))
        return h

    def unavailable_reason(self, expert: str) -> str | None:
        """Why `expert` must be skipped now, or None when it may be called."""
        h = self.health(expert)
        if h.abandoned_calls:
            return f"expert '{expert}' is still busy with {h.abandoned_calls} timed-out/cancelled call(s)"
        left = h.cooldown_until - self.clock()
        if left > 0:
            return (f"expert '{expert}' is cooling down for {left:.1f}s more after "
                    f"{h.consecutive_failures} consecutive failures")
        return None

    def status(self) -> dict[str, dict]:
        now = self.clock()
        with self._lock:
            return {e: {"available": h.abandoned_calls == 0 and h.cooldown_until <= now,
                        "cooldown_left_s": round(max(0.0, h.cooldown_until - now), 3),
                        "consecutive_failures": h.consecutive_failures, "failures": h.failures,
                        "successes": h.successes, "cooldowns": h.cooldowns,
                        "busy_calls": h.abandoned_calls}
                    for e, h in self._health.items()}

    def retry_after_s(self) -> float:
        """Seconds until the soonest cooling-down expert is back (0 when none cools down)."""
        now = self.clock()
        with self._lock:
            left = [h.cooldown_until - now for h in self._health.values() if h.cooldown_until > now]
        return min(left) if left else 0.0

    def _record(self, expert: str, ok: bool) -> None:
        with self._lock:
            h = self._health_locked(expert)
            h.recent.append(not ok)
            if ok:
                h.consecutive_failures, h.successes = 0, h.successes + 1
                return
            h.failures += 1
            h.consecutive_failures += 1
            rate = sum(h.recent) / len(h.recent)
            if h.consecutive_failures >= self.cooldown_after and rate >= self.cooldown_rate:
                h.cooldown_until = self.clock() + self.cooldown_s
                h.cooldowns += 1

    def cancel(self, query_ids: Iterable[str]) -> None:
        with self._lock:
            self._cancelled.update(query_ids)

    def forget(self, query_ids: Iterable[str]) -> None:
        """Drop cancellation marks once the requests are finished (bounded memory)."""
        with self._lock:
            self._cancelled.difference_update(query_ids)

    def is_cancelled(self, query_id: str) -> bool:
        with self._lock:
            return query_id in self._cancelled

    # -- choices ----------------------------------------------------------------------------
    def chain_of(self, expert: str) -> list[str]:
        """Fallbacks reachable from `expert`, breadth first, without cycles, bounded."""
        out, seen, frontier = [], {expert}, [expert]
        while frontier and len(out) < self.max_fallbacks:
            nxt = []
            for e in frontier:
                spec = self.experts.get(e)
                for fb in (spec.fallbacks if spec is not None else []):
                    if fb not in seen and len(out) < self.max_fallbacks:
                        seen.add(fb)
                        out.append(fb)
                        nxt.append(fb)
            frontier = nxt
        return out

    def larger_context(self, item: _Item) -> str | None:
        """The expert to take an overflowing item: a larger window, fallbacks first, smallest first."""
        here = self.experts[item.expert].context_length
        bigger = [e for e, s in self.experts.items() if s.context_length > here and e not in item.tried]
        if not bigger:
            return None
        pref = [e for e in item.chain if e in bigger]
        if pref:
            return pref[0]
        return min(bigger, key=lambda e: (self.experts[e].context_length, e))

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half uniform (`attempt` starts at 1)."""
        if self._rng is None:
            self._rng = random.Random(self.seed)
        d = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        return d / 2 + self._rng.uniform(0, d / 2)

    # -- the wrapper ------------------------------------------------------------------------
    def wrap(self, run_stage, pipeline=None, pipelines: dict | None = None):
        """The stage runner with this policy. With a pipeline, its fallbacks extend every chain."""
        extra = self.pipeline_chain(pipeline, pipelines or {}) if pipeline is not None else []

        def reliable_run_stage(work: list[WorkItem], upcoming: list[set[str]] | None = None) -> StageResult:
            return self.run(run_stage, work, upcoming, extra)

        reliable_run_stage.policy = self
        return reliable_run_stage

    def run(self, run_stage, work: list[WorkItem], upcoming=None, extra_fallbacks=()) -> StageResult:
        t0 = time.perf_counter()
        items = [_Item(i, w, self._chain(w.expert, extra_fallbacks), w.expert) for i, w in enumerate(work)]
        events: list[dict] = []
        per_item = (self.max_retries + 1) * (self.max_fallbacks + 2)
        for _round in range(per_item * len(items) + 1):  # bounded: every round attempts >= 1 item
            live = [it for it in items if it.result is None]
            if not live:
                break
            wait = min(it.ready_at for it in live) - self.clock()
            if wait > 0:
                self.sleep(wait)
            now = self.clock()
            ready = []
            for it in live:
                if self.is_cancelled(it.work.query.id):
                    self._finish(it, None, "cancelled", "cancelled by the client")
                elif it.ready_at <= now and self._pick_available(it):
                    ready.append(it)
            if ready:
                events += self._attempt(run_stage, ready, upcoming)
        for it in items:
            if it.result is None:
                self._finish(it, None, "exhausted", f"gave up after {len(it.attempts)} attempts")
        return StageResult([it.result for it in items], events, time.perf_counter() - t0)

    def _chain(self, expert: str, extra: Iterable[str]) -> list[str]:
        out = self.chain_of(expert)
        for e in extra:
            if e != expert and e not in out and e in self.experts and len(out) < self.max_fallbacks:
                out.append(e)
        return out

    def pipeline_chain(self, pipeline, pipelines: dict) -> list[str]:
        """Experts a pipeline falls back to: its `fallbacks` entries, a pipeline entry expanding to
        that pipeline's experts and then its own fallbacks; breadth first, no cycles, bounded."""
        out: list[str] = []
        seen = {pipeline.name}
        frontier = list(pipeline.fallbacks)
        while frontier and len(out) < self.max_fallbacks:
            name = frontier.pop(0)
            if name in seen:
                continue
            seen.add(name)
            if name in self.experts:
                out.append(name)
            elif name in pipelines:
                p = pipelines[name]
                frontier = [e for e in p.experts if e not in seen] + frontier + list(p.fallbacks)
        return out[: self.max_fallbacks]

    def _pick_available(self, it: _Item) -> bool:
        """Move `it` to an expert that may be called now; finish it when none is left."""
        skipped = []
        while True:
            why = self.unavailable_reason(it.expert)
            if why is None:
                return True
            skipped.append(why)
            it.attempts.append({"expert": it.expert, "error_type": "unavailable", "error": why, "skipped": True})
            if it.expert not in it.tried:
                it.tried.append(it.expert)
            if not self._advance(it):
                self._finish(it, None, "unavailable", "no expert available: " + "; ".join(skipped))
                return False

    def _advance(self, it: _Item, to: str | None = None) -> bool:
        """Move to `to` or the next untried fallback; False when the chain is exhausted."""
        if to is None:
            while it.chain and it.chain[0] in it.tried:
                it.chain.pop(0)
            if not it.chain or it.hops >= self.max_fallbacks:
                return False
            to = it.chain.pop(0)
        else:
            it.chain = [e for e in it.chain if e != to]
        it.expert, it.retries_here, it.ready_at = to, 0, 0.0
        it.hops += 1
        return True

    def _attempt(self, run_stage, ready: list[_Item], upcoming) -> list[dict]:
        by_expert: dict[str, list[_Item]] = {}
        for it in ready:
            by_expert.setdefault(it.expert, []).append(it)
        order = list(by_expert)
        events: list[dict] = []

        def later(k: int) -> list[set[str]]:
            return [{e} for e in order[k + 1:]] + list(upcoming or [])

        # Remote experts' groups are called at once (they hold no memory and the executor runs
        # them concurrently); local groups follow one by one in the scheduler's order.
        remote = [e for e in order if self._is_remote(e)]
        futures = {}
        if len(remote) > 1:
            pool = ThreadPoolExecutor(max_workers=len(remote), thread_name_prefix="reliable-remote")
            futures = {e: pool.submit(self._call, run_stage, e, by_expert[e], later(order.index(e)))
                       for e in remote}
            pool.shutdown(wait=False)
        for k, expert in enumerate(order):
            group = by_expert[expert]
            if expert in futures:
                cands, evs = futures[expert].result()
            else:
                cands, evs = self._call(run_stage, expert, group, later(k))
            events += evs
            for it, c in zip(group, cands):
                self._settle(it, c)
        return events

    def _is_remote(self, expert: str) -> bool:
        if self.get_backend is not None:
            return bool(self.get_backend(expert).remote)
        spec = self.experts.get(expert)
        return bool(spec is not None and spec.is_remote)

    def _call(self, run_stage, expert: str, group: list[_Item], later) -> tuple[list[Candidate], list[dict]]:
        """One group call in a worker thread, bounded by the expert's timeout and by cancellation."""
        spec = self.experts.get(expert)
        n = len(group)
        timeout = (spec.timeout_s if spec else 120.0) * math.ceil(n / max(1, spec.concurrency if spec else 1))
        work = [WorkItem(it.work.query, expert, it.work.tag) for it in group]
        box: dict = {}
        done = threading.Event()
        h = self.health(expert)

        def target():
            try:
                box["res"] = run_stage(work, later)
            except BaseException as exc:  # noqa: BLE001 - reported per item below, never swallowed
                box["exc"] = exc
            finally:
                done.set()
                if box.get("abandoned"):
                    with self._lock:
                        h.abandoned_calls -= 1

        for it in group:
            if it.expert not in it.tried:
                it.tried.append(it.expert)
        threading.Thread(target=target, name=f"call-{expert}", daemon=True).start()
        deadline = self.clock() + timeout
        why = None
        while not done.wait(min(0.05, max(0.0, deadline - self.clock()))):
            if self.clock() >= deadline:
                why = ("timeout", f"expert '{expert}' did not answer within {timeout:g}s (timeout_s)")
            elif all(self.is_cancelled(it.work.query.id) for it in group):
                why = ("cancelled", "cancelled by the client")
            if why is not None:
                with self._lock:
                    if done.is_set():  # finished at the last moment: keep its results
                        why = None
                        break
                    box["abandoned"] = True
                    h.abandoned_calls += 1
                self._signal_cancel(expert, [w.query.id for w in work])
                break
        if why is not None:
            etype, msg = why
            return [Candidate(it.work.query.id, expert, "", Usage(), error=msg,
                              metadata={"error_type": etype, "retryable": etype == "timeout"})
                    for it in group], []
        if "exc" in box:
            exc = box["exc"]
            msg = f"expert '{expert}': {type(exc).__name__}: {exc}"
            return [Candidate(it.work.query.id, expert, "", Usage(), error=msg,
                              metadata={"error_type": "error", "retryable": False}) for it in group], []
        res: StageResult = box["res"]
        if len(res.candidates) != n:
            raise RuntimeError(f"stage runner returned {len(res.candidates)} candidates for {n} work items")
        return list(res.candidates), list(res.events)

    def _signal_cancel(self, expert: str, query_ids: list[str]) -> None:
        """Ask the backend to stop generating for these queries (backends with `cancel`)."""
        if self.get_backend is None:
            return
        try:
            cancel = getattr(self.get_backend(expert), "cancel", None)
        except Exception:  # noqa: BLE001 - an unknown expert has nothing to stop
            return
        if cancel is not None:
            cancel(query_ids)

    def _settle(self, it: _Item, c: Candidate) -> None:
        if c.ok:
            self._record(it.expert, True)
            self._finish(it, c)
            return
        etype, retryable = classify(c)
        it.attempts.append({"expert": it.expert, "error_type": etype, "error": c.error})
        if etype == "cancelled":
            self._finish(it, c)
            return
        if etype == "bad_request":  # the request is wrong: another expert would not help
            self._finish(it, c)
            return
        self._record(it.expert, False)
        if etype == "context_overflow":
            to = self.larger_context(it)
            if to is None or it.hops >= self.max_fallbacks + 1:
                self._finish(it, c, note="no expert with a larger context window is left")
            else:
                self._advance(it, to)
            return
        if retryable and it.retries_here < self.max_retries and self.unavailable_reason(it.expert) is None:
            it.retries_here += 1
            it.ready_at = self.clock() + self.backoff(it.retries_here)
            return
        if not self._advance(it):
            self._finish(it, c, note="fallbacks exhausted")

    def _finish(self, it: _Item, c: Candidate | None, etype: str | None = None, msg: str | None = None,
                note: str | None = None) -> None:
        if c is None:
            c = Candidate(it.work.query.id, it.expert, "", Usage(), error=msg,
                          metadata={"error_type": etype, "retryable": False})
        elif note and not c.ok:
            c.error = f"{c.error} ({note}; tried {', '.join(it.tried)})"
        c.metadata = {**(c.metadata or {}), "experts_tried": list(it.tried) or [it.expert],
                      "attempts": list(it.attempts)}
        it.result = c
