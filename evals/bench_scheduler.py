"""Scheduler benchmark: the grouped plan against naive per-query order, the stream policy against
Belady's optimum, and the scheduling overhead per query.

One routed trace (N queries, k distinct experts each out of D) runs twice under the same memory
budget: (a) naive: query by query, each of its experts in routed order, loading on demand and
evicting the least recently used; (b) grouped: one LocalExecutor stage (one load per expert).
Both run on fake backends with calibrated load time L and generation time g (fakes, because
L and g must be controlled) and on the real llama.cpp models SmolLM2-135M and Gemma-3-270M.

    predicted speedup = N*k*(L+g) / (D*L + N*k*g)

is evaluated with L (a swap: load + unload + the first call's extra time) and g (a call) measured
in the grouped runs (`swap_costs`), and compared with the measured speedup. The stream part replays the trace as
timed arrivals through the StreamBatcher policy (composer/stream.py) and counts loads against
LRU and Belady's optimum. `run_benchmark()` returns everything as a dict (written as JSON by
`composer bench scheduler`).
"""

from __future__ import annotations

import random
import statistics
import threading
import time

from composer.backends import make_backend
from composer.config import ExpertSpec, RegistryConfig, parse_config
from composer.core import Composer
from composer.executors import LocalExecutor
from composer.scheduler import Scheduler, WorkItem
from composer.stream import StreamBatcher, belady_loads, lru_loads, simulate_stream
from composer.types import Query, RouteDecision

MIB = 2**20
TARGETS = {"grouped_loads": "== lower bound", "stream": "<= 1.1 x Belady",
           "speedup_ratio": ">= 0.8 x predicted", "speedup_at_L/g>=10": ">= 3x", "overhead": "< 1 ms/query"}


def make_trace(n: int, k: int, d: int, seed: int = 0) -> tuple[list[Query], list[list[str]], list[str]]:
    """N queries, each routed to k distinct experts out of D (uniformly, seeded)."""
    rng = random.Random(seed)
    experts = [f"e{i}" for i in range(d)]
    queries = [Query(f"Question {i}: what is {i} + {i % 7}?", id=f"q{i}") for i in range(n)]
    return queries, [rng.sample(experts, k) for _ in range(n)], experts


def fake_backends(experts: list[str], load_s: float, gen_s: float, footprint: int = 100 * MIB) -> dict:
    return {e: make_backend(ExpertSpec(name=e, backend="fake", model="fake", footprint_bytes=footprint,
                                       options={"load_s": load_s, "gen_s": gen_s}))
            for e in experts}


def run_naive(backends: dict, queries: list[Query], routes: list[list[str]], sched: Scheduler) -> dict:
    """Per-query order, on-demand loading, LRU eviction under the same budget."""
    resident: list[str] = []
    loads = unloads = 0
    load_s = unload_s = 0.0
    texts = []
    t0 = time.perf_counter()
    for q, route in zip(queries, routes):
        for e in route:
            if e in resident:
                resident.remove(e)
            else:
                for v in sched.victims(resident, e):
                    resident.remove(v)
                    unload_s += backends[v].unload()
                    unloads += 1
                load_s += backends[e].load()
                loads += 1
            resident.append(e)
            texts.append(backends[e].generate([q])[0].text)
    wall = time.perf_counter() - t0
    for e in resident:
        backends[e].unload()
    return {"loads": loads, "unloads": unloads, "wall_s": wall, "load_s": load_s, "unload_s": unload_s,
            "texts": texts}


def composer_over(backends: dict, budget: int) -> Composer:
    """A Composer whose registry holds the same experts (the product path: route decisions ->
    aggregator -> runtime stage -> Scheduler -> executor)."""
    specs = [b.spec for b in backends.values()]
    cfg = RegistryConfig(version=1, settings={"memory_budget_bytes": budget}, experts=specs)
    return Composer(cfg, base_dir=None)


