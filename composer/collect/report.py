"""What routing over collected outcomes buys, in the units a local deployment pays: the
accuracy, tokens and seconds of each expert alone and of each router's decisions on the same
held-out queries, and the share of queries each router sends to the large model.

`composer eval` trains and replays the routers (accuracy, price-based cost, oracle gap); this
joins its decisions.jsonl with the measured tokens and latency that `composer collect` stored:

    composer eval --outcomes runs/demo/mmlu.jsonl,runs/demo/gsm8k.jsonl --test-fraction 0.3 \\
        --router best_single,knn,mlp,symbolic,oracle --out runs/demo/eval
    python -m composer.collect.report --decisions runs/demo/eval/decisions.jsonl \\
        --large qwen-coder-1.5b runs/demo/mmlu.jsonl runs/demo/gsm8k.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from composer.collect.store import OutcomeStore


def routing_report(stores: list[str | Path], decisions: str | Path, large: str) -> dict:
    rows = {(str(r["query_id"]), r["expert"]): r for s in stores for r in OutcomeStore(s).rows()}
    by_router: dict[str, list[dict]] = defaultdict(list)
    with open(decisions, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            by_router[d["router"]].append(d)
    test = sorted({d["query_id"] for ds in by_router.values() for d in ds})
    experts = sorted({e for (_, e) in rows})

    def cost(qid: str, chosen: list[str]) -> tuple[float, float]:
        picked = [rows[(qid, e)] for e in chosen if (qid, e) in rows]
        return sum(float(r.get("tokens") or 0) for r in picked), sum(float(r.get("latency") or 0) for r in picked)

    def line(name: str, scores: list, spent: list[tuple[float, float]], to_large: list[bool]) -> dict:
        got = [s for s in scores if s is not None]
        n = len(spent)
        return {"name": name, "n": n, "accuracy": round(sum(got) / len(got), 4) if got else None,
                "mean_tokens": round(sum(t for t, _ in spent) / n, 1) if n else None,
                "mean_seconds": round(sum(s for _, s in spent) / n, 2) if n else None,
                "share_large": round(sum(to_large) / n, 3) if n else None}

    out = {"test_queries": len(test), "large": large, "experts": [], "routers": []}
    for e in experts:
        qs = [q for q in test if (q, e) in rows]
        out["experts"].append(line(e, [rows[(q, e)].get("score") for q in qs], [cost(q, [e]) for q in qs],
                                   [e == large] * len(qs)))
    for r, ds in by_router.items():
        out["routers"].append(line(r, [d.get("score") for d in ds], [cost(d["query_id"], d["experts"]) for d in ds],
                                   [large in d["experts"] for d in ds]))
    return out


def markdown(rep: dict) -> str:
    head = (f"| on {rep['test_queries']} held-out queries | accuracy | tokens / query | seconds / query "
            f"| share to {rep['large']} |\n| --- | --- | --- | --- | --- |\n")
    body = "".join(f"| {x['name']}{' (alone)' if kind == 'experts' else ''} | {x['accuracy']} | {x['mean_tokens']} "
                   f"| {x['mean_seconds']} | {x['share_large']:.0%} |\n"
                   for kind in ("experts", "routers") for x in rep[kind])
    return head + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", help="composer collect outcome stores (JSONL)")
    ap.add_argument("--decisions", required=True, help="decisions.jsonl written by composer eval --out")
    ap.add_argument("--large", required=True, help="the large (expensive) expert")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rep = routing_report(a.stores, a.decisions, a.large)
    print(json.dumps(rep, indent=1) if a.json else markdown(rep))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
