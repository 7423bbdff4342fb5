"""The stacked router on real RouterDC outcomes and the real embedder: out-of-fold stacking, the
task prior, the margin rule, and save/load."""

from __future__ import annotations

import numpy as np
import pytest
from routers_helpers import embedder, multitask  # noqa: F401 - fixture

from composer.errors import RoutingError
from composer.routers import Router, make_router
from composer.routers.stack import TaskPrior

@pytest.fixture(scope="module")
def tables():
    return multitask("train"), multitask("test")


@pytest.fixture(scope="module")
def fitted(tables, embedder):
    train, _ = tables
    return make_router("stack").use_embedder(embedder).fit(train)


def test_task_prior_picks_each_task_s_best_expert(tables, embedder):
    train, test = tables
    X = embedder.encode(train.prompts())
    Y = train.credit_matrix().to_numpy(float)
    labels = np.asarray(train.task_of().tolist())
    prior = TaskPrior().fit(X, Y, labels)
    P = prior.proba(embedder.encode(test.prompts()))
    truth = np.asarray(test.task_of().tolist())
    assert (prior.classes[P.argmax(1)] == truth).mean() > 0.9  # the task is easy to tell from the prompt
    best = {t: int(np.argmax(prior.A[i])) for i, t in enumerate(prior.classes)}
    pick = prior.predict(embedder.encode(test.prompts())).argmax(1)
    agree = np.mean([pick[i] == best[t] for i, t in enumerate(truth)])
    assert agree > 0.85


def test_stack_learns_meta_weights_and_beats_random(fitted, tables, embedder):
    from composer.evals.router_eval import evaluate

    train, test = tables
    assert fitted.meta_coef_.shape == (len(fitted.experts_), 3)
    # the meta-model trusts the bases: positive weight on at least one of them for every expert
    assert (fitted.meta_coef_.max(axis=1) > 0).all()
    res = evaluate(train, test, ["random", "stack"], embedder=embedder, sweep=False, progress=lambda m: None)
    r = res["routers"]
    assert r["stack"]["default"]["task_average"] > r["random"]["default"]["task_average"]


def test_margin_keeps_the_prior_choice_unless_clearly_beaten(fitted, tables, embedder):
    _, test = tables
    prompts = test.prompts()
    X = embedder.encode(prompts)
    prior_pick = fitted._prior().predict(X).argmax(1)
    default = fitted.margin
    try:
        fitted.set_params(margin=0.0)
        plain = fitted.predict_scores(prompts).argmax(1)
        fitted.set_params(margin=1.0)
        forced = fitted.predict_scores(prompts).argmax(1)
    finally:
        fitted.set_params(margin=default)
    assert (forced == prior_pick).all()  # scores are in [0, 1]: a bonus of 1 always wins
    assert (plain != prior_pick).any()   # without it the stack does leave the prior somewhere


def test_save_load_round_trip(fitted, tables, embedder, tmp_path):
    _, test = tables
    prompts = test.prompts()[:20]
    S = fitted.predict_scores(prompts)
    fitted.save(tmp_path / "stack")
    back = Router.load(tmp_path / "stack").use_embedder(embedder)
    np.testing.assert_allclose(back.predict_scores(prompts), S, rtol=1e-6, atol=1e-9)


def test_bad_bases_are_refused(tables, embedder):
    train, _ = tables
    with pytest.raises(RoutingError, match="bases"):
        make_router("stack", bases=["knn", "gpt"]).use_embedder(embedder).fit(train)
