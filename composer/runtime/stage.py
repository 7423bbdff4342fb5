"""The stage loop: plan -> dispatch -> settle -> re-plan, until every work item has its answer.

A stage is a list of WorkItems (one generation call each). The loop:
1. asks the policy which items may be tried now (cancelled ones finish; cooled-down experts are
   skipped to their fallbacks; retried ones wait out their backoff);
2. starts every ready remote item at once as a coroutine on the runtime's event loop (up to each
   expert's `concurrency`, a per-expert semaphore; its time limit cancels the call);
3. asks the Scheduler to plan the ready local items against what is resident and what comes later
   (items waiting for a retry, later stages) and runs the plan's FIRST local group (loads and
   evictions as planned), or, in server mode, hands the local items to the stream batcher, which
   groups them with other requests' items;
4. settles each result through the policy (done, retry here after a backoff, or move to a
   fallback) and loops, so retried and fallen-back items are re-planned by the same Scheduler:
   an item retried on an expert that is still resident runs before anything is loaded.

Every load, unload, attempt, retry, fallback, cancel and first token goes to the event sink as it
happens. An item that already streamed part of its answer is not retried elsewhere (a client
cannot un-receive text): its failure is final.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable

from composer.executors import StageResult
from composer.runtime.errors import failure, from_exception, kind_of
from composer.scheduler import WorkItem
from composer.types import Candidate, Delta

_WAKE = object()


class OneShot:
    """The policy of a bare executor stage: one attempt per item, no retries, no fallbacks."""

    clock = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    def start(self, index, w, extra_fallbacks=()):
        from composer.runtime.policy import Item  # noqa: PLC0415

        return Item(index, w, [], w.expert)

    def attempting(self, it) -> None:
        if it.expert not in it.tried:
            it.tried.append(it.expert)

    def is_cancelled(self, qid: str) -> bool:
        return False

    def pick_available(self, it) -> bool:
        return True

    def settle(self, it, c: Candidate) -> None:
        it.result = c

    def finish(self, it, c, etype=None, msg=None, note=None) -> None:
        it.result = c if c is not None else failure(it.work.query.id, it.expert, etype or "error", msg or "failed")


class _Recorder(list):
    """The stage's event list; each event also goes to the sink the moment it is appended."""

    def __init__(self, sink, **context):
        super().__init__()
        self.sink, self.context = sink, context

    def append(self, ev: dict) -> None:
        super().append(ev)
        if self.sink is not None:
            self.sink.emit(ev["event"], **{**self.context, **{k: v for k, v in ev.items() if k != "event"}})

    def keep(self, ev: dict) -> None:
        """Record an event that was already emitted where it happened (the batcher's loads)."""
        super().append(ev)


