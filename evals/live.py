"""Live benchmark runs on real models, with a resumable JSONL result store.

    run_live_eval("gsm8k", "self-moa", limit=50, seed=0, out="results/gsm8k-self-moa.jsonl")

Every finished query is appended to the store as one JSON line, then flushed and fsynced, so a
run killed at any moment loses at most the query in flight. On restart (resume=True, the
default) the items already in the store are skipped; a torn last line (a kill mid-write) is cut
off first; items are read back by id, first record wins, so nothing is counted twice. The item
order is a seeded shuffle of the benchmark, so `limit` and `seed` fix the question set.

Record schema ("composer.live/1"), one per item: benchmark, split, run (pipeline or expert
name), pipeline, expert, seed, max_tokens, item_id, index, gold, prediction, score, correct,
reason, text, error, cost, prompt_tokens, completion_tokens, latency_s, experts, answer (the
full Answer: candidates and stages).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from composer.errors import BadRequestError
from composer.types import Query
from composer.evals.benchmarks import get_benchmark, grade, load_benchmark

SCHEMA = "composer.live/1"
RUN_KEYS = ("benchmark", "split", "run", "seed", "max_tokens")


class ResultStore:
    """An append-only JSONL file of per-item records; crash-safe appends, torn-line repair."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def repair(self) -> int:
        """Cut a torn last line (no trailing newline) left by a kill mid-write. Returns bytes cut."""
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with self.path.open("r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - keep

    def records(self) -> list[dict]:
        """Every complete record, in file order (a torn last line is ignored)."""
        if not self.path.exists():
            return []
        out = []
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.endswith("\n"):
                    break  # torn last line: repaired before the next append
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise BadRequestError(f"{self.path}:{n}: not a JSON record ({exc.msg}); "
                                         "fix or remove that line, or rerun with --no-resume") from None
        return out

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def unique_records(records: list[dict]) -> list[dict]:
    """First record per item id, in order."""
    seen, out = set(), []
    for r in records:
        if r.get("item_id") not in seen:
            seen.add(r.get("item_id"))
            out.append(r)
    return out


def select_items(benchmark: str, split: str, limit: int | None, seed: int):
    items = load_benchmark(benchmark, split)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if limit is not None:
        order = order[:limit]
    return [(i, items[i]) for i in order]


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """The Wilson score interval of k successes in n trials (95% by default)."""
    if not n:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def summarise(records: list[dict]) -> dict:
    """Accuracy, cost, tokens and latency over unique records (errors count as wrong)."""
    recs = unique_records(records)
    n = len(recs)
    first = recs[0] if recs else {}
    out = {k: first.get(k) for k in ("benchmark", "split", "run", "pipeline", "expert", "seed", "max_tokens")}
    out.update(n=n, correct=sum(bool(r.get("correct")) for r in recs),
               errors=sum(r.get("error") is not None for r in recs),
               duplicates_ignored=len(records) - n)
    out["accuracy"] = out["correct"] / n if n else None
    out["accuracy_ci95"] = wilson(out["correct"], n)
    for key in ("cost", "latency_s", "prompt_tokens", "completion_tokens"):
        vals = [float(r.get(key) or 0.0) for r in recs]
        out[f"mean_{key}"] = sum(vals) / n if n else None
        out[f"total_{key}"] = sum(vals)
    return out


def _record(meta: dict, index: int, item, ans, latency: float) -> dict:
    g = grade(item, ans.text) if ans.ok else {"prediction": None, "score": 0.0, "reason": "error"}
    return {"schema": SCHEMA, **meta, "item_id": item.id, "index": index, "gold": item.gold,
            "prediction": g["prediction"], "score": g["score"], "correct": g["score"] >= 1.0,
            "reason": g["reason"], "text": ans.text, "error": ans.error, "cost": ans.usage.cost,
            "prompt_tokens": ans.usage.prompt_tokens, "completion_tokens": ans.usage.completion_tokens,
            "latency_s": round(latency, 4), "experts": ans.experts, "answer": ans.to_dict(),
            "finished_at": time.time()}


def rescore(path: str | Path) -> dict:
    """Re-grade every record of a finished store from its stored text with the current
    extractors (after an extractor fix), rewriting the file atomically. Never run it on a store
    a live run is appending to. Returns how many records changed."""
    store = ResultStore(path)
    store.repair()
    records = store.records()
    if not records:
        return {"records": 0, "changed": 0}
    first = records[0]
    items = {it.id: it for it in load_benchmark(first["benchmark"], first.get("split", "test"))}
    changed = 0
    for r in records:
        if r.get("error") is None:
            g = grade(items[r["item_id"]], r["text"])
            new = {"prediction": g["prediction"], "score": g["score"], "correct": g["score"] >= 1.0,
                   "reason": g["reason"]}
            if any(r.get(k) != v for k, v in new.items()):
                changed += 1
                r.update(new)
    tmp = store.path.with_name(store.path.name + ".rescore.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, store.path)
    return {"records": len(records), "changed": changed}


def default_out(benchmark: str, run: str, seed: int) -> Path:
    return Path("runs") / "live" / f"{benchmark}__{run.replace('/', '_')}__seed{seed}.jsonl"


def run_live_eval(benchmark: str, pipeline: str | None = None, config: str | Path | None = None,
                  limit: int | None = None, seed: int = 0, out: str | Path | None = None,
                  resume: bool = True, expert: str | None = None, *, split: str = "test",
                  max_tokens: int | None = None, progress: bool = True, composer=None) -> dict:
    """Run `benchmark` through a pipeline (or one expert) on real models; returns the summary.

    `pipeline` may also name an expert (a single-expert baseline). `composer` lets a caller
    pass an open Composer (the SDK); otherwise one is opened from `config` and closed at the end.
    """
    from composer.core import Composer  # noqa: PLC0415 - keep `import evals.live` light

    bench = get_benchmark(benchmark)
    c = composer or Composer.from_yaml(config or _default_config())
    try:
        if pipeline is not None and pipeline not in c.pipelines:
            if pipeline in c.experts and expert is None:
                pipeline, expert = None, pipeline
            else:
                c.pipeline(pipeline)  # raises: unknown pipeline, naming the known ones
        if pipeline is None and expert is None:
            expert = c.default_expert()
        run = pipeline or expert
        mt = max_tokens or bench.max_tokens
        meta = {"benchmark": bench.name, "split": split, "run": run, "pipeline": pipeline,
                "expert": expert, "seed": seed, "max_tokens": mt}
        store = ResultStore(out or default_out(bench.name, run, seed))
        _prepare(store, meta, resume)
        done = {r["item_id"] for r in store.records()}
        todo = [(i, it) for i, it in select_items(bench.name, split, limit, seed) if it.id not in done]
        _run(c, bench, store, meta, todo, len(done), progress)
        records = store.records()
    finally:
        if composer is None:
            c.close()
    summary = summarise(records)
    summary["results"] = str(store.path)
    return summary


def _default_config() -> Path:
    local = Path("experts.yaml")
    return local if local.exists() else Path(__file__).resolve().parents[1] / "experts.yaml"


def _prepare(store: ResultStore, meta: dict, resume: bool) -> None:
    if not resume and store.path.exists():
        backup = store.path.with_name(store.path.name + f".{int(time.time())}.bak")
        store.path.rename(backup)  # --no-resume starts over but never destroys results
        return
    store.repair()
    for r in store.records()[:1]:
        diff = {k: (r.get(k), meta[k]) for k in RUN_KEYS if r.get(k) != meta[k]}
        if diff:
            raise BadRequestError(f"{store.path} holds a different run ({diff}, as stored vs asked); "
                             "use another --out, or --no-resume to start over (the old file is kept as .bak)")


def _run(c, bench, store: ResultStore, meta: dict, todo: list, done: int, progress: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    correct = sum(bool(r.get("correct")) for r in unique_records(store.records()))
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"), TimeElapsedColumn()]
    with Progress(*cols, disable=not progress, transient=False) as bar:
        total = done + len(todo)
        task = bar.add_task(f"{meta['benchmark']} / {meta['run']}", total=total, completed=done,
                            acc=f"{correct / done:.3f}" if done else "-")
        for index, item in todo:
            q = Query(bench.prompt(item), id=item.id, task=bench.name, max_tokens=meta["max_tokens"],
                      seed=meta["seed"])
            t0 = time.perf_counter()
            ans = c.run([q], pipeline=meta["pipeline"], expert=meta["expert"] if meta["pipeline"] is None else None)[0]
            rec = _record(meta, index, item, ans, time.perf_counter() - t0)
            store.append(rec)
            done += 1
            correct += rec["correct"]
            bar.update(task, advance=1, acc=f"{correct / done:.3f}")


def main(argv: list[str] | None = None) -> int:
    """`python -m composer.evals.live --benchmark gsm8k --pipeline self-moa --limit 5` (the CLI's
    `composer eval` calls run_live_eval the same way)."""
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--benchmark")
    ap.add_argument("--pipeline")
    ap.add_argument("--expert")
    ap.add_argument("--config")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--rescore", nargs="+", metavar="STORE", help="re-grade finished stores and stop")
    a = ap.parse_args(argv)
    if a.rescore:
        for p in a.rescore:
            print(p, rescore(p))
        return 0
    if not a.benchmark:
        ap.error("--benchmark is required")
    summary = run_live_eval(a.benchmark, a.pipeline, a.config, a.limit, a.seed, a.out, not a.no_resume,
                            a.expert, max_tokens=a.max_tokens, progress=not a.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__: list[Any] = ["ResultStore", "run_live_eval", "summarise", "select_items", "unique_records"]
