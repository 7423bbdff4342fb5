"""The live aggregation comparison: several runs (experts and pipelines) on several benchmarks,
one resumable result file per (benchmark, run), then one table.

    python -m composer.evals.compare --config evals/configs/live-cpu.yaml --benchmarks mmlu gsm8k \\
        --runs smollm2 gemma3-270m self-moa moa vote --limit 50 --seed 0 --out-dir runs/aggregation

Runs go benchmark by benchmark, run by run; a killed comparison restarts where it stopped
(every finished query is already on disk). The table is printed and written to
`<out-dir>/comparison.json`; `composer leaderboard <out-dir>/*.jsonl --out DIR` renders it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from composer.evals.live import ResultStore, run_live_eval, summarise, unique_records


def result_path(out_dir: Path, benchmark: str, run: str, seed: int) -> Path:
    return out_dir / f"{benchmark}__{run}__seed{seed}.jsonl"


def compare(benchmarks: list[str], runs: list[str], *, config: str | None, limit: int, seed: int,
            out_dir: str | Path, max_tokens: dict[str, int] | None = None, progress: bool = True) -> list[dict]:
    out_dir = Path(out_dir)
    rows = []
    for b in benchmarks:
        for r in runs:
            s = run_live_eval(b, r, config, limit, seed, result_path(out_dir, b, r, seed), True,
                              max_tokens=(max_tokens or {}).get(b), progress=progress)
            rows.append(s)
            write_table(out_dir, rows)
    return rows


def write_table(out_dir: Path, rows: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


def table(out_dir: str | Path) -> list[dict]:
    """Summaries of every result file in `out_dir` (whatever has finished so far)."""
    return [summarise(ResultStore(p).records()) | {"results": str(p)}
            for p in sorted(Path(out_dir).glob("*.jsonl"))]


def paired(out_dir: str | Path, baseline: str = "smollm2") -> dict[tuple[str, str], dict]:
    """Per (benchmark, run): on the items both it and `baseline` answered, how many it got right
    that the baseline got wrong ("won"), the reverse ("lost"), and the exact McNemar p-value."""
    stores: dict[tuple[str, str], dict[str, bool]] = {}
    for p in sorted(Path(out_dir).glob("*.jsonl")):
        recs = unique_records(ResultStore(p).records())
        if recs:
            stores[(recs[0]["benchmark"], recs[0]["run"])] = {r["item_id"]: bool(r["correct"]) for r in recs}
    out = {}
    for (b, run), res in stores.items():
        base = stores.get((b, baseline))
        if base is None or run == baseline:
            continue
        common = res.keys() & base.keys()
        won = sum(res[i] and not base[i] for i in common)
        lost = sum(base[i] and not res[i] for i in common)
        out[(b, run)] = {"n": len(common), "won": won, "lost": lost, "p": mcnemar_exact(won, lost)}
    return out


def mcnemar_exact(won: int, lost: int) -> float:
    """Two-sided exact McNemar test: the binomial probability of a split at least this uneven."""
    from math import comb  # noqa: PLC0415

    n = won + lost
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(won, lost) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def render(rows: list[dict], pairs: dict | None = None, baseline: str = "smollm2") -> str:
    head = (f"| benchmark | run | n | accuracy | 95% CI | vs {baseline}: won / lost | mean cost (USD) | "
            "mean latency (s) | mean tokens (in + out) |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        acc = f"{s['accuracy']:.3f}" if s.get("accuracy") is not None else "-"
        ci = s.get("accuracy_ci95")
        ci = f"{ci[0]:.2f} – {ci[1]:.2f}" if ci else "-"
        pr = (pairs or {}).get((s["benchmark"], s["run"]))
        pr = f"{pr['won']} / {pr['lost']} (p={pr['p']:.2f})" if pr else "-"
        toks = (s.get("mean_prompt_tokens") or 0) + (s.get("mean_completion_tokens") or 0)
        lines.append(f"| {s['benchmark']} | {s['run']} | {s['n']} | {acc} | {ci} | {pr} | {s['mean_cost'] or 0:.3g} | "
                     f"{s['mean_latency_s'] or 0:.1f} | {toks:.0f} |")
    return "\n".join(lines)


def latency_probe(benchmark: str, runs: list[str], *, config: str | None, n: int = 10, seed: int = 0,
                  max_tokens: int | None = None, baseline: str = "smollm2") -> dict:
    """Wall time per query of every run on the same `n` items, back to back in one process
    (the order of runs rotates per item), so a busy shared machine slows all runs alike; the
    per-run latencies of the result stores were measured hours apart under different load."""
    from statistics import median  # noqa: PLC0415
    from time import perf_counter  # noqa: PLC0415

    from composer.core import Composer  # noqa: PLC0415
    from composer.types import Query  # noqa: PLC0415
    from composer.evals.benchmarks import get_benchmark  # noqa: PLC0415
    from composer.evals.live import select_items  # noqa: PLC0415

    bench = get_benchmark(benchmark)
    mt = max_tokens or bench.max_tokens
    items = [it for _, it in select_items(bench.name, "test", n + 1, seed)]
    times: dict[str, list[float]] = {r: [] for r in runs}
    with Composer.from_yaml(config or "experts.yaml") as c:
        def once(r: str, it, tag: str) -> float:
            q = Query(bench.prompt(it), id=f"{it.id}-{tag}-{r}", task=bench.name, max_tokens=mt, seed=seed)
            kw = {"pipeline": r} if r in c.pipelines else {"expert": r}
            t0 = perf_counter()
            c.run([q], **kw)
            return perf_counter() - t0

        for r in runs:  # warm-up on an extra item: loads every expert once
            once(r, items[0], "warm")
        for j, it in enumerate(items[1:]):
            for r in runs[j % len(runs):] + runs[:j % len(runs)]:
                times[r].append(once(r, it, "probe"))
    med = {r: median(v) for r, v in times.items()}
    base = med.get(baseline)
    return {"benchmark": bench.name, "n": n, "seed": seed, "max_tokens": mt, "baseline": baseline,
            "runs": {r: {"median_s": round(med[r], 3), "mean_s": round(sum(v) / len(v), 3),
                         "ratio_to_baseline": round(med[r] / base, 2) if base else None}
                     for r, v in times.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--benchmarks", nargs="+", default=["mmlu", "gsm8k"])
    ap.add_argument("--runs", nargs="+", default=["smollm2", "self-moa", "moa", "vote"])
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="runs/aggregation")
    ap.add_argument("--max-tokens", nargs="*", default=[], metavar="BENCH=N",
                    help="per-benchmark generation budget, e.g. gsm8k=160 mmlu=32")
    ap.add_argument("--table-only", action="store_true", help="summarise what is on disk and stop")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--latency-probe", type=int, metavar="N",
                    help="time every run back to back on N items per benchmark, write latency.json, stop")
    a = ap.parse_args(argv)
    mt = {k: int(v) for k, v in (x.split("=", 1) for x in a.max_tokens)}
    if a.latency_probe:
        res = [latency_probe(b, a.runs, config=a.config, n=a.latency_probe, seed=a.seed, max_tokens=mt.get(b))
               for b in a.benchmarks]
        Path(a.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(a.out_dir) / "latency.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
        print(json.dumps(res, indent=2))
        return 0
    if a.table_only:
        rows = table(a.out_dir)
        write_table(Path(a.out_dir), rows)
    else:
        rows = compare(a.benchmarks, a.runs, config=a.config, limit=a.limit, seed=a.seed,
                       out_dir=a.out_dir, max_tokens=mt, progress=not a.no_progress)
    print(render(rows, paired(a.out_dir)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