def run_grouped(backends: dict, queries: list[Query], routes: list[list[str]], sched: Scheduler) -> dict:
    """The trace through Composer.run with the routes as its decisions (aggregator none: every
    routed expert answers each query), under the same budget as the naive run."""
    c = composer_over(backends, sched.budget)
    decisions = [RouteDecision(q.id, list(r), reason="bench trace") for q, r in zip(queries, routes)]
    t0 = time.perf_counter()
    try:
        answers = c.run(queries, decisions=decisions)
        wall = time.perf_counter() - t0
    finally:
        c.close()
    stage = answers[0].stages[0]
    events = stage["events"]
    loads = [e["seconds"] for e in events if e["event"] == "load"]
    unloads = [e["seconds"] for e in events if e["event"] == "unload"]
    cands = [cd for a in answers for cd in a.candidates]
    errors = [cd.error for cd in cands if cd.error]
    by_expert: dict[str, list[float]] = {}
    for cd in sorted(cands, key=lambda cd: cd.metadata.get("order", 0)):
        by_expert.setdefault(cd.expert, []).append(cd.usage.latency_s)
    first = [v[0] for v in by_expert.values()]
    later = [x for v in by_expert.values() for x in v[1:]]
    texts = {(cd.query_id, cd.expert): cd.text for cd in cands}
    return {"loads": len(loads), "unloads": len(unloads), "wall_s": wall, "load_s": sum(loads),
            "unload_s": sum(unloads), "lower_bound": len({e for r in routes for e in r}), "peak_bytes": 0,
            "texts": [texts.get((q.id, e), "") for q, r in zip(queries, routes) for e in r], "errors": errors,
            "load_event_s": loads, "unload_event_s": unloads, "first_call_s": first, "later_call_s": later}


def product_cases() -> list[dict]:
    """The issue's repro cases through Composer.run on fake experts (timing-controlled), each
    with its lower bound: loads of local experts not resident at the start, each once."""
    def cfg(n, extra_e="", pipes=""):
        es = "\n".join(f"  - {{name: e{i}, backend: fake, model: e{i}, footprint_bytes: {100 * MIB}, "
                       f"options: {{load_s: 0.02{extra_e if i == 0 else ''}}}}}" for i in range(n))
        return (f"version: 1\nsettings: {{default_expert: e0, memory_budget_bytes: {150 * MIB}}}\n"
                f"experts:\n{es}\npipelines:\n  - {{name: all, experts: [{', '.join(f'e{i}' for i in range(n))}], k: {n}}}\n"
                + pipes)
    moa = "  - {name: moa, experts: [e0, e1], k: 2, aggregator: {kind: moa, expert: e0}}\n"
    cases = [
        ("2 experts, e1 resident, query to both", cfg(2), "e1", ["both please"], "all", 1),
        ("3 experts, 6 queries, e2 resident", cfg(3), "e2", [f"q{i}" for i in range(6)], "all", 2),
        ("MoA: 2 proposers + aggregator e0", cfg(2, pipes=moa), None, [f"m{i}" for i in range(4)], "moa", 2),
        ("retried items (e0 fails 50%)", cfg(2, extra_e=", fail_rate: 0.5, seed: 3"), "e1",
         [f"r{i}" for i in range(6)], "all", 1),
    ]
    out = []
    for name, text, resident, prompts, pipeline, bound in cases:
        with Composer(parse_config(text, check_files=False)) as c:
            if resident:
                c.ask("warm up", expert=resident)
            before = sum(c.backend(e).load_count for e in c.experts)
            answers = c.run(prompts, pipeline=pipeline)
            loads = sum(c.backend(e).load_count for e in c.experts) - before
            retries = sum(1 for a in answers for cd in a.candidates for _ in cd.metadata.get("attempts", []))
        out.append({"case": name, "loads": loads, "lower_bound": bound, "ok": all(a.ok for a in answers),
                    "failed_attempts_retried": retries})
    return out


def predicted_speedup(calls: int, d: int, load: float, gen: float) -> float:
    return calls * (load + gen) / (d * load + calls * gen)


def warm_up(backends: dict, query: Query) -> None:
    """Load, call once and unload every expert: absorbs what a process pays only once (imports,
    page cache, first template compile), which neither compared run should be charged for."""
    for b in backends.values():
        b.load()
        b.generate([query])
        b.unload()


