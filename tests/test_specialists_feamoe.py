"""FEAMOE on real fairness data: contract, fairness penalty, drift adaptation, exact Shapley, I/O."""

from __future__ import annotations

import numpy as np
import pytest

from composer.errors import BadRequestError, ComposerError, NotFittedError
from composer.specialists.data import load_adult, load_compas
from composer.specialists.feamoe import FEAMOE, fairness_gap
from composer.specialists.shapley import shapley_bruteforce, shapley_from_values


@pytest.fixture(scope="module")
def adult():
    return load_adult()


@pytest.fixture(scope="module")
def compas():
    return load_compas()


@pytest.fixture(scope="module")
def adult_model(adult):
    """3 experts with a softmax gate on 4,000 Adult rows (11 raw features = 11 players)."""
    X, y, s = adult.X_train.iloc[:4000], adult.y_train[:4000], adult.s_train[:4000]
    return FEAMOE(schema=adult.schema, n_experts=3, fairness_weight=0.5, max_iter=60).fit(X, y, s)


def test_contract(compas):
    m = FEAMOE(schema=compas.schema)
    assert m.get_params()["penalty"] == "dp" and not hasattr(m, "W_")
    with pytest.raises(NotFittedError):
        m.predict(compas.X_test)
    with pytest.raises(ValueError, match="penalty"):
        FEAMOE(penalty="parity").fit(compas.schema.encode(compas.X_train), compas.y_train, compas.s_train)
    fitted = m.fit(compas.X_train, compas.y_train, compas.s_train)
    assert fitted is m and m.n_experts_ == 2 and list(m.classes_) == [0, 1]
    proba = m.predict_proba(compas.X_test)
    assert proba.shape == (len(compas.y_test), 2) and np.allclose(proba.sum(1), 1)
    assert np.allclose(m.gate_weights(compas.X_test).sum(1), 1)
    assert m.score(compas.X_test, compas.y_test) > 0.6
    X = np.random.default_rng(0).normal(size=(60, 9))
    arrays = FEAMOE(max_iter=10).fit(X, (X[:, 0] > 0).astype(int), ["a", "b"] * 30)
    with pytest.raises(BadRequestError, match="expected 9 columns"):
        arrays.predict(np.zeros((2, 4)))


@pytest.mark.parametrize("penalty", ["dp", "eo", "eopp"])
def test_fairness_penalty_shrinks_the_gap(compas, penalty):
    X, y, s = compas.X_train, compas.y_train, compas.s_train
    plain = FEAMOE(schema=compas.schema, fairness_weight=0.0).fit(X, y, s)
    fair = FEAMOE(schema=compas.schema, penalty=penalty, fairness_weight=1.0).fit(X, y, s)
    gap = lambda m: fairness_gap(y, m.predict(X), s, penalty)  # noqa: E731
    assert gap(fair) < 0.6 * gap(plain)
    report = fair.fairness_report(compas.X_test, compas.y_test, compas.s_test)
    assert set(report) == {"accuracy", "dp", "eo", "eopp"}


def test_exact_shapley_matches_bruteforce(adult, adult_model):
    m = adult_model
    rows = adult.X_test.iloc[:4]
    X = adult.schema.encode(rows)
    f = lambda Z: m.predict_proba(Z)[:, 1]  # noqa: E731
    groups = m.groups()
    assert len(groups) == 11
    for baseline in (None, adult.X_train.iloc[7].to_dict()):
        phi = m.explain(rows, baseline=baseline)
        b = m.baseline_vector(baseline)
        ref = np.array([shapley_bruteforce(f, X[i], b, groups) for i in range(len(X))])
        assert np.abs(phi - ref).max() <= 1e-6
        assert np.allclose(phi.sum(1), f(X) - m.expected_value(baseline), atol=1e-10)  # efficiency


def test_gate_linear_is_exact_only_for_the_frozen_gate_game(adult, adult_model):
    m = adult_model
    rows = adult.X_test.iloc[:3]
    X, b = adult.schema.encode(rows), m.baseline_vector()
    lin = m.explain(rows, method="gate_linear")
    gate = m.gate_weights(X)
    for i in range(len(X)):
        frozen = lambda Z, g=gate[i]: (Z @ m.W_.T + m.b_) @ g  # noqa: E731
        assert np.abs(lin[i] - shapley_bruteforce(frozen, X[i], b, m.groups())).max() <= 1e-9
    # With a feature-dependent gate it is not the Shapley value of P(y=1|x) (other units, too).
    assert np.abs(lin - m.explain(rows)).max() > 1e-3


def test_shapley_formula_on_a_known_game():
    # v(S) = 1 if both players are in S (a pure interaction): each gets 1/2.
    values = np.array([[0.0, 0.0, 0.0, 1.0]])
    assert np.allclose(shapley_from_values(values), [[0.5, 0.5]])
    # additive game: each player gets its own term
    w = np.array([1.0, -2.0, 3.0])
    from composer.specialists.shapley import coalition_masks

    assert np.allclose(shapley_from_values((coalition_masks(3) @ w)[None]), [w])


def test_too_many_players_is_refused(compas):
    X = np.random.default_rng(0).normal(size=(200, 22))
    y = (X[:, 0] > 0).astype(int)
    m = FEAMOE(n_experts=1, max_iter=20).fit(X, y, np.where(X[:, 1] > 0, "a", "b"))
    with pytest.raises(ComposerError, match="gate_linear"):
        m.explain(X[:1])
    assert m.explain(X[:1], method="gate_linear").shape == (1, 22)


def test_partial_fit_adapts_to_covariate_shift(adult):
    X, y, s = adult.X_train, adult.y_train, adult.s_train
    young = (X["age"] <= 30).to_numpy()
    old = np.flatnonzero((adult.X_test["age"] >= 45).to_numpy())[:1500]
    kw = dict(schema=adult.schema, n_experts=2, fairness_weight=1.0, max_iter=60, update_iter=40)
    static = FEAMOE(**kw).fit(X[young].iloc[:5000], y[young][:5000], s[young][:5000])
    adaptive = FEAMOE(**kw).fit(X[young].iloc[:5000], y[young][:5000], s[young][:5000])
    Xo, yo, so = adult.X_test.iloc[old], adult.y_test[old], adult.s_test[old]
    for i in range(0, 1000, 500):
        adaptive.partial_fit(Xo.iloc[i:i + 500], yo[i:i + 500], so[i:i + 500])
    log = adaptive.drift_log_
    assert log[0]["drift_accuracy"] and log[0]["action"] == "add_expert"
    assert adaptive.n_experts_ >= 3
    tail = slice(1000, 1500)  # not yet seen by either model
    assert adaptive.score(Xo.iloc[tail], yo[tail]) > static.score(Xo.iloc[tail], yo[tail]) + 0.03


def test_save_load_round_trip(tmp_path, adult, adult_model):
    path = adult_model.save(tmp_path / "f.json")
    back = FEAMOE.load(path)
    rows = adult.X_test.iloc[:20]
    assert np.array_equal(back.predict_proba(rows), adult_model.predict_proba(rows))
    assert np.array_equal(back.explain(rows), adult_model.explain(rows))
    assert back.schema == adult_model.schema and back.reference_ == adult_model.reference_
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ComposerError, match="not a FEAMOE artifact"):
        FEAMOE.load(tmp_path / "x.json")
