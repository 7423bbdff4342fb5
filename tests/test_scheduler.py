"""Plans (lower bound, budget, multi-stage residency), Belady/LRU against brute force, and the
stream batcher (policy, simulator, and a live batcher on the real SmolLM2 and Gemma models)."""

from __future__ import annotations

import itertools
import math
import random
import threading

import pytest

from composer.scheduler import Scheduler, WorkItem, default_memory_budget
from composer.stream import (StreamBatcher, belady_loads, choose_next, hold_until, lru_loads,
                             simulate_stream, upcoming_of)
from composer.types import Query

Q = Query("x", id="q")


def work_for(experts):
    return [WorkItem(Query(f"q{i}", id=f"q{i}"), e) for i, e in enumerate(experts)]


def run_on_paper(sched: Scheduler, plan, resident):
    """Apply a plan's evictions and loads; return the resident list and every byte total seen."""
    res, seen = list(resident), []
    for g in plan.groups:
        if g.remote or g.error:
            continue
        for v in g.evict_before:
            assert v in res, f"plan evicts {v} which is not resident"
            res.remove(v)
        if g.expert in res:
            res.remove(g.expert)  # used: most recently used
        res.append(g.expert)
        seen.append(sum(sched.footprint(r) for r in res))
    return res, seen


def test_single_stage_lower_bound_and_budget_random():
    rng = random.Random(7)
    for _ in range(300):
        names = [f"e{i}" for i in range(rng.randint(1, 9))]
        fp = {e: rng.randint(1, 10) for e in names}
        budget = rng.randint(max(fp.values()), sum(fp.values()) + 5)
        sched = Scheduler(fp, budget)
        resident = []
        for e in rng.sample(names, rng.randint(0, len(names))):  # a resident set within budget
            if sum(fp[r] for r in resident) + fp[e] <= budget:
                resident.append(e)
        experts = [rng.choice(names) for _ in range(rng.randint(1, 40))]
        plan = sched.plan(work_for(experts), resident)
        needed = set(experts)
        assert plan.loads == plan.lower_bound == len(needed - set(resident))
        assert sorted(g.expert for g in plan.groups) == sorted(needed)  # one group per expert
        assert sorted(i for g in plan.groups for i in g.items) == list(range(len(experts)))
        res, seen = run_on_paper(sched, plan, resident)
        assert max(seen) <= budget and plan.peak_bytes <= budget
        assert res == plan.resident_after


def test_resident_first_and_evicts_only_what_is_needed():
    sched = Scheduler({"a": 4, "b": 4, "c": 4}, 8)
    plan = sched.plan(work_for(["a", "b", "c", "a"]), resident=["c", "b"])
    assert [g.expert for g in plan.groups] == ["c", "b", "a"]
    assert [g.needs_load for g in plan.groups] == [False, False, True]
    assert plan.groups[2].evict_before == ["c"]  # least recently used of the two
    assert plan.groups[0].items == [2] and plan.groups[2].items == [0, 3]


def test_expert_bigger_than_budget_fails_alone():
    sched = Scheduler({"small": 2, "huge": 50, "other": 3}, 10)
    plan = sched.plan(work_for(["huge", "small", "other", "huge"]), resident=[])
    by = {g.expert: g for g in plan.groups}
    assert "huge" in by["huge"].error and "memory budget" in by["huge"].error
    assert "--memory-budget" in by["huge"].error
    assert by["small"].error is None and by["other"].error is None
    assert "huge" not in plan.resident_after
    assert plan.peak_bytes <= 10


def test_remote_experts_cost_no_load_and_no_memory():
    sched = Scheduler({"local": 5, "api": 10**12}, 5, remote=frozenset({"api"}))
    plan = sched.plan(work_for(["api", "local", "api"]), resident=[])
    assert plan.groups[0].expert == "api" and plan.groups[0].remote and not plan.groups[0].needs_load
    assert plan.loads == plan.lower_bound == 1 and plan.groups[0].error is None
    assert plan.resident_after == ["local"]


def chain(sched, stages, resident=()):
    res, loads = list(resident), 0
    for i, st in enumerate(stages):
        plan = sched.plan(work_for(st), res, [set(s) for s in stages[i + 1:]])
        assert plan.peak_bytes <= sched.budget
        loads += plan.loads
        res = plan.resident_after
    return loads, res


