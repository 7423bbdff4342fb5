"""Symbolic-MoE, CoE, dynamic top-p and cascade behaviour on real outcomes with the real embedder."""

from __future__ import annotations

import numpy as np
import pytest
from routers_helpers import embedder, multitask  # noqa: F401 - fixture

from composer.errors import RoutingError
from composer.routers import make_router

MATH = {"meta-math/MetaMath-Mistral-7B", "cognitivecomputations/dolphin-2.6-mistral-7b"}


@pytest.fixture(scope="module")
def train():
    return multitask("train")


@pytest.fixture(scope="module")
def test():
    return multitask("test")


def test_symbolic_recruits_k_experts_with_an_aggregator(train, test, embedder):
    r = make_router("symbolic", k=3, min_share=0.0).use_embedder(embedder).fit(train)
    assert r.profile_.shape == (len(r.vocab_), len(r.experts_))
    d = r.route(["Janet has 3 apples and buys 5 more. How many apples does she have?"])[0]
    assert len(d.experts) == 3 and len(set(d.experts)) == 3
    assert d.aggregator == "moa" and d.aggregator_expert == r.experts_[int(np.argmax(r.train_means_))]
    assert "skills:" in d.reason and "arithmetic word problems" in d.reason
    # arithmetic skills profile: the math-tuned experts lead it
    j = r.vocab_.index("arithmetic word problems")
    assert r.experts_[int(np.argmax(r.profile_[j]))] in MATH
    one = r.route(["x"], k=1)[0]
    assert len(one.experts) == 1 and one.aggregator is None


def test_symbolic_min_share_drops_weak_recruits(train, embedder):
    r = make_router("symbolic", k=3, min_share=0.2, temperature=0.001).use_embedder(embedder).fit(train)
    assert len(r.route(["Solve: 12 * 7 - 5 = ?"])[0].experts) == 1  # a sharp distribution keeps one


def test_symbolic_custom_vocabulary(train, embedder):
    vocab = ["math word problems", "writing python code", "general knowledge"]
    r = make_router("symbolic", vocabulary=vocab, n_skills=1, k=1).use_embedder(embedder).fit(train)
    d = r.route(["def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\""])[0]
    assert r.vocab_ == vocab and "skills: writing python code" in d.reason


def test_coe_predicts_the_task_category(train, test, embedder):
    r = make_router("coe").use_embedder(embedder).fit(train)
    assert r.kind_ == "task" and r.category_names_ == sorted(train.tasks)
    P = r._proba(r.embedder.encode(test.prompts()))
    predicted = np.array(r.category_names_)[P.argmax(axis=1)]
    assert (predicted == np.array(test.task_of().tolist())).mean() > 0.85
    d = r.route(["Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                 "clips in May. How many clips did Natalia sell altogether in April and May?"])[0]
    assert "category 'gsm8k'" in d.reason and d.experts[0] in MATH


def test_coe_falls_back_to_clusters_on_one_task(train, embedder):
    one = train.filter(tasks=["mmlu"])
    r = make_router("coe", n_clusters=4).use_embedder(embedder).fit(one)
    assert r.kind_ == "cluster" and len(r.category_names_) == 4
    assert np.isclose(r.category_sizes_.sum(), one.n_queries)
    with pytest.raises(RoutingError, match="categories"):
        make_router("coe", categories="topic").use_embedder(embedder).fit(one)


def test_dynamic_top_p_sets_the_number_of_experts(train, test, embedder):
    r = make_router("dynamic", top_p=0.0).use_embedder(embedder).fit(train)
    q = test.prompts()
    assert {len(d.experts) for d in r.route(q)} == {1}
    r.set_params(top_p=0.999, temperature=10.0, max_experts=3)
    ds = r.route(q)
    assert {len(d.experts) for d in ds} == {3} and all(d.aggregator == "vote" for d in ds)
    r.set_params(top_p=0.6, temperature=0.02)
    sizes = [len(d.experts) for d in r.route(q)]
    assert 1 <= min(sizes) and max(sizes) <= 3
    S = r.predict_scores(q)
    first = [r.experts_.index(d.experts[0]) for d in r.route(q)]
    np.testing.assert_allclose(S[np.arange(len(q)), first], S.max(axis=1))  # the best predicted leads


def test_cascade_thresholds_and_escalation(train, test, embedder):
    r = make_router("cascade", threshold=-1.0).use_embedder(embedder).fit(train)
    chain = r.chain()
    assert len(chain) == len(r.experts_)
    q = test.prompts()
    assert {d.experts[0] for d in r.route(q)} == {chain[0]}          # everyone is confident enough
    r.set_params(threshold=2.0)                                        # nobody is: the best prediction
    S = r.predict_scores(q)
    picked = [r.experts_.index(d.experts[0]) for d in r.route(q)]
    np.testing.assert_allclose(S[np.arange(len(q)), picked], S.max(axis=1))  # ties: either is fine
    r.set_params(threshold=0.5)
    d = r.route(q[:1])[0]
    assert d.reason.startswith("cascade ") and "threshold 0.5" in d.reason
    assert r.escalate([chain[0]], confidence=0.9) is None
    assert r.escalate([chain[0]], confidence=0.1) == chain[1]
    assert r.escalate(chain, confidence=0.1) is None                   # nothing left to try
    assert r.escalate([], confidence=0.1) == chain[0]
