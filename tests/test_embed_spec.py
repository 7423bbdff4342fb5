"""Embedding specs: a model plus `?layers=N&max_seq=M`, what the learned routers embed with."""

from __future__ import annotations

import numpy as np
import pytest

from composer.errors import RoutingError
from composer.routers.base import Router, make_router
from composer.routers.embed import DEFAULT_EMBEDDING, ROUTING_EMBEDDING, Embedder, parse_spec


def test_spec_parses_options_and_keys_the_cache_apart():
    assert parse_spec(DEFAULT_EMBEDDING) == ("embedded:all-minilm-l6-v2", {})
    assert parse_spec("embedded:all-minilm-l6-v2?layers=3&max_seq=128") == (
        "embedded:all-minilm-l6-v2", {"layers": 3, "max_seq": 128})
    full, short = Embedder(DEFAULT_EMBEDDING), Embedder(DEFAULT_EMBEDDING + "?layers=2&max_seq=64")
    assert full.model_id == "embedded:all-minilm-l6-v2|max_seq=256"  # unchanged: old caches stay valid
    assert short.model_id == "embedded:all-minilm-l6-v2|max_seq=64|layers=2"
    assert short.max_seq_length == 64 and short.layers == 2


@pytest.mark.parametrize("spec, words", [
    ("embedded:all-minilm-l6-v2?depth=3", "unknown option 'depth'"),
    ("embedded:all-minilm-l6-v2?layers=0", "layers='0' must be a positive integer"),
    ("embedded:all-minilm-l6-v2?layers=three", "must be a positive integer"),
    ("embedded:all-minilm-l6-v2?layers", "key=value pairs"),
    ("?layers=2", "no model before '?'"),
])
def test_bad_specs_are_refused_naming_the_option(spec, words):
    with pytest.raises(RoutingError, match=words.replace("(", r"\(").replace("?", r"\?")):
        Embedder(spec)


def test_more_layers_than_the_model_has_is_refused():
    with pytest.raises(RoutingError, match="layers=9, but the model has 6"):
        Embedder(DEFAULT_EMBEDDING + "?layers=9").load()


def test_fewer_layers_give_other_unit_vectors_and_the_single_text_path_agrees():
    texts = ["What is the derivative of x^2?", "Translate 'good morning' into French.",
             "word " * 300]  # the last one is cut at max_seq
    full, short = Embedder(DEFAULT_EMBEDDING, cache=False), Embedder(ROUTING_EMBEDDING, cache=False)
    A, B = full.encode(texts), short.encode(texts)
    assert A.shape == B.shape == (3, 384)
    assert np.allclose(np.linalg.norm(B, axis=1), 1.0, atol=1e-5)
    assert (np.abs(A - B).max(axis=1) > 1e-3).all()  # really another model
    assert short._st[0].auto_model.config.num_hidden_layers == int(parse_spec(ROUTING_EMBEDDING)[1]["layers"])
    one = Embedder(ROUTING_EMBEDDING, cache=False)
    assert np.allclose(np.stack([one.encode([t])[0] for t in texts]), B, atol=1e-5)  # fast path == batch path


def test_a_router_keeps_its_spec_and_refuses_another_specs_embedder(tmp_path):
    r = make_router("mlp")
    assert r.embedding_model == ROUTING_EMBEDDING  # the learned routers' default
    assert make_router("symbolic").embedding_model == DEFAULT_EMBEDDING  # similarity keeps the full model
    full = Embedder(DEFAULT_EMBEDDING)
    r.use_embedder(full)
    assert r.embedder is not full and r.embedder.model_id == Embedder(ROUTING_EMBEDDING).model_id
    same = Embedder(ROUTING_EMBEDDING)
    assert make_router("knn").use_embedder(same).embedder is same
    # a router saved with the full model's spec is loaded with it
    old = make_router("knn", embedding_model=DEFAULT_EMBEDDING)
    old.experts_, old.train_means_, old.expert_costs_ = ["a"], np.zeros(1), np.zeros(1)
    old.X_, old.Y_, old.k_ = np.zeros((1, 384), np.float32), np.zeros((1, 1)), 1
    old.save(tmp_path / "r")
    assert Router.load(tmp_path / "r").embedding_model == DEFAULT_EMBEDDING
