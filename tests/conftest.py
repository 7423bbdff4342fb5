"""Shared fixtures: the real embedded models, the shared data folder, offline environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from composer.offline import ensure_offline

ensure_offline()  # tests never touch the network

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("COMPOSER_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = data_dir()
    if not d.exists():
        pytest.fail(f"shared data not found at {d}; set COMPOSER_DATA")
    return d


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from composer.models import resolve_model_path

    return resolve_model_path("embedded:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def default_config() -> Path:
    return REPO / "experts.yaml"
