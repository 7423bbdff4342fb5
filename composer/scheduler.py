"""Turn a stage of (query, expert) work into an ordered plan: group by expert, load each once.

A stage is a list of WorkItems (one generation call each). The plan runs one group per expert,
so every expert the stage needs is loaded at most once: the number of loads equals the number of
distinct local experts needed that are not already resident (the lower bound), provided each
expert fits the memory budget on its own. An expert larger than the whole budget gets a group
with `error` set (its items fail with that message; the others proceed).

Order and eviction, for residency across stages (`upcoming` = the expert sets of later stages,
e.g. the aggregator stage of MoA):
- remote experts first (no load, they run concurrently with the local groups),
- then the needed experts that are already resident (no load),
- then the others, those needed again soonest in `upcoming` last, so they are still resident
  when the next stage starts;
- before a load, evict only what is needed to fit, furthest next use first (Belady over the
  known stages), least recently used first among ties (LRU when nothing is known).
Residents are given in LRU order (first = least recently used).

    >>> s = Scheduler({"a": 4, "b": 4}, memory_budget=4)
    >>> plan = s.plan([WorkItem(Query("hi"), "a"), WorkItem(Query("yo"), "b")], resident=["b"])
    >>> [(g.expert, g.needs_load, g.evict_before) for g in plan.groups]
    [('b', False, []), ('a', True, ['b'])]
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
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
    """All of a stage's calls to one expert, run as one batch."""

    expert: str
    items: list[int]  # indexes into the stage's work list
    evict_before: list[str] = field(default_factory=list)
    needs_load: bool = True
    remote: bool = False
    error: str | None = None  # set when the expert cannot run at all (e.g. larger than the budget)


@dataclass
class ExecutionPlan:
    groups: list[Group]
    lower_bound: int = 0  # distinct local experts needed and not resident when the stage starts
    budget: int | None = None
    peak_bytes: int = 0  # the most bytes resident at once if the plan runs as written
    resident_after: list[str] = field(default_factory=list)  # LRU order

    @property
    def loads(self) -> int:
        return sum(g.needs_load for g in self.groups)

    @property
    def evictions(self) -> int:
        return sum(len(g.evict_before) for g in self.groups)

    def to_dict(self) -> dict:
        return {"groups": [{"expert": g.expert, "calls": len(g.items), "needs_load": g.needs_load,
                            "evict_before": list(g.evict_before), "remote": g.remote, "error": g.error}
                           for g in self.groups],
                "loads": self.loads, "lower_bound": self.lower_bound, "evictions": self.evictions,
                "budget": self.budget, "peak_bytes": self.peak_bytes}


def _next_use(upcoming: list[set[str]]) -> dict[str, float]:
    """expert -> 1-based index of the first later stage that needs it."""
    out: dict[str, float] = {}
    for k, stage in enumerate(upcoming, start=1):
        for e in stage:
            out.setdefault(e, k)
    return out


