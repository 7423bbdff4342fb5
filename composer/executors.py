"""Run an ExecutionPlan. LocalExecutor runs experts in this process.

`run_stage(work, upcoming)` is the one entry point the core uses: it plans the stage with the
Scheduler, loads/unloads experts as planned, generates each group as one batch, and returns the
candidates aligned with `work` plus a report of every load and unload with its duration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from composer.backends.base import Backend
from composer.errors import BackendError
from composer.scheduler import Scheduler, WorkItem
from composer.types import Candidate, Usage


@dataclass
class StageResult:
    candidates: list[Candidate]
    events: list[dict] = field(default_factory=list)  # {"event": "load"|"unload", "expert", "seconds"}
    wall_s: float = 0.0

    @property
    def loads(self) -> int:
        return sum(e["event"] == "load" for e in self.events)

    @property
    def unloads(self) -> int:
        return sum(e["event"] == "unload" for e in self.events)


def failed(item: WorkItem, message: str, **meta) -> Candidate:
    return Candidate(item.query.id, item.expert, "", Usage(), error=message, metadata=meta)


class LocalExecutor:
    def __init__(self, get_backend: Callable[[str], Backend], scheduler: Scheduler):
        self.get_backend = get_backend
        self.scheduler = scheduler
        self.resident: list[str] = []

    def run_stage(self, work: list[WorkItem], upcoming: list[set[str]] | None = None) -> StageResult:
        t0 = time.perf_counter()
        plan = self.scheduler.plan(work, self.resident, upcoming)
        out: list[Candidate | None] = [None] * len(work)
        events: list[dict] = []
        for group in plan.groups:
            for victim in group.evict_before:
                events.append({"event": "unload", "expert": victim,
                               "seconds": self.get_backend(victim).unload()})
                self.resident.remove(victim)
            backend = self.get_backend(group.expert)
            items = [work[i] for i in group.items]
            try:
                if not backend.is_loaded:
                    events.append({"event": "load", "expert": group.expert, "seconds": backend.load()})
                    if not backend.remote:
                        self.resident.append(group.expert)
                cands = backend.generate([w.query for w in items])
            except BackendError as exc:
                cands = [failed(w, str(exc), retryable=exc.retryable) for w in items]
            for i, c in zip(group.items, cands):
                out[i] = c
        return StageResult(out, events, time.perf_counter() - t0)

    def close(self) -> None:
        for name in list(self.resident):
            self.get_backend(name).unload()
        self.resident.clear()
