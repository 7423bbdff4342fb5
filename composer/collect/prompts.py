"""Prompt sets for `composer collect`: built-in benchmarks (graded by their gold answers) or the
user's JSONL (`prompt`, optional `reference`, `task`, `id`).

Benchmarks use the live evals' loaders, prompt forms and graders (evals/benchmarks.py); the
question order is a seeded shuffle, so `--limit` and `--seed` fix the set (per benchmark).
A JSONL line without `id` gets a stable id from its task and prompt text, so a resumed run and
a later `router train` see the same query ids.

Grading without a judge: gold answers for benchmarks; for JSONL, the `reference` compared with
the response's final answer (a number, an option letter, or normalised text). Prompts with no
reference need `--judge`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composer.errors import BadRequestError


@dataclass(frozen=True)
class PromptItem:
    """One prompt to run every expert on."""

    id: str
    prompt: str
    task: str
    reference: str | None = None
    benchmark: str | None = None  # set for built-in benchmarks: graded by gold answers
    item: Any = field(default=None, compare=False, repr=False)  # evals.benchmarks.Item


def benchmark_prompts(names: list[str], *, limit: int | None, seed: int, split: str = "test") -> list[PromptItem]:
    """`limit` questions of each benchmark (seeded shuffle), benchmark by benchmark."""
    from composer.evals.benchmarks import get_benchmark, load_benchmark  # noqa: PLC0415 - data loads lazily

    out: list[PromptItem] = []
    for name in names:
        bench = get_benchmark(name)
        items = load_benchmark(bench.name, split)
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        for i in order[:limit] if limit is not None else order:
            it = items[i]
            out.append(PromptItem(it.id, bench.prompt(it), bench.name, it.gold, bench.name, it))
    return out


def _stable_id(task: str, prompt: str) -> str:
    return "p-" + hashlib.sha1(f"{task}\x00{prompt}".encode()).hexdigest()[:12]


def jsonl_prompts(path: str | Path, *, limit: int | None = None, seed: int | None = None) -> list[PromptItem]:
    """Read the user's prompt file. Every problem names the file and line (exit 2 at the CLI)."""
    path = Path(path)
    if not path.exists():
        raise BadRequestError(f"{path}: prompt file not found")
    out: list[PromptItem] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BadRequestError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
            if not isinstance(d, dict):
                raise BadRequestError(f"{path}:{n}: expected a JSON object with 'prompt'")
            unknown = sorted(set(d) - {"prompt", "reference", "task", "id"})
            if unknown:
                raise BadRequestError(f"{path}:{n}: unknown field(s) {unknown}; a line has prompt, "
                                      "and optionally reference, task, id")
            prompt = d.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise BadRequestError(f"{path}:{n}: field 'prompt' must be a non-empty string")
            for key in ("reference", "task", "id"):
                if d.get(key) is not None and not isinstance(d[key], (str, int, float)):
                    raise BadRequestError(f"{path}:{n}: field '{key}' must be a string")
            task = str(d.get("task") or path.stem)
            qid = str(d["id"]) if d.get("id") is not None else _stable_id(task, prompt)
            if qid in seen:
                raise BadRequestError(f"{path}:{n}: id '{qid}' repeats line {seen[qid]} "
                                      "(same id, or the same task and prompt)")
            seen[qid] = n
            ref = d.get("reference")
            out.append(PromptItem(qid, prompt, task, None if ref is None else str(ref)))
    if not out:
        raise BadRequestError(f"{path}: no prompts in the file")
    if seed is not None:
        random.Random(seed).shuffle(out)
    return out[:limit] if limit is not None else out


# -- grading without a judge -----------------------------------------------------------------

def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def grade_reference(reference: str, text: str) -> dict:
    """Compare a response with a reference answer: a number by numeric equality of the response's
    final number, a single option letter by the extracted choice, other text by normalised
    equality or containment. {"prediction", "score", "reason"}."""
    from composer.aggregation.vote import canonical_number, extract_choice, extract_number  # noqa: PLC0415

    ref = reference.strip()
    num = canonical_number(ref) if re.fullmatch(r"[-+$]?[\d,]*\.?\d+", ref) else None
    if num is not None:
        pred = extract_number(text)
    elif re.fullmatch(r"[A-Ja-j]", ref):
        num, pred = ref.upper(), extract_choice(text)
    else:
        pred = text.strip()
        ok = bool(_norm(ref)) and (_norm(pred) == _norm(ref) or f" {_norm(ref)} " in f" {_norm(pred)} ")
        return {"prediction": pred[:200], "score": float(ok), "reason": "match" if ok else "mismatch"}
    ok = pred is not None and pred == num
    return {"prediction": pred, "score": float(ok),
            "reason": "no answer found" if pred is None else ("match" if ok else "mismatch")}


def grade(p: PromptItem, text: str) -> dict:
    """Grade by gold answer (benchmarks, as live evals do) or by reference (JSONL)."""
    if p.benchmark is not None:
        from composer.evals.benchmarks import grade as grade_gold  # noqa: PLC0415

        return grade_gold(p.item, text)
    if p.reference is None:
        raise BadRequestError(f"prompt '{p.id}' has no reference; grade it with --judge")
    return grade_reference(p.reference, text)