def swap_costs(grouped_runs: list[dict]) -> tuple[float, float]:
    """L and g measured in the grouped runs: g = mean call that is not the first after a load;
    L = mean load + mean unload + the first call's extra time over g (a model's first call
    after a load can be much slower than the next ones, so that time is part of the swap)."""
    later = [x for r in grouped_runs for x in r["later_call_s"]]
    first = [x for r in grouped_runs for x in r["first_call_s"]]
    gen = statistics.mean(later) if later else statistics.mean(first)
    loads = [x for r in grouped_runs for x in r["load_event_s"]]
    unloads = [x for r in grouped_runs for x in r["unload_event_s"]]
    load = statistics.mean(loads) + (statistics.mean(unloads) if unloads else 0.0)
    return load + max(0.0, statistics.mean(first) - gen), gen


def compare(name: str, backends: dict, queries, routes, budget: int, nominal: tuple | None = None,
            repeats: int = 1) -> dict:
    """Naive and grouped from cold (ABBA order when repeats=2, to cancel drift in the machine's
    load); L and g come from the grouped runs, the measured speedup from the mean wall times."""
    sched = Scheduler({e: b.footprint for e, b in backends.items()}, budget)
    warm_up(backends, queries[0])
    order = ["naive", "grouped", "grouped", "naive"] if repeats == 2 else ["naive", "grouped"]
    runs: dict[str, list[dict]] = {"naive": [], "grouped": []}
    for kind in order:
        fn = run_naive if kind == "naive" else run_grouped
        runs[kind].append(fn(backends, queries, routes, sched))
    naive, grouped = runs["naive"][0], runs["grouped"][0]
    calls, d = sum(len(r) for r in routes), len({e for r in routes for e in r})
    load, gen = swap_costs(runs["grouped"])
    pred = predicted_speedup(calls, d, load, gen)
    naive_wall = statistics.mean(r["wall_s"] for r in runs["naive"])
    grouped_wall = statistics.mean(r["wall_s"] for r in runs["grouped"])
    measured = naive_wall / grouped_wall
    row = {"case": name, "N": len(queries), "k": calls // len(queries), "D": d, "budget_bytes": budget,
           "repeats": len(runs["naive"]), "L_s": load, "g_s": gen, "L_over_g": load / gen,
           "naive_loads": naive["loads"], "grouped_loads": grouped["loads"], "lower_bound": grouped["lower_bound"],
           "naive_wall_s": naive_wall, "grouped_wall_s": grouped_wall,
           "naive_walls_s": [r["wall_s"] for r in runs["naive"]],
           "grouped_walls_s": [r["wall_s"] for r in runs["grouped"]],
           "load_event_mean_s": statistics.mean(x for r in runs["grouped"] for x in r["load_event_s"]),
           "first_call_mean_s": statistics.mean(x for r in runs["grouped"] for x in r["first_call_s"]),
           "predicted_speedup": pred, "measured_speedup": measured, "ratio": measured / pred,
           "same_answers": all(r["texts"] == naive["texts"] for r in runs["naive"] + runs["grouped"]),
           "grouped_errors": grouped["errors"][:3], "peak_bytes": grouped["peak_bytes"]}
    row["L_over_g_class"] = row["L_over_g"]  # which target applies: the calibrated ratio for fakes
    if nominal is not None:
        row["L_nominal_s"], row["g_nominal_s"] = nominal
        row["predicted_nominal"] = predicted_speedup(calls, d, *nominal)
        row["L_over_g_class"] = nominal[0] / nominal[1]
    return row


def real_backends(server: bool = False, max_tokens: int = 4) -> dict:
    """SmolLM2 (chat) and Gemma-3-270M (completion), in-process llama.cpp or managed servers."""
    from composer.models import resolve_model_path

    resolve_model_path("embedded:gemma3-270m")  # assembles the Gemma file once
    kind = "server" if server else "llamacpp"
    common = dict(backend=kind, context_length=512, options={"n_threads": 1} if not server else {})
    specs = [ExpertSpec(name="smollm2", model="embedded:smollm2-135m-instruct",
                        generation={"max_tokens": max_tokens, "temperature": 0.0}, **common),
             ExpertSpec(name="gemma3-270m", model="embedded:gemma3-270m", chat_format="completion",
                        generation={"max_tokens": max_tokens, "temperature": 0.0,
                                    "stop": ["\nQuestion:", "\n\n"]},
                        **common)]
    return {s.name: make_backend(s) for s in specs}


