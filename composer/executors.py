"""Where a local expert lives and how one planned group runs on it.

LocalExecutor runs experts in this process; RayExecutor (composer/ray_executor.py, which builds on
this module, never the other way round, so `import composer.executors` never imports Ray) runs
each loaded expert in a Ray actor. An
executor plans nothing: the runtime (composer/runtime/stage.py) asks the Scheduler for the order
and the evictions, then calls `run_group(group, queries, events, on_delta)` for one local group at
a time; remote experts are reached through `remote_backend(expert)` on the runtime's event loop.

Faults stay local: an expert that fails to load, or is larger than the memory budget, fails only
its own items (each Candidate carries a typed CallError); the other groups proceed. A local group
that runs past its time limit is stopped at the next token (the backend's `cancel`) and its items
fail with kind "timeout": the expert is free again as soon as the call returns.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from composer.backends.base import Backend
from composer.errors import BackendError
from composer.runtime.errors import failure, from_exception
from composer.scheduler import ExecutionPlan, Group, Scheduler, WorkItem
from composer.types import Candidate, Query


@dataclass
class StageResult:
    candidates: list[Candidate]
    events: list[dict] = field(default_factory=list)  # {"event": "load"|"unload"|..., "expert", "seconds"}
    wall_s: float = 0.0
    plan: ExecutionPlan | None = None  # the first plan of the stage
    peak_bytes: int = 0  # the most bytes resident at once while the stage ran
    lower_bound: int = 0  # distinct local experts the stage needed that were not resident at its start

    @property
    def loads(self) -> int:
        return sum(e["event"] == "load" for e in self.events)

    @property
    def unloads(self) -> int:
        return sum(e["event"] == "unload" for e in self.events)


def failed(item: WorkItem, message: str, kind: str = "error", **meta) -> Candidate:
    return failure(item.query.id, item.expert, kind, message, **meta)


def describe(exc: BaseException) -> str:
    """A one-line message for an unexpected exception (its type says where to look)."""
    return str(exc) if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"


class BaseExecutor:
    """Residency and the group call shared by both executors. Subclasses implement how a local
    expert is loaded, unloaded and asked (`_load`, `_unload`, `_generate`, `_stop`) and how a remote
    one is reached (`remote_backend`)."""

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

    def _generate(self, expert: str, queries: list[Query], events: list[dict], on_delta=None) -> list[Candidate]:
        raise NotImplementedError

    def _stop(self, expert: str, query_ids: list[str]) -> None:
        """End these queries' generation at the next token (time limit, cancel)."""

    def remote_backend(self, expert: str) -> Backend:
        raise NotImplementedError

    def is_remote(self, expert: str) -> bool:
        return expert in self.scheduler.remote

    def _is_loaded(self, expert: str) -> bool:
        return expert in self.resident

    def time_limit(self, expert: str, n: int) -> float | None:
        """Seconds a group of `n` calls may take: timeout_s per `concurrency` calls."""
        return None

    # -- one group --------------------------------------------------------------------------
    def run_stage(self, work: list[WorkItem], upcoming: list[set[str]] | None = None) -> StageResult:
        """Plan and run a stage with no retry policy (one attempt per item)."""
        from composer.runtime.stage import run_stage  # noqa: PLC0415 - the runtime imports this module

        return run_stage(self, work, upcoming)

    def run_group(self, g: Group, queries: list[Query], events: list[dict], on_delta=None) -> list[Candidate]:
        """Evict as planned, load if needed, and answer `queries` on the group's expert as one
        batch; one Candidate per query, in order. Never raises for an expert's own failure."""
        if g.error is not None:
            return [failure(q.id, g.expert, "over_budget", g.error) for q in queries]
        with self._lock:  # residency belongs to one group at a time
            for victim in g.evict_before:
                if victim in self.resident:
                    self._evict(victim, events)
            if not self._is_loaded(g.expert):
                for victim in self._make_room(g.expert):  # a cluster node, not the budget, is full
                    if victim in self.resident:
                        self._evict(victim, events, reason="no_room_on_any_node")
                t0 = time.perf_counter()
                try:
                    seconds = self._load(g.expert, events)
                except Exception as exc:  # noqa: BLE001 - a failed load fails only this expert's items
                    msg = describe(exc) if isinstance(exc, BackendError) else \
                        f"expert '{g.expert}': could not load: {describe(exc)}"
                    events.append({"event": "load_failed", "expert": g.expert,
                                   "seconds": time.perf_counter() - t0, "error": msg})
                    return [failure(q.id, g.expert, "load", msg) for q in queries]
                events.append({"event": "load", "expert": g.expert, "seconds": seconds,
                               **self._placement(g.expert)})
            if g.expert in self.resident:
                self._touch(g.expert)
            else:
                self.resident.append(g.expert)
            cands = self._timed_generate(g.expert, queries, events, on_delta)
        if len(cands) != len(queries):
            return [failure(q.id, g.expert, "error", f"expert '{g.expert}': returned {len(cands)} candidates "
                            f"for {len(queries)} queries") for q in queries]
        return cands

    def _placement(self, expert: str) -> dict:
        """Where a loaded expert lives (the Ray executor adds the node id)."""
        return {}

    def _timed_generate(self, expert, queries, events, on_delta) -> list[Candidate]:
        limit = self.time_limit(expert, len(queries))
        timer, expired = None, threading.Event()
        if limit is not None:
            def stop():
                expired.set()
                self._stop(expert, [q.id for q in queries])

            timer = threading.Timer(limit, stop)
            timer.daemon = True
            timer.start()
        try:
            cands = self._generate(expert, queries, events, on_delta)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed: each item says why
            err = from_exception(exc)
            msg = describe(exc)
            return [failure(q.id, expert, err.kind, msg, retryable=err.retryable) for q in queries]
        finally:
            if timer is not None:
                timer.cancel()
        if expired.is_set():
            msg = f"expert '{expert}' did not answer within {limit:g}s (timeout_s); its generation was stopped"
            cands = [failure(c.query_id, expert, "timeout", msg, usage=c.usage)
                     if (c.call_error is not None and c.call_error.kind == "cancelled") else c for c in cands]
        return cands

    def _resident_bytes(self) -> int:
        return sum(self.scheduler.footprint(r) for r in self.resident)

    def _touch(self, expert: str) -> None:
        if expert in self.resident:
            self.resident.remove(expert)
            self.resident.append(expert)

    def _make_room(self, expert: str) -> list[str]:
        """Resident experts to unload before `expert` can be placed anywhere, beyond what the
        memory budget planned (the Ray executor: when no node has the resources it asks for)."""
        return []

    def _evict(self, expert: str, events: list[dict], reason: str | None = None) -> None:
        self.resident.remove(expert)
        t0 = time.perf_counter()
        extra = {"reason": reason} if reason else {}
        try:
            seconds = self._unload(expert)
        except Exception as exc:  # noqa: BLE001 - still count it; the expert is gone either way
            events.append({"event": "unload", "expert": expert, "seconds": time.perf_counter() - t0,
                           "error": describe(exc), **extra})
            return
        events.append({"event": "unload", "expert": expert, "seconds": seconds, **extra})

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

    def _generate(self, expert, queries, events, on_delta=None):
        backend = self.get_backend(expert)
        try:
            return backend.generate(queries, on_delta)
        finally:
            backend.forget_cancel([q.id for q in queries])

    def _stop(self, expert, query_ids):
        self.get_backend(expert).cancel(query_ids)

    def time_limit(self, expert, n):
        spec = self.get_backend(expert).spec
        return spec.timeout_s * math.ceil(n / max(1, spec.concurrency or 1))

    def remote_backend(self, expert):
        return self.get_backend(expert)

    def close(self) -> None:
        self.unload_all()


__all__ = ["BaseExecutor", "LocalExecutor", "StageResult", "failed"]
