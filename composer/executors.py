"""Run an ExecutionPlan. LocalExecutor runs experts in this process; RayExecutor (in
composer/ray_executor.py, imported lazily so `import composer.executors` never imports Ray) runs
each loaded expert in a Ray actor.

`run_stage(work, upcoming)` is the one entry point the core uses: it plans the stage with the
Scheduler, loads/unloads experts as planned, generates each group as one batch, and returns the
candidates aligned with `work` plus every load and unload with its duration (`events`).

Faults stay local: an expert that fails to load, or is larger than the memory budget, fails only
its own items (each Candidate carries the error); the other groups proceed. Remote experts
(litellm, external servers) cost no load and run in background threads while the local groups
run, each up to its own `concurrency`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from composer.backends.base import Backend
from composer.errors import BackendError
from composer.scheduler import ExecutionPlan, Group, Scheduler, WorkItem
from composer.types import Candidate, Query, Usage


@dataclass
class StageResult:
    candidates: list[Candidate]
    events: list[dict] = field(default_factory=list)  # {"event": "load"|"unload"|..., "expert", "seconds"}
    wall_s: float = 0.0
    plan: ExecutionPlan | None = None
    peak_bytes: int = 0  # the most bytes resident at once while the stage ran

    @property
    def loads(self) -> int:
        return sum(e["event"] == "load" for e in self.events)

    @property
    def unloads(self) -> int:
        return sum(e["event"] == "unload" for e in self.events)


def failed(item: WorkItem, message: str, **meta) -> Candidate:
    return Candidate(item.query.id, item.expert, "", Usage(), error=message, metadata=meta)


def describe(exc: BaseException) -> str:
    """A one-line message for an unexpected exception (its type says where to look)."""
    return str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"


class BaseExecutor:
    """The stage loop shared by both executors. Subclasses implement how a local expert is
    loaded, unloaded and asked (`_load`, `_unload`, `_generate`) and how a remote one is reached
    (`_remote_backend`)."""

    scheduler: Scheduler
    resident: list[str]  # loaded local experts, least recently used first

    def _init_state(self) -> None:
        self.resident = []
        self._lock = threading.RLock()

    # -- hooks ------------------------------------------------------------------------------
    def _load(self, expert: str, events: list[dict]) -> float:
        raise NotImplementedError

    def _unload(self, expert: str) -> float:
        raise NotImplementedError

    def _generate(self, expert: str, queries: list[Query], events: list[dict]) -> list[Candidate]:
        raise NotImplementedError

    def _remote_backend(self, expert: str) -> Backend:
        raise NotImplementedError

    def _is_loaded(self, expert: str) -> bool:
        return expert in self.resident

    # -- the stage loop ---------------------------------------------------------------------
    def run_stage(self, work: list[WorkItem], upcoming: list[set[str]] | None = None) -> StageResult:
        t0 = time.perf_counter()
        out: list[Candidate | None] = [None] * len(work)
        events: list[dict] = []
        pool = None
        futures: list[Future] = []
        # Residency belongs to one stage at a time; remote-only work never waits for local groups.
        all_remote = all(w.expert in self.scheduler.remote for w in work)
        try:
            with contextlib.nullcontext() if all_remote else self._lock:
                plan = self.scheduler.plan(work, self.resident, upcoming)
                remote = [g for g in plan.groups if g.remote]
                if remote:
                    pool = ThreadPoolExecutor(max_workers=len(remote), thread_name_prefix="remote-expert")
                    futures = [pool.submit(self._run_remote, g, work, out) for g in remote]
                peak = self._resident_bytes()
                for g in plan.groups:
                    if not g.remote:
                        self._run_local(g, work, out, events)
                        peak = max(peak, self._resident_bytes())
            for f in futures:
                events.extend(f.result())
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        cands = [c if c is not None else failed(work[i], f"expert '{work[i].expert}': no result (internal error)")
                 for i, c in enumerate(out)]
        return StageResult(cands, events, time.perf_counter() - t0, plan, peak)

    def _resident_bytes(self) -> int:
        return sum(self.scheduler.footprint(r) for r in self.resident)

    def _touch(self, expert: str) -> None:
        if expert in self.resident:
            self.resident.remove(expert)
            self.resident.append(expert)

    def _fail_group(self, g: Group, work: list[WorkItem], out: list, message: str, **meta) -> None:
        for i in g.items:
            out[i] = failed(work[i], message, **meta)

    def _run_local(self, g: Group, work: list[WorkItem], out: list, events: list[dict]) -> None:
        if g.error is not None:
            self._fail_group(g, work, out, g.error, error_type="over_budget", retryable=False)
            return
        for victim in g.evict_before:
            if victim in self.resident:
                self._evict(victim, events)
        if not self._is_loaded(g.expert):
            t0 = time.perf_counter()
            try:
                seconds = self._load(g.expert, events)
            except Exception as exc:  # noqa: BLE001 - a failed load fails only this expert's items
                msg = describe(exc) if isinstance(exc, BackendError) else \
                    f"expert '{g.expert}': could not load: {describe(exc)}"
                events.append({"event": "load_failed", "expert": g.expert,
                               "seconds": time.perf_counter() - t0, "error": msg})
                self._fail_group(g, work, out, msg, error_type="load", retryable=False)
                return
            events.append({"event": "load", "expert": g.expert, "seconds": seconds})
        if g.expert in self.resident:
            self._touch(g.expert)
        else:
            self.resident.append(g.expert)
        items = [work[i] for i in g.items]
        try:
            cands = self._generate(g.expert, [w.query for w in items], events)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: each item says why
            retryable = getattr(exc, "retryable", False)
            self._fail_group(g, work, out, describe(exc), retryable=retryable)
            return
        self._place(g, work, out, cands)

    def _place(self, g: Group, work: list[WorkItem], out: list, cands: list[Candidate]) -> None:
        if len(cands) != len(g.items):
            self._fail_group(g, work, out, f"expert '{g.expert}': returned {len(cands)} candidates "
                             f"for {len(g.items)} queries")
            return
        for i, c in zip(g.items, cands):
            out[i] = c

    def _evict(self, expert: str, events: list[dict]) -> None:
        self.resident.remove(expert)
        t0 = time.perf_counter()
        try:
            seconds = self._unload(expert)
        except Exception as exc:  # noqa: BLE001 - still count it; the expert is gone either way
            events.append({"event": "unload", "expert": expert, "seconds": time.perf_counter() - t0,
                           "error": describe(exc)})
            return
        events.append({"event": "unload", "expert": expert, "seconds": seconds})

    def _run_remote(self, g: Group, work: list[WorkItem], out: list) -> list[dict]:
        """A remote group: connect (no load counted) and call, up to the expert's concurrency."""
        events: list[dict] = []
        try:
            backend = self._remote_backend(g.expert)
            if not backend.is_loaded:
                events.append({"event": "connect", "expert": g.expert, "seconds": backend.load()})
            cands = backend.generate([work[i].query for i in g.items])
        except Exception as exc:  # noqa: BLE001 - fails only this expert's items
            self._fail_group(g, work, out, describe(exc), retryable=getattr(exc, "retryable", False))
            return events
        self._place(g, work, out, cands)
        return events

    def unload_all(self) -> list[dict]:
        """Unload every resident expert; returns the unload events."""
        events: list[dict] = []
        with self._lock:
            for name in list(self.resident):
                self._evict(name, events)
        return events


class LocalExecutor(BaseExecutor):
    """Runs experts in this process; `get_backend(name)` returns the (cached) Backend."""

    def __init__(self, get_backend: Callable[[str], Backend], scheduler: Scheduler):
        self.get_backend = get_backend
        self.scheduler = scheduler
        self._init_state()

    def _load(self, expert, events):
        return self.get_backend(expert).load()

    def _unload(self, expert):
        return self.get_backend(expert).unload()

    def _is_loaded(self, expert):
        return self.get_backend(expert).is_loaded

    def _generate(self, expert, queries, events):
        return self.get_backend(expert).generate(queries)

    def _remote_backend(self, expert):
        return self.get_backend(expert)

    def close(self) -> None:
        self.unload_all()


def __getattr__(name: str):
    if name == "RayExecutor":  # Ray is imported only when a RayExecutor is asked for
        from composer.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'composer.executors' has no attribute {name!r}")


__all__ = ["BaseExecutor", "LocalExecutor", "RayExecutor", "StageResult", "failed"]
