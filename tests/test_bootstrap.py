"""Paired bootstrap intervals of task-averaged accuracy, on RouterDC's real test outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from composer.evals.bootstrap import task_average_intervals
from composer.outcomes import read_outcomes
from routers_helpers import RDC


@pytest.fixture(scope="module")
def arc_and_gsm8k():
    t = read_outcomes([RDC / "arc_challenge_test.json", RDC / "gsm8k-test.json"])
    experts = list(t.experts)
    return t.credit_matrix(experts).to_numpy(dtype=float), np.asarray(t.task_of().tolist()), experts


def test_interval_width_matches_the_binomial_standard_error(arc_and_gsm8k):
    Y, tasks, experts = arc_and_gsm8k
    z = experts.index("HuggingFaceH4/zephyr-7b-beta")
    iv = task_average_intervals(Y, tasks, {"zephyr": np.full(len(tasks), z)},
                                groups={"arc": ["arc_challenge"]}, n_boot=2000)["zephyr"]["arc"]
    arc = Y[tasks == "arc_challenge", z]  # 0/1 credit: the normal approximation holds at n = 352
    p, n = arc.mean(), len(arc)
    half = 100 * 1.96 * np.sqrt(p * (1 - p) / n)
    assert iv[0] < 100 * p < iv[1]
    assert (iv[1] - iv[0]) / 2 == pytest.approx(half, rel=0.15)


def test_paired_differences(arc_and_gsm8k):
    Y, tasks, experts = arc_and_gsm8k
    a = np.full(len(tasks), experts.index("meta-math/MetaMath-Mistral-7B"))
    b = np.where(tasks == "gsm8k", experts.index("meta-math/MetaMath-Mistral-7B"),
                 experts.index("HuggingFaceH4/zephyr-7b-beta"))
    iv = task_average_intervals(Y, tasks, {"a": a, "same": a.copy(), "b": b},
                                groups={"avg": ["arc_challenge", "gsm8k"]}, reference="a")
    assert iv["same"]["avg_vs_reference"] == [0.0, 0.0, 0.0]  # same choices, same resamples
    obs, lo, hi = iv["b"]["avg_vs_reference"]
    # only ARC-C differs, zephyr over MetaMath there, halved by the two-task average
    arc = tasks == "arc_challenge"
    expected = 100 * (Y[arc, b[arc]].mean() - Y[arc, a[arc]].mean()) / 2
    assert obs == pytest.approx(expected, abs=0.01) and lo < obs < hi and lo > 0
    with pytest.raises(ValueError, match="reference row 'nope'"):
        task_average_intervals(Y, tasks, {"a": a}, groups={"avg": ["gsm8k"]}, reference="nope")
    with pytest.raises(ValueError, match="task 'mmlu' has no queries"):
        task_average_intervals(Y, tasks, {"a": a}, groups={"avg": ["mmlu"]})