def test_multi_stage_keeps_next_stage_experts_resident():
    # MoA: proposers a, b, c then aggregator b; room for one model: b is loaded last and stays.
    sched = Scheduler({e: 1 for e in "abc"}, 1)
    plan = sched.plan(work_for(["b", "a", "c", "b"]), [], [{"b"}])
    assert plan.groups[-1].expert == "b"
    assert chain(sched, [["b", "a", "c"], ["b"]]) == (3, ["b"])
    # Without the hint the greedy plan would end on another expert and reload b.
    assert sched.plan(work_for(["b", "a", "c"]), []).resident_after != ["b"]


def test_multi_stage_lower_bound_when_budget_allows():
    rng = random.Random(3)
    for _ in range(200):
        names = list("abcdefg")[: rng.randint(2, 7)]
        stages = [rng.sample(names, rng.randint(1, len(names))) for _ in range(rng.randint(2, 4))]
        distinct = {e for s in stages for e in s}
        sched = Scheduler({e: 1 for e in names}, len(distinct))
        assert chain(sched, stages)[0] == len(distinct)


def brute_multi_stage(stages, cap):
    best = math.inf
    for perms in itertools.product(*[list(itertools.permutations(s)) for s in stages]):
        best = min(best, belady_loads([e for p in perms for e in p], cap))
    return best


def test_multi_stage_tight_budget_against_brute_force():
    rng = random.Random(0)
    equal = total = 0
    for _ in range(400):
        d = rng.randint(2, 5)
        cap = rng.randint(1, d)
        stages = [rng.sample("abcde"[:d], rng.randint(1, min(d, 3))) for _ in range(rng.randint(1, 4))]
        ours = chain(Scheduler({e: 1 for e in "abcde"}, cap), stages)[0]
        best = brute_multi_stage(stages, cap)
        assert ours >= best  # brute force is the optimum
        assert ours <= best + 1
        equal += ours == best
        total += 1
    assert equal / total >= 0.99  # measured 2999/3000 on a larger run; see docs/scheduler.md


def brute_paging(seq, cap):
    """Fewest loads for a fixed order: dynamic programming over every cache state."""
    states = {frozenset(): 0}
    for e in seq:
        nxt = {}
        for s, c in states.items():
            if e in s:
                options = [(s, c)]
            elif len(s) < cap:
                options = [(s | {e}, c + 1)]
            else:
                options = [((s - {v}) | {e}, c + 1) for v in s]
            for s2, c2 in options:
                if c2 < nxt.get(s2, math.inf):
                    nxt[s2] = c2
        states = nxt
    return min(states.values())


def test_belady_is_optimal_and_lru_is_not_better():
    rng = random.Random(11)
    for _ in range(300):
        d = rng.randint(1, 5)
        seq = [rng.choice("abcde"[:d]) for _ in range(rng.randint(1, 14))]
        cap = rng.randint(1, 4)
        opt = brute_paging(seq, cap)
        assert belady_loads(seq, cap) == opt
        assert lru_loads(seq, cap) >= opt
    assert lru_loads(list("abcabcabc"), 2) == 9 and belady_loads(list("abcabcabc"), 2) == 6


def test_choose_next_policy():
    heads = {"a": (5, 10.0), "b": (2, 9.0), "c": (7, 10.5)}
    assert choose_next(heads, ["c", "a"], now=10.6, max_wait_s=5) == "a"  # resident, oldest
    assert choose_next(heads, [], now=10.6, max_wait_s=5) == "b"  # nothing resident: oldest
    assert choose_next(heads, ["c", "a"], now=14.5, max_wait_s=5) == "b"  # b waited too long
    assert upcoming_of(heads) == [{"b"}, {"a"}, {"c"}]


def test_hold_gathers_a_batch_before_a_load():
    heads = {"a": (0, 1.0), "b": (1, 1.2)}
    assert hold_until(heads, [], 0.5) == 1.5  # a load is needed: wait for the oldest's deadline
    assert hold_until(heads, ["b"], 0.5) == -math.inf  # resident work: serve now
    arrivals = [(0.0, "a"), (0.1, "b"), (0.2, "a")]
    held = simulate_stream(arrivals, capacity=1, load_s=1.0, gen_s=0.01, max_wait_s=0.5)
    eager = simulate_stream(arrivals, capacity=1, load_s=1.0, gen_s=0.01, max_wait_s=0.5, hold=False)
    assert held.served == ["a", "a", "b"] and held.loads == 2
    assert eager.served == ["a", "b", "a"] and eager.loads == 3
    assert held.latencies[0] == pytest.approx(0.5 + 1.0 + 0.02)  # held max_wait_s, then load + batch