def real_case(n: int, server: bool = False, max_tokens: int = 4, repeats: int = 2) -> dict:
    backends = real_backends(server, max_tokens)
    queries = [Query(t, id=f"r{i}") for i, t in enumerate(REAL_QUESTIONS[:n])]
    routes = [list(backends) for _ in queries]  # k = D = 2: every query asks both experts
    budget = max(b.footprint for b in backends.values())  # room for one model
    try:
        return compare("real-server" if server else "real-llamacpp", backends, queries, routes, budget,
                       repeats=repeats)
    finally:
        for b in backends.values():
            b.unload()


REAL_QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 3 times 4?",
                  "Which planet is closest to the Sun?", "What do bees make?", "How many legs has a spider?",
                  "What is the boiling point of water in Celsius?", "Who wrote Hamlet?"]


# -- stream ---------------------------------------------------------------------------------------
def arrivals_of(routes, rate: float, seed: int = 0) -> list[tuple[float, str]]:
    """Each query arrives at a Poisson time (rate per second) with its k requests together."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for route in routes:
        t += rng.expovariate(rate)
        out += [(t, e) for e in route]
    return out


def stream_case(routes, capacity: int, load_s: float, gen_s: float, rate: float, max_wait_s: float) -> dict:
    arr = arrivals_of(routes, rate)
    seq = [e for _, e in arr]
    ours = simulate_stream(arr, capacity, load_s, gen_s, max_wait_s=max_wait_s)
    no_hold = simulate_stream(arr, capacity, load_s, gen_s, max_wait_s=max_wait_s, hold=False)
    fifo = simulate_stream(arr, capacity, load_s, gen_s, max_wait_s=0.0, max_batch=1, hold=False)
    opt = belady_loads(seq, capacity)
    return {"rate_per_s": rate, "capacity": capacity, "requests": len(seq), "max_wait_s": max_wait_s,
            "L_over_g": load_s / gen_s,
            "lru_loads": lru_loads(seq, capacity), "belady_loads": opt, "fifo_known_queue_loads": fifo.loads,
            "no_hold_loads": no_hold.loads, "no_hold_latency_max_s": max(no_hold.latencies),
            "policy_loads": ours.loads, "belady_of_served_order": belady_loads(ours.served, capacity),
            "policy_over_belady": ours.loads / opt,
            "policy_latency_p50_s": statistics.median(ours.latencies), "policy_latency_max_s": max(ours.latencies),
            "fifo_latency_p50_s": statistics.median(fifo.latencies), "fifo_latency_max_s": max(fifo.latencies)}


def live_stream(routes, experts, capacity: int, load_s: float, gen_s: float, rate: float,
                max_wait_s: float) -> dict:
    """The real StreamBatcher on fake backends, fed the trace's arrivals from a client thread."""
    backends = fake_backends(experts, load_s, gen_s)
    sched = Scheduler({e: b.footprint for e, b in backends.items()}, capacity * 100 * MIB)
    ex = LocalExecutor(backends.__getitem__, sched)
    batcher = StreamBatcher(ex, max_wait_s=max_wait_s)
    arr = arrivals_of(routes, rate)
    served: list[str] = []
    lock = threading.Lock()
    futures = []
    t0 = time.perf_counter()
    for i, (t, e) in enumerate(arr):
        delay = t - (time.perf_counter() - t0)
        if delay > 0:
            time.sleep(delay)
        f = batcher.submit(Query(f"req {i}", id=f"s{i}"), e)
        f.add_done_callback(lambda f, e=e: (lock.acquire(), served.append(e), lock.release()))
        futures.append(f)
    batcher.close()
    wall = time.perf_counter() - t0
    ex.close()
    st = batcher.stats()
    seq = [e for _, e in arr]
    ok = sum(f.result().ok for f in futures)
    return {"requests": len(arr), "ok": ok, "loads": st["loads"], "batches": st["batches"],
            "belady_loads": belady_loads(seq, capacity), "lru_loads": lru_loads(seq, capacity),
            "belady_of_served_order": belady_loads(served, capacity), "wall_s": wall,
            "policy_over_belady": st["loads"] / belady_loads(seq, capacity)}


