"""Stage parallelism of MoA pipelines, measured on fake experts with set delays.

Fake backends here are a timing instrument, not models: each proposer sleeps its own `gen_s`
per query and the aggregator sleeps `agg_s`. The benchmark runs a k-proposer, 1-aggregator MoA
pipeline through the real Composer path (router -> scheduler -> executor -> aggregator) and
reports, per query:

- generation calls (every fake counts the queries it answered): the target is exactly k + 1 at
  L = 1 (and k * L + 1 in general);
- wall time with the experts flagged remote (their groups run concurrently) against
  `slowest proposer + aggregator`: the target is a ratio <= 1.1;
- the same pipeline with local experts (groups run one after another) for contrast, where the
  wall time is about the sum of the proposer delays plus the aggregator.

    composer bench aggregation --k 3 --queries 5 --out runs/bench/aggregation.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from statistics import median


def _config(k: int, delays: list[float], agg_s: float, remote: bool, layers: int):
    from composer.config import parse_config  # noqa: PLC0415

    flag = "true" if remote else "false"
    lines = ["version: 1", "settings: {default_expert: p0}", "experts:"]
    for i, d in enumerate(delays):
        lines.append(f"  - {{name: p{i}, backend: fake, model: fake, options: {{gen_s: {d}, remote: {flag}, "
                     f"footprint_bytes: 1000, reply: 'proposal {i} {{n}}'}}}}")
    lines.append(f"  - {{name: agg, backend: fake, model: fake, options: {{gen_s: {agg_s}, remote: {flag}, "
                 "footprint_bytes: 1000, reply: 'synthesis {n}'}}")
    names = ", ".join(f"p{i}" for i in range(k))
    lines += ["pipelines:",
              f"  - {{name: moa, experts: [{names}], k: {k}, aggregator: {{kind: moa, expert: agg, "
              f"params: {{layers: {layers}}}}}}}"]
    return parse_config("\n".join(lines) + "\n")


def measure(k: int = 3, delays: list[float] | None = None, agg_s: float = 0.25, queries: int = 5,
            remote: bool = True, layers: int = 1) -> dict:
    """Run `queries` questions one at a time; returns calls and wall time per query."""
    from composer.core import Composer  # noqa: PLC0415

    delays = delays or [round(0.2 + 0.15 * i, 3) for i in range(k)]
    if len(delays) != k:
        raise ValueError(f"give {k} proposer delays, got {len(delays)}")
    c = Composer(_config(k, delays, agg_s, remote, layers))
    walls, calls, ok = [], [], 0
    try:
        c.run(["warm-up"], pipeline="moa")  # first use builds backends and the executor
        for i in range(queries):
            before = {n: c.backend(n).queries_seen for n in c.experts}
            t0 = time.perf_counter()
            ans = c.run([f"question {i}: what is {i} + {i}?"], pipeline="moa")[0]
            walls.append(time.perf_counter() - t0)
            calls.append(sum(c.backend(n).queries_seen - before[n] for n in c.experts))
            ok += ans.ok
    finally:
        c.close()
    ideal = layers * max(delays) + agg_s
    return {"remote": remote, "k": k, "layers": layers, "proposer_delays_s": delays, "aggregator_delay_s": agg_s,
            "queries": queries, "answers_ok": ok, "calls_per_query": calls,
            "expected_calls_per_query": k * layers + 1,
            "wall_s_per_query": [round(w, 4) for w in walls], "median_wall_s": round(median(walls), 4),
            "max_wall_s": round(max(walls), 4),
            "slowest_proposer_plus_aggregator_s": round(ideal, 4),
            "sum_of_delays_s": round(layers * sum(delays) + agg_s, 4),
            "ratio_max_wall_to_ideal": round(max(walls) / ideal, 4)}


def run_bench(k: int = 3, queries: int = 5, agg_s: float = 0.25, delays: list[float] | None = None,
              out: str | Path | None = None, echo=print) -> dict:
    res = {"benchmark": "aggregation stage parallelism (fake experts, set delays)",
           "remote": measure(k, delays, agg_s, queries, remote=True),
           "remote_l2": measure(k, delays, agg_s, max(2, queries // 2), remote=True, layers=2),
           "local": measure(k, delays, agg_s, max(2, queries // 2), remote=False)}
    r = res["remote"]
    res["targets"] = {
        "calls_k_plus_1": all(n == k + 1 for n in r["calls_per_query"]),
        "calls_l2": all(n == 2 * k + 1 for n in res["remote_l2"]["calls_per_query"]),
        "remote_wall_within_1.1x": r["ratio_max_wall_to_ideal"] <= 1.1,
    }
    for name in ("remote", "remote_l2", "local"):
        m = res[name]
        echo(f"{name:<10} L={m['layers']} k={m['k']}  calls/query {sorted(set(m['calls_per_query']))} "
             f"(expected {m['expected_calls_per_query']})  wall median {m['median_wall_s']:.3f}s "
             f"max {m['max_wall_s']:.3f}s  slowest+agg {m['slowest_proposer_plus_aggregator_s']:.3f}s "
             f"(ratio {m['ratio_max_wall_to_ideal']:.3f})  sum of delays {m['sum_of_delays_s']:.3f}s")
    echo("targets: " + ", ".join(f"{k_}={'met' if v else 'MISSED'}" for k_, v in res["targets"].items()))
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2), encoding="utf-8")
        echo(f"wrote {out}")
    return res


if __name__ == "__main__":  # pragma: no cover
    run_bench(out="runs/bench/aggregation.json")