def test_simulated_stream_never_starves_and_counts_loads():
    # a floods the queue; one request for b arrives early.
    arrivals = [(i * 0.01, "a") for i in range(300)]
    arrivals.insert(5, (0.05, "b"))
    bounded = simulate_stream(arrivals, capacity=1, load_s=1.0, gen_s=0.02, max_wait_s=0.5, max_batch=8)
    greedy = simulate_stream(arrivals, capacity=1, load_s=1.0, gen_s=0.02, max_batch=8)
    assert sorted(bounded.served) == sorted(e for _, e in arrivals)
    assert bounded.latencies[5] < greedy.latencies[5]  # max_wait bounds b's wait
    assert greedy.latencies[5] > 3.0
    assert bounded.loads >= belady_loads(bounded.served, 1)  # cannot beat the optimum for its order
    # Random traces: the batcher's eviction is within Belady's optimum for the order it served.
    rng = random.Random(5)
    for _ in range(20):
        t, arr = 0.0, []
        for _ in range(200):
            t += rng.expovariate(50.0)
            arr.append((t, f"e{min(int(rng.paretovariate(1.2)), 8)}"))
        sim = simulate_stream(arr, capacity=3, load_s=0.2, gen_s=0.01, max_wait_s=1.0)
        assert sim.loads >= belady_loads(sim.served, 3)
        assert sorted(sim.served) == sorted(e for _, e in arr)


def test_default_budget_is_positive():
    assert default_memory_budget() > 0
    assert Scheduler({}, None).budget > 0


@pytest.fixture(scope="module")
def two_real_experts():
    """The real SmolLM2 and Gemma-3-270M llama.cpp experts, room for one at a time."""
    from composer.backends import make_backend
    from composer.config import parse_config

    cfg = parse_config("""
version: 1
experts:
  - {name: smollm2, backend: llamacpp, model: "embedded:smollm2-135m-instruct", context_length: 512,
     generation: {max_tokens: 4, temperature: 0.0}, options: {n_threads: 1}}
  - {name: gemma, backend: llamacpp, model: "embedded:gemma3-270m", chat_format: completion,
     context_length: 512, generation: {max_tokens: 4, temperature: 0.0}, options: {n_threads: 1}}
""")
    backends = {e.name: make_backend(e) for e in cfg.experts}
    yield backends
    for b in backends.values():
        b.unload()


def test_stream_batcher_serves_every_request_with_real_models(two_real_experts):
    from composer.executors import LocalExecutor

    backends = two_real_experts
    fp = {n: b.footprint for n, b in backends.items()}
    ex = LocalExecutor(backends.__getitem__, Scheduler(fp, max(fp.values())))
    batcher = StreamBatcher(ex, max_wait_s=30.0, max_batch=16)
    futures = {}
    lock = threading.Lock()

    def client(c):
        for i in range(4):
            q = Query(f"Say {c}{i}.", id=f"{c}-{i}")
            f = batcher.submit(q, "smollm2" if (i + c) % 2 else "gemma")
            with lock:
                futures[q.id] = f

    threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()  # drains
    results = {k: f.result(timeout=0) for k, f in futures.items()}
    assert len(results) == 12 and all(c.ok and c.query_id == k for k, c in results.items())
    assert {c.expert for c in results.values()} == {"smollm2", "gemma"}
    st = batcher.stats()
    assert st["served"] == 12 and st["pending"] == 0
    assert 2 <= st["loads"] <= st["batches"]  # both experts loaded; never more than one load a batch
    assert st["loads"] == backends["smollm2"].load_count + backends["gemma"].load_count
    assert len(ex.resident) == 1  # room for one model only
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(Query("late"), "gemma")
    ex.close()


def test_bench_scheduler_command_quick(tmp_path):
    """`composer bench scheduler --quick` through the CLI: prints the tables and writes JSON."""
    import json

    from typer.testing import CliRunner

    from composer.cli.main import register_commands

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(register_commands(), ["bench", "scheduler", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "naive per-query order vs grouped plan" in result.output and "Belady" in result.output
    res = json.loads(out.read_text())
    assert {r["case"] for r in res["offline"]} == {"fake L/g=1", "fake L/g=10"}
    for r in res["offline"]:
        assert r["grouped_loads"] == r["lower_bound"] == r["D"]
        assert r["naive_loads"] > r["grouped_loads"] and r["same_answers"]
    for r in res["stream"]:
        assert r["belady_loads"] <= r["lru_loads"] and r["belady_of_served_order"] <= r["policy_loads"]
    assert res["live_stream"]["ok"] == res["live_stream"]["requests"]
    assert res["overhead"]["N"] == 2000 and res["checks"]["grouped_loads_equal_lower_bound"] is True