# -- overhead -------------------------------------------------------------------------------------
def overhead(n: int = 10_000, k: int = 2, d: int = 16) -> dict:
    """Scheduling cost per query with zero-cost fake experts (so all time measured is ours)."""
    queries, routes, experts = make_trace(n, k, d, seed=1)
    work = [WorkItem(q, e) for q, r in zip(queries, routes) for e in r]
    sched = Scheduler({e: 100 * MIB for e in experts}, 4 * 100 * MIB)
    plan_s = min(_timed(lambda: sched.plan(work, ["e1", "e2"], [{"e0"}, {"e3", "e4"}])) for _ in range(5))
    backends = fake_backends(experts, 0.0, 0.0)
    ex = LocalExecutor(backends.__getitem__, sched)
    stage_s = _timed(lambda: ex.run_stage(work))
    ex.close()
    batcher = StreamBatcher(ex, max_wait_s=0.5)

    def stream():
        futs = [batcher.submit(w.query, w.expert) for w in work]
        batcher.close()
        assert all(f.result().ok for f in futs)

    stream_s = _timed(stream)
    ex.close()
    return {"N": n, "k": k, "D": d, "plan_ms_per_query": 1e3 * plan_s / n,
            "local_stage_ms_per_query": 1e3 * stage_s / n, "stream_ms_per_query": 1e3 * stream_s / n}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- the whole benchmark --------------------------------------------------------------------------
def run_benchmark(*, n: int = 100, k: int = 2, d: int = 8, gen_s: float = 0.005,
                  ratios: tuple[float, ...] = (1, 10, 30), real: bool = True, real_n: int = 4,
                  real_server: bool = True, server_n: int = 2, overhead_n: int = 10_000,
                  stream_capacity: int = 3, stream_rates: tuple[float, ...] = (20.0, 200.0),
                  max_wait_s: float = 0.5, seed: int = 0, log=print) -> dict:
    queries, routes, experts = make_trace(n, k, d, seed)
    out: dict = {"trace": {"N": n, "k": k, "D": d, "seed": seed}, "targets": TARGETS, "offline": [],
                 "stream": [], "live_stream": None, "overhead": None}
    for r in ratios:
        load_s = gen_s * r
        log(f"fake backends, L/g = {r:g} (L={load_s:g}s, g={gen_s:g}s) ...")
        backends = fake_backends(experts, load_s, gen_s)
        out["offline"].append(compare(f"fake L/g={r:g}", backends, queries, routes, 100 * MIB,
                                      nominal=(load_s, gen_s)))
    for rate in stream_rates:
        for r in ratios:
            out["stream"].append(stream_case(routes, stream_capacity, gen_s * r, gen_s, rate, max_wait_s))
    log("live StreamBatcher on fake backends ...")
    out["live_stream"] = live_stream(routes, experts, stream_capacity, gen_s * max(ratios), gen_s,
                                     max(stream_rates), max_wait_s)
    if real:
        log(f"real llama.cpp models, N={real_n} ...")
        out["offline"].append(real_case(real_n))
        if real_server:
            log(f"real llama.cpp servers (start = load), N={server_n} ...")
            out["offline"].append(real_case(server_n, server=True))
    log("product path (Composer.run) repro cases ...")
    out["product"] = product_cases()
    log(f"scheduling overhead at N={overhead_n} ...")
    out["overhead"] = overhead(overhead_n)
    out["checks"] = checks(out)
    return out


