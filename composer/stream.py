"""Stream mode (server): batch requests that arrive over time by expert, with few model swaps.

API
---
    batcher = StreamBatcher(executor, max_wait_s=0.5, max_batch=32, hold=True, sink=None)
    fut = batcher.submit(Query("hi"), "smollm2", on_delta=None)  # Future[Candidate]; thread-safe
    batcher.cancel({"q-1"})                       # drop queued ones, stop running ones at the next token
    candidate = fut.result(timeout=60)            # a failed call is a Candidate with `error` set
    batcher.stats()                               # {"loads", "unloads", "batches", "served", ...}
    batcher.close()                               # stop accepting, drain the queue, stop the worker

`executor` is a LocalExecutor or RayExecutor (composer/executors.py); the batcher owns no model
itself and never closes the executor. One worker thread serves local experts one batch at a
time, each batch planned by the Scheduler (evictions) and run by `executor.run_group`; remote
experts never come here (the runtime calls them at once on its event loop). With `on_delta`, a
request's pieces are passed on as its batch generates them.

Policy (`choose_next` and `hold_until`, shared with the simulator below so the benchmark
measures this code):
1. a request that has waited `max_wait_s` or more gets its expert served next (oldest first):
   batching never starves a request;
2. else a resident expert with queued work (no load), oldest request first;
3. else a load is needed: with `hold=True` (default) the worker first holds until the oldest
   request has waited `max_wait_s` (or a resident expert gets work, or close() is called), so
   requests for the same expert gather into one batch and the known queue grows; then it serves
   the expert of the oldest queued request.
A request therefore waits at most about max_wait_s + the batch in progress + its own load and
batch. A batch takes up to `max_batch` of that expert's queued requests. When a load needs room,
the Scheduler evicts the resident expert whose next use in the known queue is furthest (Belady
over what is queued); experts with nothing queued go first, least recently used first (LRU
when nothing is known).

Simulator: `simulate_stream(arrivals, capacity, load_s, gen_s, ...)` replays a timed trace through
the same policy with unit-size experts and returns its loads and served order; `belady_loads`
and `lru_loads` give the optimum and LRU for a fixed order, for comparison.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from composer.executors import StageResult
from composer.scheduler import Scheduler, WorkItem
from composer.types import Query


@dataclass
class _Entry:
    seq: int
    t: float
    query: Query
    future: Future
    on_delta: object = None


def choose_next(heads: dict[str, tuple[int, float]], resident: list[str], now: float,
                max_wait_s: float) -> str:
    """The expert to serve next. `heads` maps expert -> (seq, arrival time) of its oldest queued
    request; `resident` is in LRU order."""
    oldest = min(heads, key=lambda e: heads[e][0])
    if now - heads[oldest][1] >= max_wait_s:
        return oldest
    warm = [e for e in resident if e in heads]
    if warm:
        return min(warm, key=lambda e: heads[e][0])
    return oldest


def hold_until(heads: dict[str, tuple[int, float]], resident: list[str], max_wait_s: float) -> float:
    """When serving now would need a load: the time until which to wait for more requests (the
    oldest request's deadline). Compare with the clock: a past time means serve now."""
    if any(e in heads for e in resident):
        return -math.inf
    oldest = min(heads.values())
    return oldest[1] + max_wait_s


def upcoming_of(heads: dict[str, tuple[int, float]]) -> list[set[str]]:
    """The known queue as stages for the Scheduler: experts in order of their oldest request."""
    return [{e} for e in sorted(heads, key=lambda e: heads[e][0])]


class StreamBatcher:
    """Serves (query, expert) requests as they arrive; see the module docstring."""

    def __init__(self, executor, *, max_wait_s: float = 0.5, max_batch: int = 32, hold: bool = True,
                 sink=None):
        self.executor = executor
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self.hold = hold
        self.sink = sink  # composer.runtime.events.EventSink: loads, unloads, batches as they happen
        self._cond = threading.Condition()
        self._queues: dict[str, deque[_Entry]] = {}
        self._seq = itertools.count()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._running: tuple[str, list[str]] | None = None  # (expert, query ids) of the batch in progress
        self._stats = {"loads": 0, "unloads": 0, "batches": 0, "served": 0, "load_s": 0.0,
                       "unload_s": 0.0, "failed_batches": 0}
        self._events: deque[dict] = deque(maxlen=1000)

    # -- public -----------------------------------------------------------------------------
    def submit(self, query: Query, expert: str, on_delta=None) -> Future:
        """Queue one call; the Future resolves to its Candidate."""
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("StreamBatcher is closed; create a new one to submit more work")
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="stream-batcher", daemon=True)
                self._worker.start()
            self._queues.setdefault(expert, deque()).append(
                _Entry(next(self._seq), time.monotonic(), query, fut, on_delta))
            self._cond.notify()
        return fut

    def cancel(self, query_ids) -> None:
        """Queued calls of these ids end at once as cancelled; a running one stops at the next token."""
        from composer.runtime.errors import failure  # noqa: PLC0415

        ids = set(query_ids)
        dropped = []
        with self._cond:
            for expert, q in list(self._queues.items()):
                keep = deque(e for e in q if e.query.id not in ids)
                dropped += [(expert, e) for e in q if e.query.id in ids]
                if keep:
                    self._queues[expert] = keep
                else:
                    del self._queues[expert]
            running = self._running
        for expert, e in dropped:
            e.future.set_result(failure(e.query.id, expert, "cancelled", "cancelled by the client before it ran"))
        if running is not None and ids & set(running[1]):
            self.executor._stop(running[0], [i for i in running[1] if i in ids])  # noqa: SLF001

    def pending(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def stats(self) -> dict:
        with self._cond:
            return {**self._stats, "pending": sum(len(q) for q in self._queues.values()),
                    "resident": list(self.executor.resident), "events": list(self._events)}

    def close(self) -> None:
        """Stop accepting work, serve everything already queued, then stop. Safe to call twice."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join()

    def __enter__(self) -> "StreamBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- worker -----------------------------------------------------------------------------
    def _take(self, expert: str) -> list[_Entry]:
        q = self._queues[expert]
        batch = [q.popleft() for _ in range(min(self.max_batch, len(q)))]
        if not q:
            del self._queues[expert]
        return batch

    def _next_batch(self) -> tuple[str | None, list[_Entry], list[set[str]]]:
        """Under the lock: the batch to run next (None while holding for more requests)."""
        if not self._queues:
            return None, [], []
        heads = {e: (q[0].seq, q[0].t) for e, q in self._queues.items()}
        if self.hold and not self._closed:
            wait = hold_until(heads, list(self.executor.resident), self.max_wait_s) - time.monotonic()
            if wait > 0:
                self._cond.wait(wait)  # a new request or close() wakes us to decide again
                return None, [], []
        expert = choose_next(heads, list(self.executor.resident), time.monotonic(), self.max_wait_s)
        batch = self._take(expert)
        heads = {e: (q[0].seq, q[0].t) for e, q in self._queues.items()}
        self._running = (expert, [en.query.id for en in batch])
        return expert, batch, upcoming_of(heads)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queues and not self._closed:
                    self._cond.wait()
                if not self._queues and self._closed:
                    return
                expert, batch, upcoming = self._next_batch()
            if expert is not None:
                try:
                    self._serve(expert, batch, upcoming)
                finally:
                    with self._cond:
                        self._running = None

    def _serve(self, expert: str, entries: list[_Entry], upcoming: list[set[str]] | None) -> None:
        from composer.runtime.stage import _Recorder  # noqa: PLC0415

        work = [WorkItem(en.query, expert) for en in entries]
        events = _Recorder(self.sink)
        sinks = {}
        for en in reversed(entries):
            if en.on_delta is not None:
                sinks[en.query.id] = en.on_delta

        def on_delta(d):
            s = sinks.get(d.query_id)
            if s is not None:
                s(d)

        wait_s = time.monotonic() - min(en.t for en in entries)
        if self.sink is not None:
            self.sink.emit("batch", expert=expert, size=len(entries), wait_s=wait_s, queued=self.pending())
        try:
            plan = self.executor.scheduler.plan(work, self.executor.resident, upcoming)
            cands = self.executor.run_group(plan.groups[0], [en.query for en in entries], events,
                                            on_delta if sinks else None)
            res = StageResult(cands, list(events))
        except BaseException as exc:  # noqa: BLE001 - every waiting caller hears about it
            with self._cond:
                self._stats["failed_batches"] += 1
            for en in entries:
                en.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        with self._cond:
            self._stats["batches"] += 1
            self._stats["served"] += len(entries)
            for ev in res.events:
                self._events.append(ev)
                if ev["event"] in ("load", "unload"):
                    self._stats[ev["event"] + "s"] += 1
                    self._stats[ev["event"] + "_s"] += ev["seconds"]
        for en, cand in zip(entries, res.candidates):
            # The loads/unloads this call waited for travel with it, so a stage report in
            # server mode shows them too (core._batched_stage collects them).
            cand.metadata["batch_events"] = res.events
            en.future.set_result(cand)


# -- simulation (pure functions) ----------------------------------------------------------------


@dataclass
class SimResult:
    loads: int
    served: list[str]  # expert of each request in the order served
    latencies: list[float] = field(default_factory=list)  # per request, in arrival order
    batches: int = 0
    makespan: float = 0.0


def simulate_stream(arrivals: list[tuple[float, str]], capacity: int, load_s: float, gen_s: float,
                    max_wait_s: float = math.inf, max_batch: int = 32, hold: bool = True) -> SimResult:
    """Replay `arrivals` ((time, expert), sorted by time) through the StreamBatcher policy with
    `capacity` unit-size experts resident at most; loading costs `load_s`, each query `gen_s`."""
    experts = {e for _, e in arrivals}
    sched = Scheduler({e: 1 for e in experts}, capacity)
    queues: dict[str, deque[int]] = {}
    resident: list[str] = []
    served: list[str] = []
    lat = [0.0] * len(arrivals)
    now, i, loads, batches = 0.0, 0, 0, 0
    n = len(arrivals)
    while i < n or queues:
        if not queues:
            now = max(now, arrivals[i][0])
        while i < n and arrivals[i][0] <= now:
            queues.setdefault(arrivals[i][1], deque()).append(i)
            i += 1
        heads = {e: (q[0], arrivals[q[0]][0]) for e, q in queues.items()}
        if hold:
            until = min(hold_until(heads, resident, max_wait_s), arrivals[i][0] if i < n else math.inf)
            if now < until < math.inf:
                now = until  # hold: the oldest deadline or the next arrival, whichever is first
                continue
        expert = choose_next(heads, resident, now, max_wait_s)
        q = queues[expert]
        batch = [q.popleft() for _ in range(min(max_batch, len(q)))]
        if not q:
            del queues[expert]
        if expert in resident:
            resident.remove(expert)
        else:
            heads = {e: (q[0], 0.0) for e, q in queues.items()}
            next_use = {e: k for k, e in enumerate(sorted(heads, key=lambda e: heads[e][0]), start=1)}
            for v in sched.victims(resident, expert, next_use):
                resident.remove(v)
            loads += 1
            now += load_s
        resident.append(expert)
        now += gen_s * len(batch)
        batches += 1
        for j in batch:
            served.append(expert)
            lat[j] = now - arrivals[j][0]
    return SimResult(loads, served, lat, batches, now)


def belady_loads(seq: list[str], capacity: int) -> int:
    """Fewest loads to serve `seq` in this order with `capacity` unit-size slots (Belady's
    furthest-next-use eviction is optimal for this case)."""
    nxt = [math.inf] * len(seq)
    last: dict[str, int] = {}
    for j in range(len(seq) - 1, -1, -1):
        nxt[j] = last.get(seq[j], math.inf)
        last[seq[j]] = j
    cache: dict[str, float] = {}  # expert -> index of its next use
    loads = 0
    for j, e in enumerate(seq):
        if e not in cache:
            loads += 1
            if len(cache) >= capacity:
                del cache[max(cache, key=cache.__getitem__)]
        cache[e] = nxt[j]
    return loads


def lru_loads(seq: list[str], capacity: int) -> int:
    """Loads to serve `seq` in this order with LRU eviction."""
    cache: dict[str, None] = {}
    loads = 0
    for e in seq:
        if e in cache:
            del cache[e]
        else:
            loads += 1
            if len(cache) >= capacity:
                del cache[next(iter(cache))]
        cache[e] = None
    return loads
