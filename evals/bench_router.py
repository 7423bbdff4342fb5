"""Routing overhead benchmark: single-query latency (embedding + prediction + decision) and
batched throughput, on prompts the router has never embedded (no cache hits), plus the cached path.

    python -m composer.evals.bench_router --router runs/knn --outcomes ../shared/data/outcomes/routerdc-7b/mmlu_test.json

Prints the numbers and writes them to JSON. Timings on a shared CPU are noisy: the JSON records
the load average before and after, and the ratio of the cached to the cold path.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_bench(router, queries: list[str], *, n_single: int = 100, batch_size: int = 256,
              n_batch: int = 1024, warmup: int = 5, threads: int | None = None,
              out: str | Path | None = None, progress=print) -> dict[str, Any]:
    """Measure `router.route` on fresh prompts. `queries` must hold at least n_single + n_batch
    distinct prompts (more are ignored) so that no timed call hits the embedding cache."""
    from composer.routers.embed import Embedder

    queries = list(dict.fromkeys(queries))
    need = warmup + n_single + n_batch
    if len(queries) < need:
        raise ValueError(f"need {need} distinct prompts for warmup + single + batch, got {len(queries)}")
    rng = np.random.default_rng(0)
    queries = [queries[i] for i in rng.permutation(len(queries))[:need]]
    warm, single, batch = queries[:warmup], queries[warmup:warmup + n_single], queries[warmup + n_single:]
    # no disk cache: every timed prompt is new; threads None keeps the Embedder's default (tuned: 1 or all CPUs up to 4)
    emb = Embedder(router.embedding_model, cache=False, **({} if threads is None else {"threads": threads}))
    router.use_embedder(emb)
    load_before = _load()
    router.route(warm)  # loads the embedding model; not timed
    lat = []
    for q in single:
        t0 = time.perf_counter()
        router.route([q])
        lat.append(time.perf_counter() - t0)
    emb_only = []
    for q in single[: min(30, len(single))]:
        emb._memory.clear()
        t0 = time.perf_counter()
        emb.encode([q])
        emb_only.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, len(batch), batch_size):
        router.route(batch[i:i + batch_size])
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, len(batch), batch_size):
        router.route(batch[i:i + batch_size])  # same prompts again: embeddings come from memory
    warm_s = time.perf_counter() - t0
    tok = emb._st.tokenizer
    lengths = [len(tok(q)["input_ids"]) for q in single]
    lat_ms = np.array(lat) * 1000
    res = {
        "router": router.name, "embedding_model": router.embedding_model,
        "experts": len(router.experts_),
        "single_query_ms": {"p50": float(np.percentile(lat_ms, 50)), "p90": float(np.percentile(lat_ms, 90)),
                            "p99": float(np.percentile(lat_ms, 99)), "mean": float(lat_ms.mean()),
                            "n": len(lat_ms)},
        "single_embedding_only_ms_p50": float(np.median(emb_only) * 1000),
        "batched_qps": len(batch) / cold_s, "batch_size": batch_size, "n_batch_queries": len(batch),
        "batched_cached_qps": len(batch) / warm_s,
        "prompt_tokens": {"median": float(np.median(lengths)), "mean": float(np.mean(lengths)),
                          "max_seq_length": emb.max_seq_length},
        "targets": {"single_p50_ms_max": 15.0, "batched_qps_min": 100.0},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                    "load_after": _load(), "torch_threads": emb.threads if emb.threads is not None else "auto",
                    "thread_choices": {kind: {str(k): v["calls"] for k, v in per.items()}
                                       for kind, per in emb.thread_stats.items()}},
    }
    res["meets"] = {"single_p50": res["single_query_ms"]["p50"] <= 15.0, "batched_qps": res["batched_qps"] >= 100.0}
    progress(f"router {router.name} (torch threads {res['machine']['torch_threads']}): single-query p50 {res['single_query_ms']['p50']:.1f} ms "
             f"(p90 {res['single_query_ms']['p90']:.1f}, embedding alone {res['single_embedding_only_ms_p50']:.1f}) "
             f"| batched {res['batched_qps']:.0f} q/s (batch {batch_size}), cached {res['batched_cached_qps']:.0f} q/s "
             f"| prompts median {res['prompt_tokens']['median']:.0f} tokens | load {load_before} -> {res['machine']['load_after']}")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1), encoding="utf-8")
    return res


def main(argv: list[str] | None = None) -> int:
    import argparse

    from composer.outcomes import read_outcomes
    from composer.routers.base import Router

    ap = argparse.ArgumentParser(description="Routing overhead benchmark.")
    ap.add_argument("--router", required=True, help="saved router folder")
    ap.add_argument("--outcomes", nargs="+", required=True, help="files whose prompts are the queries")
    ap.add_argument("--n-single", type=int, default=100)
    ap.add_argument("--n-batch", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/bench_router.json")
    a = ap.parse_args(argv)
    router = Router.load(a.router)
    run_bench(router, read_outcomes(a.outcomes).prompts(), n_single=a.n_single, n_batch=a.n_batch,
              batch_size=a.batch_size, threads=a.threads, out=a.out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
