"""Turn a stage of (query, expert) work into an ordered plan: group by expert, load each once.

A stage is a list of WorkItems (one generation call each). The plan runs experts one group at a
time; an expert already resident goes first (no load), and under a memory budget the experts
that are needed again soonest stay resident.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from composer.types import Query


@dataclass(frozen=True)
class WorkItem:
    """One generation call: `query` answered by `expert`. `tag` lets callers tell items apart."""

    query: Query
    expert: str
    tag: str = ""


@dataclass
class Group:
    expert: str
    items: list[int]  # indexes into the stage's work list
    evict_before: list[str] = field(default_factory=list)
    needs_load: bool = True


@dataclass
class ExecutionPlan:
    groups: list[Group]

    @property
    def loads(self) -> int:
        return sum(g.needs_load for g in self.groups)

    @property
    def evictions(self) -> int:
        return sum(len(g.evict_before) for g in self.groups)


class Scheduler:
    """Plans stages under a memory budget. `footprints` maps expert -> bytes; `remote` experts
    hold no memory and cost no load."""

    def __init__(self, footprints: dict[str, int], memory_budget: int | None = None,
                 remote: frozenset[str] = frozenset()):
        self.footprints = footprints
        self.memory_budget = memory_budget
        self.remote = remote

    def plan(self, work: list[WorkItem], resident: list[str],
             upcoming: list[set[str]] | None = None) -> ExecutionPlan:
        order: dict[str, list[int]] = {}
        for i, w in enumerate(work):
            order.setdefault(w.expert, []).append(i)
        # Resident experts first: their work needs no load.
        experts = sorted(order, key=lambda e: (e not in resident, list(order).index(e)))
        res = list(resident)
        groups = []
        for e in experts:
            g = Group(e, order[e], needs_load=e not in res and e not in self.remote)
            if g.needs_load and self.memory_budget is not None:
                g.evict_before = self._evict(res, e, set(experts[experts.index(e):]), upcoming or [])
                res = [r for r in res if r not in g.evict_before]
            if e not in self.remote and e not in res:
                res.append(e)
            groups.append(g)
        return ExecutionPlan(groups)

    def _evict(self, resident: list[str], incoming: str, still_needed: set[str],
               upcoming: list[set[str]]) -> list[str]:
        need = self.footprints.get(incoming, 0)
        used = sum(self.footprints.get(r, 0) for r in resident)
        victims = []

        def next_use(r: str) -> float:
            if r in still_needed:
                return 0
            for k, s in enumerate(upcoming, start=1):
                if r in s:
                    return k
            return float("inf")

        for r in sorted(resident, key=next_use, reverse=True):  # furthest next use first
            if used + need <= self.memory_budget:
                break
            victims.append(r)
            used -= self.footprints.get(r, 0)
        return victims