def checks(res: dict) -> dict:
    rows = res["offline"]
    big = [r for r in rows if r["L_over_g_class"] >= 10]
    return {
        "grouped_loads_equal_lower_bound": all(r["grouped_loads"] == r["lower_bound"] for r in rows),
        "composer_run_cases_at_lower_bound": all(r["loads"] == r["lower_bound"] and r["ok"]
                                                 for r in res.get("product", [])),
        "stream_policy_within_1.1x_belady": all(r["policy_loads"] <= 1.1 * r["belady_loads"] for r in res["stream"]),
        "measured_at_least_0.8x_predicted": all(r["ratio"] >= 0.8 for r in rows),
        "at_least_3x_when_L_over_g_ge_10": all(r["measured_speedup"] >= 3 for r in big) if big else None,
        "overhead_below_1ms_per_query": res["overhead"]["local_stage_ms_per_query"] < 1.0
        and res["overhead"]["stream_ms_per_query"] < 1.0,
        "same_answers_naive_vs_grouped": all(r["same_answers"] for r in rows),
    }


def format_tables(res: dict) -> str:
    lines = ["offline: naive per-query order vs grouped plan (same budget)",
             f"{'case':<16}{'N':>4}{'k':>3}{'D':>3}{'L/g':>7}{'naive':>7}{'grouped':>8}{'bound':>6}"
             f"{'naive s':>9}{'grouped s':>10}{'predicted':>10}{'measured':>9}{'ratio':>7}{'same':>6}"]
    for r in res["offline"]:
        lines.append(f"{r['case']:<16}{r['N']:>4}{r['k']:>3}{r['D']:>3}{r['L_over_g']:>7.1f}{r['naive_loads']:>7}"
                     f"{r['grouped_loads']:>8}{r['lower_bound']:>6}{r['naive_wall_s']:>9.2f}{r['grouped_wall_s']:>10.2f}"
                     f"{r['predicted_speedup']:>9.2f}x{r['measured_speedup']:>8.2f}x{r['ratio']:>7.2f}"
                     f"{str(r['same_answers']):>6}")
    lines += ["", "stream (simulated, unit-size experts): loads",
              f"{'rate/s':>7}{'cap':>4}{'L/g':>6}{'LRU':>6}{'Belady':>7}{'FIFO+queue':>11}{'no hold':>8}"
              f"{'policy':>7}{'/Belady':>8}{'p50 s':>7}{'max s':>7}{'FIFO max s':>11}"]
    for r in res["stream"]:
        lines.append(f"{r['rate_per_s']:>7.0f}{r['capacity']:>4}{r['L_over_g']:>6.0f}{r['lru_loads']:>6}"
                     f"{r['belady_loads']:>7}{r['fifo_known_queue_loads']:>11}{r['no_hold_loads']:>8}{r['policy_loads']:>7}"
                     f"{r['policy_over_belady']:>8.2f}{r['policy_latency_p50_s']:>7.2f}{r['policy_latency_max_s']:>7.2f}"
                     f"{r['fifo_latency_max_s']:>11.2f}")
    if res.get("product"):
        lines += ["", "product path: Composer.run (fake experts, budget for one)",
                  f"{'case':<42}{'loads':>6}{'bound':>6}{'ok':>5}{'retried':>8}"]
        for r in res["product"]:
            lines.append(f"{r['case']:<42}{r['loads']:>6}{r['lower_bound']:>6}{str(r['ok']):>5}"
                         f"{r['failed_attempts_retried']:>8}")
    ls = res["live_stream"]
    if ls:
        lines += ["", f"live StreamBatcher: {ls['requests']} requests, {ls['ok']} ok, loads {ls['loads']} "
                      f"(Belady {ls['belady_loads']}, LRU {ls['lru_loads']}), batches {ls['batches']}, "
                      f"wall {ls['wall_s']:.2f}s"]
    o = res["overhead"]
    lines += ["", f"overhead at N={o['N']} (k={o['k']}, D={o['D']}): plan {o['plan_ms_per_query']:.4f} ms/query, "
                  f"local stage {o['local_stage_ms_per_query']:.4f} ms/query, "
                  f"stream batcher {o['stream_ms_per_query']:.4f} ms/query",
              "", "checks: " + ", ".join(f"{k}={v}" for k, v in res["checks"].items())]
    return "\n".join(lines)
