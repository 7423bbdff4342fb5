"""Offline router evaluation: the peers' metric definitions and an end-to-end run on real outcomes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from routers_helpers import embedder, multitask, routellm_gsm8k  # noqa: F401 - fixture

from composer.config import Price
from composer.outcomes import OutcomeTable
from composer.evals.router_eval import evaluate
from composer.evals.router_metrics import aiq, nondecreasing_convex_hull, pair_metrics, routellm_thresholds

PRICES = {"gpt-4-1106-preview": Price(input_per_1m=10, output_per_1m=30),
          "mistralai/Mixtral-8x7B-Instruct-v0.1": Price(input_per_1m=0.6, output_per_1m=0.6)}


def test_routellm_pair_metrics_by_hand():
    m = pair_metrics([100, 0, 50], [80, 60, 75], weak_acc=60, strong_acc=80)  # unsorted on purpose
    assert m["auc"] == pytest.approx(72.5)             # 0.5*(60+75)/2 + 0.5*(75+80)/2
    assert m["apgr"] == pytest.approx(12.5 / 20)      # (72.5 - 60) / (80 - 60)
    assert m["cpt50"] == pytest.approx(50 * 10 / 15)  # 70% accuracy reached at 33.3% strong calls
    assert m["cpt20"] == pytest.approx(50 * 4 / 15)
    assert m["cpt80"] == pytest.approx(60.0)


def test_thresholds_are_pandas_qcut_edges():
    x = np.random.default_rng(0).normal(size=500)
    _, edges = pd.qcut(x, 10, retbins=True)
    np.testing.assert_allclose(routellm_thresholds(x, 10), edges)


def test_aiq_by_hand():
    a = np.array([[0, 0.5], [1, 0.4], [2, 0.8], [3, 0.7]])
    np.testing.assert_allclose(nondecreasing_convex_hull(a), [[0, 0.5], [2, 0.8]])
    b = np.array([[1, 0.6], [3, 0.9]])
    res = aiq({"a": a, "b": b})
    assert res["a"] == pytest.approx((1.3 + 0.8) / 3)   # hull to x=2, then flat at 0.8 to x=3
    assert res["b"] == pytest.approx(1.5 / 3)           # RouterBench integrates from the cheapest point


def _envelope_aiq(points: np.ndarray, max_x: float) -> float:
    """RouterBench's definition derived independently: the upper envelope evaluated at every point's
    cost (max of the point and every chord over it), points lower than their predecessor dropped,
    extended flat to max_x, trapezoid area / max_x."""
    p = points[np.argsort(points[:, 0])]
    env = []
    for x, y in p:
        best = y
        for x1, y1 in p:
            for x2, y2 in p:
                if x1 < x < x2:
                    best = max(best, y1 + (y2 - y1) * (x - x1) / (x2 - x1))
        env.append((x, best))
    env = np.array(env)
    keep = [0] + [i for i in range(1, len(env)) if env[i, 1] >= env[i - 1, 1]]
    env = env[keep]
    env = np.vstack([env, [max_x, env[-1, 1]]])
    return float(np.sum((env[1:, 0] - env[:-1, 0]) * (env[1:, 1] + env[:-1, 1]) / 2) / max_x)


def test_aiq_matches_the_envelope_definition_on_random_curves():
    rng = np.random.default_rng(1)
    for _ in range(30):
        pts = np.column_stack([rng.random(8) * 10, rng.random(8)])
        pts = pts[np.unique(pts[:, 0], return_index=True)[1]]
        max_x = float(pts[:, 0].max()) + rng.random() * 3
        ref = _envelope_aiq(pts, max_x)
        got = aiq({"r": pts, "pad": np.array([[max_x, 0.0]])})["r"]
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.fixture(scope="module")
def pair_tables():
    t = routellm_gsm8k(300, seed=2).with_price_costs(PRICES)
    return t.split(0.4, seed=0)


def test_evaluate_pair_writes_json_plot_and_peer_metrics(pair_tables, embedder, tmp_path):
    train, test = pair_tables
    names = ["random", "best_single", "oracle", "knn", "logistic", "cascade"]
    res = evaluate(train, test, names, embedder=embedder, out_dir=tmp_path, n_points=8, progress=lambda m: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["pair"] == {"strong": "gpt-4-1106-preview", "weak": "mistralai/Mixtral-8x7B-Instruct-v0.1"}
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    lines = (tmp_path / "decisions.jsonl").read_text().splitlines()
    assert len(lines) == len(names) * test.n_queries
    oracle = res["oracle"]["accuracy"]
    for name in names:
        e = saved["routers"][name]
        assert e["default"]["accuracy"] <= oracle + 1e-12
        p = e["pair"]
        assert len(p["points"]) == 11 and p["points"][0]["strong_pct"] == 100.0 and p["points"][-1]["strong_pct"] == 0.0
        assert set(p) >= {"apgr", "cpt20", "cpt50", "cpt80", "auc"}
        assert name in saved["aiq"]["all"]
    assert res["routers"]["oracle"]["pair"]["apgr"] > res["routers"]["random"]["pair"]["apgr"]
    assert "zero_router" in saved["aiq"]["all"]
    # the always-strong and always-weak points are the singles themselves
    strong = res["singles"]["gpt-4-1106-preview"]["accuracy"]
    assert res["routers"]["knn"]["pair"]["points"][0]["accuracy_pct"] == pytest.approx(100 * strong)


def test_missing_test_scores_are_excluded_and_counted(pair_tables, embedder):
    train, test = pair_tables
    df = test.frame.copy()
    gpt = df.index[df["expert"] == "gpt-4-1106-preview"][:10]
    df.loc[gpt, "score"] = np.nan
    holes = OutcomeTable(df, "holes")
    res = evaluate(train, holes, ["best_single"], embedder=embedder, sweep=False, progress=lambda m: None)
    d = res["routers"]["best_single"]["default"]
    assert d["missing"] == 10
    kept = df.loc[df["expert"] == "gpt-4-1106-preview", "score"].mean()
    assert d["accuracy"] == pytest.approx(kept)
    assert res["singles"]["gpt-4-1106-preview"]["missing"] == 10


def test_multitask_routing_beats_random_and_reports_gap(embedder):
    train, test = multitask("train"), multitask("test")
    res = evaluate(train, test, ["random", "best_single", "coe", "knn"], embedder=embedder,
                   sweep=False, progress=lambda m: None)
    assert res["cost_unit"] == "calls" and "aiq" not in res
    r = res["routers"]
    # one expert for every query can never beat the best single expert on the test tasks
    assert r["best_single"]["oracle_gap_closed"] <= 1e-12
    assert r["knn"]["default"]["task_average"] > r["random"]["default"]["task_average"]
    assert r["coe"]["default"]["task_average"] > r["random"]["default"]["task_average"]
    assert set(r["knn"]["default"]["task_accuracy"]) == set(test.tasks)
    assert res["oracle"]["task_average"] >= max(x["default"]["task_average"] for x in r.values())


def test_every_router_curve_has_two_cost_points_on_a_cost_table(pair_tables, embedder):
    """On a cost-bearing table each router's sweep spans more than one cost (dynamic's top-p sweep
    alone used to start at the priciest expert: a degenerate curve with AIQ near 0)."""
    from composer.routers import ROUTERS

    train, test = pair_tables
    names = [n for n in ROUTERS if n != "oracle"]
    res = evaluate(train, test, names, embedder=embedder, n_points=8, progress=lambda m: None)
    assert res["cost_unit"] == "usd"
    for name in names:
        costs = {round(p["cost"], 12) for p in res["routers"][name]["curve"]}
        assert len(costs) >= 2, (name, costs)
    # dynamic's curve reaches the cheap end: always the cheapest expert (its old top-p-only sweep
    # started at the base router's own picks, mostly the priciest expert on RouteLLM's tables)
    cheapest = min(res["singles"].values(), key=lambda s: s["cost"])["cost"]
    assert min(p["cost"] for p in res["routers"]["dynamic"]["curve"]) <= cheapest * (1 + 1e-9)
    zero = res["aiq"]["all"]["zero_router"]
    assert res["aiq"]["all"]["dynamic"] > 0.9 * zero
