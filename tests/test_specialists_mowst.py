"""Mowst on the real Cora graph (short training): contract, gating, exact subgraph inference, I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from composer.errors import BadRequestError, ComposerError, NotFittedError
from composer.specialists.data import load_planetoid
from composer.specialists.mowst import Mowst
from composer.specialists.mowst_nn import _modules, dispersion

SHORT = dict(pretrain_epochs=40, epochs=10, patience=5, rounds=1)


@pytest.fixture(scope="module")
def cora():
    return load_planetoid("cora")


@pytest.fixture(scope="module")
def fitted(cora):
    return Mowst(graph=cora, gnn="gcn", seed=0, **SHORT).fit(cora.train_idx, X_val=cora.val_idx)


def test_dispersion_bounds():
    onehot = torch.tensor([[50.0, 0.0, 0.0, 0.0]])
    uniform = torch.zeros((1, 4))
    for kind in ("variance", "entropy"):
        assert dispersion(onehot, kind).item() == pytest.approx(1.0, abs=1e-6)
        assert dispersion(uniform, kind).item() == pytest.approx(0.0, abs=1e-6)
        mid = dispersion(torch.tensor([[2.0, 1.0, 0.0, 0.0]]), kind).item()
        assert 0 < mid < 1
    with pytest.raises(ValueError):
        dispersion(uniform, "gini")


def test_unfitted_and_bad_params(cora):
    m = Mowst(graph=cora)
    with pytest.raises(NotFittedError):
        m.predict([0, 1])
    assert m.get_params()["gnn"] == "gcn" and not hasattr(m, "mlp_")  # __init__ only stores
    with pytest.raises(ValueError, match="gnn"):
        Mowst(graph=cora, gnn="gnn9").fit(cora.train_idx)
    with pytest.raises(ValueError, match="graph"):
        Mowst().fit([0, 1])


def test_fit_returns_self_and_beats_the_mlp(cora, fitted):
    assert isinstance(fitted, Mowst)
    assert list(fitted.classes_) == list(range(7)) and 0 <= fitted.threshold_ <= 1.01
    assert fitted.history_[0]["turn"] == "start" and len(fitted.history_) >= 2
    te = cora.test_idx
    acc = fitted.score(te)
    mlp = (fitted.predict_expert(te, "mlp_alone") == cora.y[te]).mean()
    gnn = (fitted.predict_expert(te, "gnn_alone") == cora.y[te]).mean()
    assert gnn > mlp + 0.1  # Cora: neighbourhoods matter
    assert acc > mlp + 0.1 and acc > 0.7


def test_predict_details_follow_the_confidence_rule(cora, fitted):
    nodes = cora.test_idx[:300]
    labels, expert, conf = fitted.predict(nodes, return_details=True)
    assert labels.shape == expert.shape == conf.shape == (300,)
    assert set(expert) <= {"mlp", "gnn"} and ((0 <= conf) & (conf <= 1)).all()
    assert np.array_equal(expert == "mlp", conf >= fitted.threshold_)
    proba = fitted.predict_proba(nodes)
    assert np.allclose(proba.sum(1), 1, atol=1e-5) and np.array_equal(proba.argmax(1), labels)
    assert np.allclose(fitted.confidence_of(nodes), conf)
    # Each node's answer is its expert's own answer.
    mlp_only = fitted.predict_expert(nodes, "mlp")
    gnn_only = fitted.predict_expert(nodes, "gnn")
    assert np.array_equal(labels, np.where(expert == "mlp", mlp_only, gnn_only))


def test_gnn_runs_only_on_the_needed_subgraph(tmp_path, cora, fitted):
    m = Mowst.load(fitted.save(tmp_path / "copy.pt"))
    m.threshold_ = 0.0  # every node confident: the GNN must not run
    m.__dict__.pop("last_subgraph_size_", None)
    _, expert, _ = m.predict(cora.test_idx[:50], return_details=True)
    assert set(expert) == {"mlp"} and not hasattr(m, "last_subgraph_size_")
    m.threshold_ = 1.01  # no node confident: GNN on the 2-hop subgraph of the 5 nodes only
    _, expert, _ = m.predict(cora.test_idx[:5], return_details=True)
    assert set(expert) == {"gnn"} and 5 <= m.last_subgraph_size_ < cora.num_nodes // 4


@pytest.mark.parametrize("gnn", ["gcn", "sage", "gat", "gin"])
def test_subgraph_inference_is_exact(cora, gnn):
    m = Mowst(graph=cora, gnn=gnn, pretrain_epochs=3, epochs=1, rounds=1).fit(cora.train_idx[:70])
    nodes = np.array([0, 5, 633, 1701, 2707])
    sub = m._gnn_logits(nodes)
    full = m._gnn_logits_full(nodes)
    assert torch.allclose(sub, full, atol=1e-5)


@pytest.mark.parametrize("gnn", ["gcn", "sage", "gin"])
def test_first_layer_equals_the_pyg_layer_on_dense_input(cora, gnn):
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    from composer.specialists.mowst_nn import _csr

    _, GNN, _ = _modules()
    torch.manual_seed(0)
    model = GNN(gnn, cora.num_features, 16, cora.num_classes, 0.5).eval()
    ei = torch.from_numpy(cora.edge_index)
    ew = None
    if gnn == "gcn":
        ei, ew = gcn_norm(ei, None, cora.num_nodes, add_self_loops=True)
    if gnn == "gin":
        model.conv1.eps.data.fill_(0.3)  # a trained eps, not the initial 0
    ours = model.first_layer((_csr(cora.x), None), ei, ew)
    dense = torch.from_numpy(cora.x.toarray())
    ref = model.conv1(dense, ei, ew) if gnn == "gcn" else model.conv1(dense, ei)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_unknown_node_ids_name_the_position(fitted):
    with pytest.raises(BadRequestError, match=r"X\[1\]: unknown node id 5000"):
        fitted.predict([3, 5000])
    with pytest.raises(BadRequestError, match=r"X\[0\]: unknown node id -1"):
        fitted.predict([-1])
    with pytest.raises(BadRequestError, match="integer node ids"):
        fitted.predict(["a"])


def test_save_load_round_trip(tmp_path, cora, fitted):
    path = fitted.save(tmp_path / "m.pt")
    back = Mowst.load(path)
    nodes = cora.test_idx
    a, b = fitted.predict(nodes, return_details=True), back.predict(nodes, return_details=True)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2])) and np.allclose(a[2], b[2])
    assert back.threshold_ == fitted.threshold_ and back.graph.name == "cora"
    assert back.graph.x.shape == cora.x.shape
    torch.load(path, weights_only=True)  # loadable without unpickling code
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ComposerError, match="not a Mowst artifact"):
        Mowst.load(tmp_path / "bad.pt")
    with pytest.raises(ComposerError, match="not found"):
        Mowst.load(tmp_path / "missing.pt")


def test_sign_test_p_values():
    from composer.specialists.mowst import sign_test_p

    assert sign_test_p(0, 0) == 1.0 and sign_test_p(2, 2) == 1.0 and sign_test_p(1, 3) == 1.0
    assert sign_test_p(1, 0) == 0.5 and sign_test_p(3, 0) == 0.125
    assert sign_test_p(4, 1) == pytest.approx(6 / 32)  # P(X >= 4), X ~ Bin(5, 1/2)


def test_threshold_needs_evidence_to_give_the_mlp_nodes():
    from composer.specialists.mowst import _best_threshold

    conf = np.array([0.99, 0.98, 0.2, 0.1, 0.1, 0.1])
    gnn_ok = np.array([False, True, True, True, False, True])
    mlp_ok = np.array([True, True, False, False, False, False])
    # The MLP wins one node among its confident ones: a gain of 1/6 on validation.
    acc, tau = _best_threshold(conf, mlp_ok, gnn_ok, "auto", evidence=1.0)
    assert 0.2 < tau <= 0.99 and acc == pytest.approx(5 / 6)  # confident nodes only
    # One node is no evidence at p <= 0.05: every node goes to the GNN.
    acc, tau = _best_threshold(conf, mlp_ok, gnn_ok, "auto", evidence=0.05)
    assert tau == 1.01 and acc == pytest.approx(4 / 6)
    # A fixed threshold is taken as given.
    assert _best_threshold(conf, mlp_ok, gnn_ok, 0.5, evidence=0.05)[1] == 0.5


def test_distilled_weak_expert_learns_from_the_gnn(cora, fitted):
    # Real Cora, short training: the MLP distilled from the GNN's predictions on all nodes (it
    # still sees only each node's own features) is far better than the MLP trained on 140 labels.
    val = fitted.alone_val_
    assert set(val) == {"gnn", "mlp", "mlp_distilled"}
    assert val["mlp_distilled"] > val["mlp"] + 0.05
    plain = Mowst(graph=cora, seed=0, weak="plain", **SHORT).fit(cora.train_idx, X_val=cora.val_idx)
    assert "mlp_distilled" not in plain.alone_val_
    with pytest.raises(ValueError, match="weak"):
        Mowst(graph=cora, weak="teacher").fit(cora.train_idx)
    with pytest.raises(ValueError, match="pretrain"):
        Mowst(graph=cora, pretrain="none").fit(cora.train_idx)
    with pytest.raises(ValueError, match="evidence"):
        Mowst(graph=cora, evidence=2).fit(cora.train_idx)
