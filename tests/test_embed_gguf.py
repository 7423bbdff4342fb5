"""Embedding specs that name a GGUF model: a decoder LLM's mean-pooled hidden states (llama.cpp),
with the shipped SmolLM2-135M-Instruct."""

from __future__ import annotations

import numpy as np
import pytest

from composer.errors import RoutingError
from composer.routers.base import make_router
from composer.routers.embed import Embedder

SMOL = "embedded:smollm2-135m-instruct?max_seq=64"
TEXTS = ["What is the derivative of x^2?", "Translate 'good morning' into French.",
         "def add(a, b):\n    return a + b", "word " * 200]  # the last one is cut at max_seq


@pytest.fixture(scope="module")
def smol():
    e = Embedder(SMOL, cache=False)
    yield e
    e.close()


def test_gguf_spec_gives_unit_vectors_of_the_models_width_one_text_or_many(smol):
    X = smol.encode(TEXTS)
    assert X.shape == (4, 576) and smol.dim == 576  # SmolLM2-135M's hidden size
    assert np.allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert np.abs(X[:, None] - X[None]).max(axis=2)[~np.eye(4, dtype=bool)].min() > 1e-2  # texts differ
    again = np.stack([Embedder(SMOL, cache=False).encode([t])[0] for t in TEXTS[:2]])
    assert np.allclose(again, X[:2], atol=1e-4)  # deterministic, one text at a time == a list
    assert smol.model_id == "embedded:smollm2-135m-instruct|max_seq=64"  # its own cache key


def test_gguf_spec_refuses_layers_naming_the_spec():
    with pytest.raises(RoutingError, match=r"'layers' needs a BERT-style .* GGUF model"):
        Embedder("embedded:smollm2-135m-instruct?layers=2").load()


def test_a_learned_router_trains_and_routes_on_gguf_vectors(smol, tmp_path):
    from composer.outcomes import OutcomeTable

    rows = []
    for i in range(12):
        math = i % 2 == 0
        q = f"Compute {i} + {i + 3} and explain." if math else f"Write a short poem about the number {i}."
        rows += [{"query_id": f"q{i}", "prompt": q, "expert": "mathy", "score": 1.0 if math else 0.0},
                 {"query_id": f"q{i}", "prompt": q, "expert": "poet", "score": 0.0 if math else 1.0}]
    table = OutcomeTable.from_records(rows)
    r = make_router("knn", k=3, embedding_model=SMOL).use_embedder(smol).fit(table)
    assert r.embedder is smol
    picks = r.route(["Compute 20 + 23 and explain.", "Write a short poem about the number 40."])
    assert [p.experts[0] for p in picks] == ["mathy", "poet"]
    r.save(tmp_path / "knn")
    back = type(r).load(tmp_path / "knn")
    assert back.embedding_model == SMOL
