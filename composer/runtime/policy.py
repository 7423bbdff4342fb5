"""The failure policy the runtime asks: retry? which fallback? is the expert cooled down?

`Reliability` holds per-expert health and the cancellation marks of one Composer (one per process
or replica) and decides, for each failed attempt, what happens next. It runs nothing itself: the
runtime's stage loop (composer/runtime/stage.py) dispatches, and calls `start`, `pick_available`,
`settle` and `finish` on each work item (`Item`):

- retries with exponential backoff and jitter, only for retryable errors (CallError.retryable);
  a bad_request (HTTP 400 class) is never retried and never sent elsewhere;
- fallbacks: after the retries (or at once for non-retryable errors) the item moves along its
  expert's `fallbacks` chain (then its pipeline's), bounded by `max_fallbacks`, never visiting an
  expert twice;
- cooldown: an expert that fails `cooldown_after` times in a row, while at least `cooldown_rate` of
  its last `window` calls failed, is skipped for `cooldown_s` seconds and comes back by itself (the
  next call is a trial); the rate guard keeps a now-and-then flaky expert in service;
- context overflow (CallError kind "context_overflow"): the item goes to the smallest expert with a
  larger context window (its fallbacks first) instead of being retried;
- timeouts and cancels stop the call itself (the runtime closes the upstream request or ends the
  local generation at the next token), so an expert is never marked busy by an abandoned call.

Every candidate that comes out carries `metadata["experts_tried"]` (in order) and
`metadata["attempts"]` (expert, error_type, error per failed attempt).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from composer.runtime.errors import failure, kind_of
from composer.scheduler import WorkItem
from composer.types import Candidate


@dataclass
class ExpertHealth:
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    failures: int = 0
    successes: int = 0
    cooldowns: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=20))  # True = failed


@dataclass(eq=False)
class Item:
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
                 cooldown_rate: float = 0.6, window: int = 20, max_fallbacks: int = 3, seed: int | None = None,
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
        left = h.cooldown_until - self.clock()
        if left > 0:
            return (f"expert '{expert}' is cooling down for {left:.1f}s more after "
                    f"{h.consecutive_failures} consecutive failures")
        return None

    def status(self) -> dict[str, dict]:
        now = self.clock()
        with self._lock:
            return {e: {"available": h.cooldown_until <= now,
                        "cooldown_left_s": round(max(0.0, h.cooldown_until - now), 3),
                        "consecutive_failures": h.consecutive_failures, "failures": h.failures,
                        "successes": h.successes, "cooldowns": h.cooldowns}
                    for e, h in self._health.items()}

    def retry_after_s(self) -> float:
        """Seconds until the soonest cooling-down expert is back (0 when none cools down)."""
        now = self.clock()
        with self._lock:
            left = [h.cooldown_until - now for h in self._health.values() if h.cooldown_until > now]
        return min(left) if left else 0.0

    def record(self, expert: str, ok: bool) -> None:
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
        """True for a cancelled id and for its sub-calls (`<id>/<stage>/<n>`, see aggregation)."""
        with self._lock:
            return query_id in self._cancelled or query_id.split("/", 1)[0] in self._cancelled

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

    def larger_context(self, item: Item) -> str | None:
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

    # -- one work item's life ----------------------------------------------------------------
    def start(self, index: int, w: WorkItem, extra_fallbacks: Iterable[str] = ()) -> Item:
        """The state of one work item before its first attempt."""
        return Item(index, w, self._chain(w.expert, extra_fallbacks), w.expert)

    def attempting(self, it: Item) -> None:
        """An attempt of `it` on its current expert starts now."""
        if it.expert not in it.tried:
            it.tried.append(it.expert)

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

    def pick_available(self, it: Item) -> bool:
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
            if not self.advance(it):
                self.finish(it, None, "unavailable", "no expert available: " + "; ".join(skipped))
                return False

    def advance(self, it: Item, to: str | None = None) -> bool:
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

    def settle(self, it: Item, c: Candidate) -> None:
        if c.ok:
            self.record(it.expert, True)
            self.finish(it, c)
            return
        err = kind_of(c)
        etype, retryable = err.kind, err.retryable
        it.attempts.append({"expert": it.expert, "error_type": etype, "error": c.error})
        if etype == "cancelled":
            self.finish(it, c)
            return
        if etype == "bad_request":  # the request is wrong: another expert would not help
            self.finish(it, c)
            return
        if etype != "context_overflow":  # a prompt too long for the window says nothing of the expert's health
            self.record(it.expert, False)
        if etype == "context_overflow":
            to = self.larger_context(it)
            if to is None or it.hops >= self.max_fallbacks + 1:
                self.finish(it, c, note="no expert with a larger context window is left")
            else:
                self.advance(it, to)
            return
        if retryable and it.retries_here < self.max_retries and self.unavailable_reason(it.expert) is None:
            it.retries_here += 1
            it.ready_at = self.clock() + self.backoff(it.retries_here)
            return
        if not self.advance(it):
            self.finish(it, c, note="fallbacks exhausted")

    def finish(self, it: Item, c: Candidate | None, etype: str | None = None, msg: str | None = None,
                note: str | None = None) -> None:
        if c is None:
            c = failure(it.work.query.id, it.expert, etype, msg, retryable=False)
        elif note and not c.ok:
            c.error = f"{c.error} ({note}; tried {', '.join(it.tried)})"
        c.metadata = {**(c.metadata or {}), "experts_tried": list(it.tried) or [it.expert],
                      "attempts": list(it.attempts)}
        it.result = c