def _gpu_free_bytes() -> int | None:
    """Free memory of the GPUs nvidia-smi reports (summed), or None without a usable GPU."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
        mib = [int(x) for x in out.split() if x.strip().isdigit()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return sum(mib) * 2**20 if mib else None


def available_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (includes reclaimable cache), else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


def default_memory_budget() -> int:
    """The budget when none is configured: free GPU memory where there is a GPU, else available RAM."""
    gpu = _gpu_free_bytes()
    return gpu if gpu is not None else available_ram_bytes()


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "unbounded"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


class Scheduler:
    """Plans stages under a memory budget. `footprints` maps expert -> bytes; `remote` experts
    hold no memory and cost no load. `memory_budget=None` means `default_budget()` (by default
    `default_memory_budget()`; the Ray executor on a cluster: the cluster's memory), measured on
    first use."""

    def __init__(self, footprints: dict[str, int], memory_budget: int | None = None,
                 remote: frozenset[str] = frozenset()):
        self.footprints = footprints
        self.memory_budget = memory_budget
        self.remote = remote
        self.default_budget = default_memory_budget

    @property
    def budget(self) -> int:
        if self.memory_budget is None:
            self.memory_budget = int(self.default_budget())
        return self.memory_budget

    def footprint(self, expert: str) -> int:
        return 0 if expert in self.remote else int(self.footprints.get(expert, 0))

    def too_big(self, expert: str) -> str | None:
        """The error for an expert that can never fit the budget, else None."""
        need = self.footprint(expert)
        if need > self.budget:
            return (f"expert '{expert}' needs {fmt_bytes(need)} but the memory budget is "
                    f"{fmt_bytes(self.budget)}; raise --memory-budget (settings.memory_budget_bytes "
                    f"in experts.yaml) or set a smaller footprint_bytes/model for this expert")
        return None

    def plan(self, work: list[WorkItem], resident: list[str],
             upcoming: list[set[str]] | None = None) -> ExecutionPlan:
        """Group `work` by expert and order the groups (see the module docstring)."""
        order: dict[str, list[int]] = {}
        for i, w in enumerate(work):
            items = order.get(w.expert)
            if items is None:
                order[w.expert] = [i]
            else:
                items.append(i)
        upcoming = [set(s) for s in upcoming or ()]
        next_use = _next_use(upcoming)
        res = [r for r in resident if r not in self.remote]
        warm, cold = self._split(list(order), res, next_use)
        if upcoming and 1 < len(cold) <= self.search_limit:
            cold = self._search(res, warm, cold, next_use, upcoming)
        res_after, evicts, peak = self._walk(res, warm, cold, next_use)
        groups = [Group(e, order[e], needs_load=False, remote=True) for e in order if e in self.remote]
        groups += [Group(e, order[e], needs_load=False) for e in warm]
        for e in cold:
            groups.append(Group(e, order[e], evicts.get(e, []), needs_load=True, error=self.too_big(e)))
        return ExecutionPlan(groups, lower_bound=len(cold), budget=self.budget, peak_bytes=peak,
                             resident_after=res_after)

    search_limit = 5  # try every order of up to this many cold experts when later stages are known

    def _split(self, needed: list[str], res: list[str], next_use: dict[str, float]):
        """(warm, cold): needed experts already resident (LRU order), and the others ordered so
        that those needed again soonest are loaded last."""
        res_set = set(res)
        warm = [e for e in res if e in set(needed)]
        first = {e: i for i, e in enumerate(needed)}
        cold = sorted((e for e in needed if e not in res_set and e not in self.remote),
                      key=lambda e: (-next_use.get(e, math.inf), first[e]))
        return warm, cold

    def _walk(self, resident: list[str], warm: list[str], cold: list[str],
              next_use: dict[str, float]) -> tuple[list[str], dict[str, list[str]], int]:
        """Run warm then cold groups on paper: (resident after, evictions per load, peak bytes)."""
        res = list(resident)
        for e in warm:  # used first, so they become the most recently used
            res.remove(e)
            res.append(e)
        used = sum(self.footprint(r) for r in res)
        peak, budget = used, self.budget
        pending = set(cold)
        evicts: dict[str, list[str]] = {}
        for e in cold:
            pending.discard(e)
            if self.too_big(e) is not None:
                continue
            need = self.footprint(e)
            victims = self._victims(res, need, used, budget, pending, next_use)
            for v in victims:
                res.remove(v)
                used -= self.footprint(v)
            evicts[e] = victims
            res.append(e)
            used += need
            peak = max(peak, used)
        return res, evicts, peak

    def _rollout(self, res: list[str], upcoming: list[set[str]]) -> int:
        """Loads the later stages cost from residency `res` under the greedy order."""
        loads = 0
        for k, stage in enumerate(upcoming):
            nu = _next_use(upcoming[k + 1:])
            warm, cold = self._split(sorted(stage), res, nu)
            loads += sum(self.too_big(e) is None for e in cold)
            res = self._walk(res, warm, cold, nu)[0]
        return loads

    def _search(self, res, warm, cold, next_use, upcoming) -> list[str]:
        """The order of the cold experts that leaves the later stages the fewest loads (the
        greedy order first, so it wins ties)."""
        best, best_cost = cold, None
        for perm in itertools.permutations(cold):
            cost = self._rollout(self._walk(res, warm, list(perm), next_use)[0], upcoming)
            if best_cost is None or cost < best_cost:
                best, best_cost = list(perm), cost
        return best

    def victims(self, resident: list[str], incoming: str,
                next_use: dict[str, float] | None = None) -> list[str]:
        """Residents (LRU order) to unload before loading `incoming`: furthest next use first
        (`next_use` maps expert -> position of its next use; absent = never), then LRU."""
        used = sum(self.footprint(r) for r in resident)
        return self._victims(resident, self.footprint(incoming), used, self.budget, set(), next_use or {})

    def _victims(self, resident: list[str], need: int, used: int, budget: int,
                 still_needed: set[str], next_use: dict[str, float]) -> list[str]:
        """Experts to unload so that `need` more bytes fit: furthest next use first, then LRU."""
        if used + need <= budget:
            return []
        lru = {r: i for i, r in enumerate(resident)}
        candidates = sorted((r for r in resident if r not in still_needed),
                            key=lambda r: (-next_use.get(r, math.inf), lru[r]))
        victims = []
        for r in candidates:
            if used + need <= budget:
                break
            victims.append(r)
            used -= self.footprint(r)
        return victims
