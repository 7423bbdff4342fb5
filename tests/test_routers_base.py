"""The Router contract on real outcomes and the real embedder: fit/route/save/load, selection
by score - lam x cost, budgets, calibration, pools, missing scores, errors."""

from __future__ import annotations

import numpy as np
import pytest
from routers_helpers import embedder, multitask, routellm_gsm8k  # noqa: F401 - fixture

from composer.config import Price
from composer.errors import NotFittedError, RoutingError
from composer.types import Query, RouteDecision
from composer.routers import ROUTERS, Router, load_router, make_router

FAST = {"mlp": {"epochs": 20, "patience": 5}, "mf": {"epochs": 20, "patience": 5}}
PRICES = {"gpt-4-1106-preview": Price(input_per_1m=10, output_per_1m=30),
          "mistralai/Mixtral-8x7B-Instruct-v0.1": Price(input_per_1m=0.6, output_per_1m=0.6)}
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


@pytest.fixture(scope="module")
def train():
    return multitask("train", {"mmlu": 60, "gsm8k": 40, "humaneval": 30})


@pytest.fixture(scope="module")
def test_prompts():
    return multitask("test", {"mmlu": 20, "gsm8k": 20, "humaneval": 10}).prompts()


@pytest.fixture(scope="module")
def priced():
    t = routellm_gsm8k(200).with_price_costs(PRICES)
    return t.split(0.3, seed=0)


def test_unfitted_use_is_a_clear_error():
    r = make_router("knn")
    with pytest.raises(NotFittedError, match="not fitted"):
        r.route(["hi"])
    with pytest.raises(NotFittedError, match="router train"):
        load_router("knn", None)
    with pytest.raises(RoutingError, match="unknown router"):
        make_router("nope")
    with pytest.raises(RoutingError, match="parameters are"):
        make_router("knn", n_neigbours=3)


@pytest.mark.parametrize("name", [n for n in ROUTERS if n != "oracle"])
def test_fit_route_save_load_round_trip(name, train, test_prompts, embedder, tmp_path):
    r = make_router(name, **FAST.get(name, {})).use_embedder(embedder)
    assert r.fit(train) is r
    queries = [Query(p, id=f"q{i}") for i, p in enumerate(test_prompts)]
    decisions = r.route(queries)
    assert len(decisions) == len(queries)
    assert all(isinstance(d, RouteDecision) for d in decisions)
    assert [d.query_id for d in decisions] == [q.id for q in queries]
    for d in decisions:
        assert d.experts and set(d.experts) <= set(r.experts_) and d.router == name and d.reason
        assert set(d.scores) == set(r.experts_) and all(np.isfinite(list(d.scores.values())))
    S = r.predict_scores(test_prompts)
    r.save(tmp_path / name)
    back = Router.load(tmp_path / name).use_embedder(embedder)
    assert type(back) is type(r) and back.experts_ == r.experts_
    np.testing.assert_allclose(back.predict_scores(test_prompts), S, rtol=1e-6, atol=1e-9)
    assert [d.experts for d in back.route(queries)] == [d.experts for d in decisions]
    assert r.route([]) == []


def test_oracle_replays_truth_and_refuses_unknown(train):
    r = make_router("oracle").fit(train)
    truth = train.credit_matrix().to_numpy()  # routers learn accuracy credit (the score kinds)
    S = r.predict_scores(train.prompts())
    picked = S.argmax(axis=1)
    assert np.allclose(truth[np.arange(len(S)), picked], np.nanmax(truth, axis=1))
    with pytest.raises(RoutingError, match="not in the outcomes"):
        r.predict_scores(["a prompt the oracle never saw"])


def test_lambda_cost_budget_and_calibration(priced, embedder):
    train, held = priced
    r = make_router("knn", n_neighbors=20).use_embedder(embedder).fit(train)
    assert r.has_costs_ and r.expert_costs_[r.experts_.index(STRONG)] > 10 * r.expert_costs_[r.experts_.index(WEAK)]
    q = held.prompts()
    free = [d.experts[0] for d in r.route(q, lam=0.0)]
    S = r.predict_scores(q)
    assert free == [r.experts_[i] for i in S.argmax(axis=1)]
    assert {d.experts[0] for d in r.route(q, lam=1e9)} == {WEAK}
    assert {d.experts[0] for d in r.route(q, budget=r.expert_costs_.min() * 1.01)} == {WEAK}
    lam = r.calibrate(q, expensive_share=0.3)
    share = np.mean([d.experts[0] == STRONG for d in r.route(q)])
    assert lam > 0 and share <= 0.3
    lam2 = r.calibrate(q, target_cost=float(r.expert_costs_.mean()))
    costs = [d.costs[d.experts[0]] for d in r.route(q)]
    assert lam2 >= 0 and np.mean(costs) <= r.expert_costs_.mean() + 1e-12


def test_calibration_without_costs_is_refused(train, embedder):
    r = make_router("best_single").fit(train)
    with pytest.raises(RoutingError, match="without costs"):
        r.calibrate(["q"], expensive_share=0.5)


def test_restrict_to_a_pool(train, test_prompts, embedder):
    r = make_router("knn").use_embedder(embedder).fit(train)
    pool = ["mistralai/Mistral-7B-v0.1", "HuggingFaceH4/zephyr-7b-beta"]
    r.restrict(pool)
    assert {d.experts[0] for d in r.route(test_prompts)} <= set(pool)
    with pytest.raises(RoutingError, match="does not know"):
        r.restrict(["gpt-9"])


def test_load_router_by_name_path_and_pool(train, tmp_path, embedder):
    make_router("best_single").fit(train).save(tmp_path / "bs")
    r = load_router("best_single", tmp_path / "bs", experts=["meta-math/MetaMath-Mistral-7B"], k=1)
    assert r.route(["anything"])[0].experts == ["meta-math/MetaMath-Mistral-7B"]
    with pytest.raises(RoutingError, match="holds a 'best_single' router"):
        load_router("knn", tmp_path / "bs")
    rnd = load_router("random", None, experts=["a", "b"])  # usable without training
    assert {d.experts[0] for d in rnd.route([f"q{i}" for i in range(20)])} == {"a", "b"}


def test_missing_scores_are_masked_not_zero(train, test_prompts, embedder):
    """Blank out most of one expert's scores: the routers must still fit, and its mean must come
    from the remaining scores only."""
    df = train.frame.copy()
    e = "cognitivecomputations/dolphin-2.9-llama3-8b"
    rows = df.index[df["expert"] == e]
    drop = rows[: int(len(rows) * 0.7)]
    df.loc[drop, "score"] = np.nan
    from composer.outcomes import OutcomeTable

    holes = OutcomeTable(df, "holes")
    kept = df.loc[rows.difference(drop), "score"].mean()
    for name in ("best_single", "knn", "linear", "logistic", "mlp", "mf", "coe", "symbolic"):
        r = make_router(name, **FAST.get(name, {})).use_embedder(embedder).fit(holes)
        assert r.train_means_[r.experts_.index(e)] == pytest.approx(kept)
        S = r.predict_scores(test_prompts)
        assert np.isfinite(S).all(), name


def test_knn_auto_picks_k_by_leave_one_out(train, embedder):
    r = make_router("knn", k_grid=(5, 20, 50)).use_embedder(embedder).fit(train)
    assert set(r.loo_scores_) == {5, 20, 50}
    assert r.k_ == max(r.loo_scores_, key=r.loo_scores_.get)
    assert make_router("knn", n_neighbors=7).use_embedder(embedder).fit(train).k_ == 7
