"""Shared pieces of the router tests: the real embedder (vectors cached under pytest's cache
folder, so a re-run does not re-embed) and small, fixed subsets of the real outcome tables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pytest

from composer.outcomes import OutcomeTable, concat, read_outcomes

DATA = Path(os.environ.get("COMPOSER_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
RDC = DATA / "outcomes" / "routerdc-7b"
RLLM = DATA / "outcomes" / "routellm"

TRAIN_FILES = {"mmlu": "mmlu_train.json", "gsm8k": "gsm8k-train.json", "humaneval": "humaneval_train.json",
               "arc_challenge": "arc_challenge_train.json"}
TEST_FILES = {"mmlu": "mmlu_test.json", "gsm8k": "gsm8k-test.json", "humaneval": "humaneval_test.json",
              "arc_challenge": "arc_challenge_test.json"}
TRAIN_N = {"mmlu": 120, "gsm8k": 80, "humaneval": 60, "arc_challenge": 60}
TEST_N = {"mmlu": 60, "gsm8k": 40, "humaneval": 30, "arc_challenge": 30}


@lru_cache(maxsize=None)
def _read(path: str) -> OutcomeTable:
    return read_outcomes(path)


def multitask(split: str, per_task: dict[str, int] | None = None, seed: int = 0) -> OutcomeTable:
    """A fixed subset of RouterDC's real outcomes: a few hundred queries over four tasks."""
    files = TRAIN_FILES if split == "train" else TEST_FILES
    sizes = per_task or (TRAIN_N if split == "train" else TEST_N)
    return concat([_read(str(RDC / files[t])).sample(n, seed=seed) for t, n in sizes.items()])


def routellm_gsm8k(n: int = 240, seed: int = 0) -> OutcomeTable:
    return _read(str(RLLM / "gsm8k" / "gsm8k_responses.csv")).sample(n, seed=seed)


@pytest.fixture(scope="session")
def embedder(request):
    from composer.routers.embed import ROUTING_EMBEDDING, Embedder

    # the learned routers' spec (routers given an embedder of another spec make their own)
    return Embedder(ROUTING_EMBEDDING, cache_dir=request.config.cache.mkdir("composer-embeddings")).load()