class Stage:
    """One run of the loop (see the module docstring). `cancel(query_ids)` may come from any thread."""

    def __init__(self, executor, work: list[WorkItem], upcoming=None, *, policy=None, sink=None, io=None,
                 batcher=None, on_delta: Callable[[Delta], None] | None = None, extra_fallbacks=()):
        self.executor = executor
        self.work = list(work)
        self.upcoming = [set(s) for s in upcoming or ()]
        self.policy = policy or OneShot()
        self.sink = sink
        self.io = io
        self.batcher = batcher
        self.on_delta = on_delta
        self.extra = list(extra_fallbacks)
        self.events = _Recorder(sink)
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._inflight: dict[int, tuple[str, Future | None]] = {}  # index -> (expert, remote future)
        self._streamed: set[int] = set()
        self._local_running: tuple[str, list[str]] | None = None
        self._batch_lists: list[list] = []  # the batches whose events this stage recorded
        self._lock = threading.Lock()
        self.items = []

    # -- cancellation -----------------------------------------------------------------------
    def query_ids(self) -> set[str]:
        return {w.query.id for w in self.work}

    def cancel(self, query_ids) -> None:
        ids = set(query_ids)
        with self._lock:
            futures = [f for i, (e, f) in self._inflight.items()
                       if f is not None and self.work[i].query.id in ids]
            running = self._local_running
        for f in futures:
            f.cancel()  # the task is cancelled on the event loop: the upstream request closes
        if running is not None:
            expert, qids = running
            stop = [q for q in qids if q in ids]
            if stop:
                self.executor._stop(expert, stop)  # noqa: SLF001 - the runtime owns the executor
        if self.batcher is not None:
            self.batcher.cancel(ids)
        self._done.put(_WAKE)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> StageResult:
        t0 = time.perf_counter()
        pol, ex = self.policy, self.executor
        start_resident = set(ex.resident)
        self.items = items = [pol.start(i, w, self.extra) for i, w in enumerate(self.work)]
        attempted_local: set[str] = set()
        peak = ex._resident_bytes()  # noqa: SLF001
        first_plan = None
        while True:
            self._drain()
            waiting = [it for it in items if it.result is None and it.index not in self._inflight]
            if not waiting and not self._inflight:
                break
            now = pol.clock()
            ready = []
            for it in waiting:
                if pol.is_cancelled(it.work.query.id):
                    pol.finish(it, None, "cancelled", "cancelled by the client")
                    self.events.append({"event": "cancel", "expert": it.expert, "query_id": it.work.query.id})
                elif it.ready_at <= now and pol.pick_available(it):
                    ready.append(it)
            local = []
            for it in ready:
                if ex.is_remote(it.expert):
                    self._start_remote(it)
                else:
                    local.append(it)
            if local and self.batcher is not None:
                for it in local:
                    attempted_local.add(it.expert)
                    self._submit_batched(it)
            elif local:
                ready_ix = {it.index for it in ready}
                later = [s for s in ([{it.expert for it in waiting if it.index not in ready_ix
                                       and it.result is None and not ex.is_remote(it.expert)}] + self.upcoming) if s]
                plan = ex.scheduler.plan([WorkItem(it.work.query, it.expert, it.work.tag) for it in local],
                                         ex.resident, later or None)
                first_plan = first_plan or plan
                g = next(g for g in plan.groups if not g.remote)
                group = [local[i] for i in g.items]
                attempted_local.add(g.expert)
                self._run_local(g, group)
                peak = max(peak, ex._resident_bytes())  # noqa: SLF001
                continue
            if any(it.result is None for it in items):
                self._wait(items)
        cands = [it.result for it in items]
        bound = len({e for e in attempted_local if e not in start_resident
                     and ex.scheduler.too_big(e) is None})
        return StageResult(cands, list(self.events), time.perf_counter() - t0, first_plan, peak, bound)

    def _wait(self, items) -> None:
        """Block until a dispatched call finishes, a cancel arrives, or a backoff ends."""
        pending = [it.ready_at for it in items if it.result is None and it.index not in self._inflight]
        timeout = max(0.0, min(pending) - self.policy.clock()) if pending else None
        if not self._inflight:
            if timeout:
                self.policy.sleep(timeout)
            return
        try:
            got = self._done.get(timeout=timeout)
        except queue.Empty:
            return
        self._handle(got)

    def _drain(self) -> None:
        while True:
            try:
                got = self._done.get_nowait()
            except queue.Empty:
                return
            self._handle(got)

    def _handle(self, got) -> None:
        if got is _WAKE:
            return
        it, cand, events = got
        with self._lock:
            self._inflight.pop(it.index, None)
        if events and not any(events is seen for seen in self._batch_lists):  # a batch's events, once
            self._batch_lists.append(events)
            for ev in events:
                self.events.keep(ev)  # already emitted by the batcher when it happened
        self._settle(it, cand)

    # -- dispatch ---------------------------------------------------------------------------
    def _delta_sink(self, it):
        if self.on_delta is None:
            return None
        t_start = time.perf_counter()

        def on_delta(d: Delta) -> None:
            if it.index not in self._streamed:
                self._streamed.add(it.index)
                self.events.append({"event": "first_token", "expert": it.expert, "query_id": it.work.query.id,
                                    "seconds": time.perf_counter() - t_start})
            self.on_delta(d)

        return on_delta

    def _start_remote(self, it) -> None:
        self.policy.attempting(it)
        backend = self.executor.remote_backend(it.expert)
        if not backend.is_loaded:  # connect: nothing to load, but a missing key fails here, clearly
            t0 = time.perf_counter()
            try:
                self.events.append({"event": "connect", "expert": it.expert, "seconds": backend.load()})
            except Exception as exc:  # noqa: BLE001 - fails only this expert's items
                err = from_exception(exc)
                self.events.append({"event": "load_failed", "expert": it.expert,
                                    "seconds": time.perf_counter() - t0, "error": str(exc)})
                self._settle(it, failure(it.work.query.id, it.expert, "load", str(exc), retryable=err.retryable))
                return
        spec = backend.spec
        limit = float(spec.timeout_s)
        conc = int(spec.concurrency or 64)
        io = self.io
        q, expert, sink = it.work.query, it.expert, self._delta_sink(it)

        async def call():
            import asyncio  # noqa: PLC0415

            async with io.semaphore(expert, conc):
                try:
                    return await asyncio.wait_for(backend.acall(q, sink), limit)
                except asyncio.TimeoutError:
                    return failure(q.id, expert, "timeout",
                                   f"expert '{expert}' did not answer within {limit:g}s (timeout_s); "
                                   "the request was closed")

        fut = io.submit(call())
        with self._lock:
            self._inflight[it.index] = (expert, fut)
        fut.add_done_callback(lambda f: self._done.put((it, _outcome(f, q.id, expert), [])))

    def _submit_batched(self, it) -> None:
        self.policy.attempting(it)
        with self._lock:
            self._inflight[it.index] = (it.expert, None)
        fut = self.batcher.submit(it.work.query, it.expert, self._delta_sink(it))
        q, expert = it.work.query, it.expert

        def done(f):
            c = _outcome(f, q.id, expert)
            self._done.put((it, c, c.metadata.pop("batch_events", [])))

        fut.add_done_callback(done)

    def _run_local(self, g, group) -> None:
        for it in group:
            self.policy.attempting(it)
        sinks = {it.work.query.id: self._delta_sink(it) for it in reversed(group)}
        on_delta = None
        if self.on_delta is not None:
            def on_delta(d: Delta) -> None:
                s = sinks.get(d.query_id)
                if s is not None:
                    s(d)
        qids = [it.work.query.id for it in group]
        with self._lock:
            self._local_running = (g.expert, qids)
        try:
            cands = self.executor.run_group(g, [it.work.query for it in group], self.events, on_delta)
        finally:
            with self._lock:
                self._local_running = None
        for it, c in zip(group, cands):
            self._settle(it, c)

    # -- settle -----------------------------------------------------------------------------
    def _settle(self, it, c: Candidate) -> None:
        err = None if c.ok else kind_of(c)
        self.events.append({"event": "attempt", "expert": it.expert, "query_id": it.work.query.id, "ok": c.ok,
                            "error_kind": err.kind if err else None, "retryable": err.retryable if err else None,
                            "seconds": c.usage.latency_s, "prompt_tokens": c.usage.prompt_tokens,
                            "completion_tokens": c.usage.completion_tokens, "cost": c.usage.cost})
        if err is not None and it.index in self._streamed and err.kind != "cancelled":
            self.policy.finish(it, c, note="part of the answer was already streamed")
            return
        before = it.expert
        self.policy.settle(it, c)
        if it.result is not None:
            return
        if it.expert != before:
            self.events.append({"event": "fallback", "query_id": it.work.query.id, "from_expert": before,
                                "expert": it.expert, "error_kind": err.kind if err else None})
        else:
            self.events.append({"event": "retry", "query_id": it.work.query.id, "expert": it.expert,
                                "error_kind": err.kind if err else None,
                                "delay_s": max(0.0, it.ready_at - self.policy.clock())})


def _outcome(f: Future, qid: str, expert: str) -> Candidate:
    if f.cancelled():
        return failure(qid, expert, "cancelled", f"expert '{expert}': call cancelled by the client")
    exc = f.exception()
    if exc is not None:
        err = from_exception(exc)
        return failure(qid, expert, err.kind, f"expert '{expert}': {type(exc).__name__}: {exc}",
                       retryable=err.retryable)
    return f.result()


def run_stage(executor, work: list[WorkItem], upcoming=None, **kw) -> StageResult:
    """Run one stage to the end (see Stage)."""
    if kw.get("io") is None:
        from composer.runtime.aio import shared  # noqa: PLC0415

        kw["io"] = shared()
    return Stage(executor, work, upcoming, **kw).run()
