"""The within-task routing-signal test (evals/routing_signal.py) on real outcome files and the real
embedder: it finds the signal where routers are known to use it (RouteLLM's GPT-4 vs Mixtral on
GSM8K), and finds none once the same outcomes are cut from their queries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from composer.cli.main import app, register_commands
from composer.errors import RoutingError
from composer.evals.routing_signal import routing_signal
from composer.outcomes import OutcomeTable, read_outcomes

DATA = Path(os.environ.get("COMPOSER_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
GSM8K = DATA / "outcomes" / "routellm" / "gsm8k" / "gsm8k_responses.csv"
HUMANEVAL = DATA / "outcomes" / "routerdc-7b" / "humaneval_train.json"
PERMS = 19  # the smallest p-value is then 1/20 = 0.05


@pytest.fixture(scope="module")
def gsm8k():
    return read_outcomes([GSM8K])


def test_signal_is_found_where_the_strong_and_weak_model_differ_by_query(gsm8k):
    res = routing_signal(gsm8k, ["knn"], permutations=PERMS)
    s = res["routers"]["knn"]["tasks"]["gsm8k"]
    assert res["task_sizes"] == {"gsm8k": 1319} and res["skipped"] == {}
    # the predictions track which model does better on which question, far beyond any shuffle
    assert s["interaction"] > 0.08 and s["interaction"] > 2 * s["interaction_null_q95"]
    assert s["p_interaction"] == pytest.approx(1 / (PERMS + 1), abs=1e-4)


def test_no_signal_is_found_once_outcomes_are_cut_from_their_queries(gsm8k):
    # the same outcomes, each query's row of scores moved to another query of the task
    df = gsm8k.frame.copy()
    ids = df["query_id"].drop_duplicates().to_numpy()
    moved = dict(zip(ids, np.random.default_rng(7).permutation(ids)))
    scores = df.set_index(["query_id", "expert"])["score"]
    df["score"] = [scores[(moved[q], e)] for q, e in zip(df["query_id"], df["expert"])]
    shuffled = OutcomeTable.from_frame(df, source="gsm8k shuffled")
    assert shuffled.accuracies().round(6).equals(gsm8k.accuracies().round(6))
    s = routing_signal(shuffled, ["knn"], permutations=PERMS)["routers"]["knn"]["tasks"]["gsm8k"]
    assert s["p_interaction"] > 0.1 and s["interaction"] < 0.05


def test_bad_requests_are_refused_by_name(gsm8k):
    with pytest.raises(RoutingError, match=r"\['random'\]: the signal test takes routers that learn"):
        routing_signal(gsm8k, ["random"], permutations=1)
    with pytest.raises(RoutingError, match="folds must be 2 or more"):
        routing_signal(gsm8k, ["knn"], folds=1)
    with pytest.raises(RoutingError, match="needs 2 experts"):
        routing_signal(gsm8k.filter(experts=["gpt-4-1106-preview"]), ["knn"], permutations=1)


def test_cli_writes_the_result_and_refuses_what_it_cannot_test(tmp_path):
    register_commands()
    out = tmp_path / "signal.json"
    r = CliRunner().invoke(app, ["router", "signal", "--outcomes", str(HUMANEVAL), "--router", "knn",
                                 "--permutations", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    s = res["routers"]["knn"]["tasks"]["humaneval"]
    assert res["task_sizes"] == {"humaneval": 115} and res["permutations"] == 3
    assert 0.25 <= s["p_gain"] <= 1 and 0.25 <= s["p_interaction"] <= 1  # (1 + count) / 4
    assert "| knn | humaneval | 115 |" in r.output
    r = CliRunner().invoke(app, ["router", "signal", "--outcomes", str(HUMANEVAL), "--router", "symbolic"])
    assert r.exit_code == 2 and "['symbolic']: the signal test takes" in r.output
    r = CliRunner().invoke(app, ["router", "signal", "--outcomes", str(HUMANEVAL), "--folds", "60"])
    assert r.exit_code == 2 and "no task has 120 queries or more" in r.output
    r = CliRunner().invoke(app, ["router", "signal", "--outcomes", str(HUMANEVAL), "--tasks", "gsm8k"])
    assert r.exit_code == 2 and "gsm8k" in r.output
