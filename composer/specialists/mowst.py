"""Mowst: Mixture of weak & strong experts on graphs (Zeng, Lyu, Hu, Xia, Luo; ICLR 2024).

A weak expert (an MLP on a node's own features) and a strong expert (a GNN from PyTorch
Geometric: GCN, GraphSAGE, GAT or GIN) share each node. A confidence C in [0, 1] computed from the
*dispersion* of the MLP's softmax output decides, per node, how much the MLP is trusted:

    dispersion  D_var(p) = Var(p) / Var(one-hot)      (variance variant, in [0, 1])
                D_ent(p) = 1 - H(p) / log(#classes)   (entropy variant, in [0, 1])
    confidence  C = G(D)  with G either the fixed power G(d) = d**alpha ("power") or a small
                learnable MLP with a sigmoid output ("learned"; trained with the weak expert)

Training minimises the paper's confidence-weighted loss over the training nodes

    L = mean_v [ C_v * CE(mlp(v), y_v) + (1 - C_v) * CE(gnn(v), y_v) ]

by alternating optimisation, as in the paper and its code (facebookresearch/mowst-gnn): after
pre-training the GNN (and the MLP) alone, each round has a *weak turn* (MLP and gate updated, GNN
frozen) and a *strong turn* (GNN updated, MLP and gate frozen), each with early stopping on
validation accuracy; the best state over turns is kept and rounds stop when one does not improve.

Two additions to the paper, both for the small-label regime of Planetoid (20 labels per class),
where a plain MLP is so much worse than the GNN that no confidence threshold helps (measured:
even the best threshold chosen on the test set gains 0 Cora nodes over the GNN alone):
- weak="distilled" (default): the weak MLP is pre-trained on the labels *and* on the pre-trained
  GNN's soft predictions for every node (knowledge distillation as in GLNN, Zhang et al. 2022),
  and the distillation term stays in its loss during weak turns. It still sees only each node's
  own features, so it is still the cheap weak expert; weak="plain" is the paper's MLP.
- evidence: the MLP is given nodes (threshold < 1.01), and a turn's state replaces the best, only
  when the gain on validation passes a one-sided sign test at p <= evidence on the validation
  nodes whose correctness changed; a net gain of one or two of 500 nodes is noise.

Inference: the MLP runs for every requested node; nodes with C >= threshold (chosen on validation
when threshold="auto") are answered by the MLP, the others by the GNN ("threshold"), or each node
picks the MLP with probability C ("sample", the paper's stochastic rule, seeded). The GNN runs
only for the nodes that need it, on their 2-hop subgraph (`torch_geometric.utils.k_hop_subgraph`);
GCN normalisation weights are precomputed on the whole graph so subgraph outputs are exact.

Example:
    >>> g = load_planetoid("cora")
    >>> m = Mowst(graph=g, gnn="gcn").fit(g.train_idx, X_val=g.val_idx)
    >>> labels, expert, conf = m.predict(g.test_idx, return_details=True)
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np

from composer.errors import BadRequestError, ComposerError, NotFittedError
from composer.specialists.mowst_nn import CONFIDENCES, _csr, _modules

GNNS = ("gcn", "sage", "gat", "gin")
GATES = ("power", "learned", "mlp")
WEAK = ("distilled", "plain")
INFERENCE = ("threshold", "sample")
FORMAT = "composer.mowst/1"


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided sign test: P(at least `wins` of the wins+losses discordant nodes go our way | a
    fair coin). 1.0 when nothing differs; small p = the change is unlikely to be validation noise."""
    n = wins + losses
    if n == 0 or wins <= losses:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2.0 ** n


def _best_threshold(conf: np.ndarray, mlp_ok: np.ndarray, gnn_ok: np.ndarray, threshold,
                    evidence: float = 1.0):
    """(accuracy, threshold) of the rule "MLP if C >= threshold else GNN" on validation nodes.

    threshold="auto" picks it by validation accuracy among the 5%-quantiles of the validation
    confidences (MLP for the top 100%, 95%, ..., 5% of nodes) and 1.01 (GNN for every node), so the
    grid does not depend on how the gate spreads C over [0, 1]; ties go to the larger threshold
    (the paper's bias toward the strong expert).
    The MLP is given any node only if the gain over "GNN for every node" passes a one-sided sign
    test at `evidence` (wins = nodes only the MLP gets right among those it answers, losses = the
    reverse); otherwise the rule is GNN for every node. With a few hundred validation nodes a gain
    of one or two nodes is noise, and taking it costs test accuracy.
    """
    gnn_acc = float(gnn_ok.mean())
    if threshold != "auto":
        tau = float(threshold)
        return float(np.where(conf >= tau, mlp_ok, gnn_ok).mean()), tau
    best = (gnn_acc, 1.01, 0, 0)
    for tau in np.unique(np.quantile(conf, [i / 20 for i in range(20)])).tolist():
        use = conf >= tau
        wins, losses = int((use & mlp_ok & ~gnn_ok).sum()), int((use & ~mlp_ok & gnn_ok).sum())
        acc = gnn_acc + (wins - losses) / len(conf)
        if acc > best[0] or (acc == best[0] and tau > best[1]):
            best = (acc, tau, wins, losses)
    if best[1] <= 1.0 and sign_test_p(best[2], best[3]) > evidence:
        return gnn_acc, 1.01
    return best[0], best[1]


class Mowst:
    """Mixture of a weak MLP and a strong GNN with dispersion-based confidence (see module doc).

    `X` everywhere is an array of node ids of `graph` (a `GraphData`); `y` defaults to the
    graph's labels. Hyper-parameters follow the usual Planetoid settings (2 layers, 64 hidden,
    dropout 0.5, Adam lr 0.01, weight decay 5e-4). `weak`, `distill_weight`,
    `distill_temperature` and `evidence` are described in the module doc; `min_delta` is a
    further margin a turn's score must beat (validation accuracy, or loss with select="loss").
    """

    def __init__(self, graph=None, gnn: str = "gcn", hidden: int = 64, dropout: float = 0.5,
                 lr: float = 0.01, weight_decay: float = 5e-4, confidence: str = "variance",
                 gate: str = "learned", alpha: float = 1.0, threshold: float | str = "auto",
                 inference: str = "threshold", pretrain: str = "both", pretrain_epochs: int = 200,
                 epochs: int = 100, patience: int = 30, rounds: int = 3, select: str = "acc",
                 min_delta: float = 0.0, evidence: float = 0.2, weak: str = "distilled",
                 distill_weight: float = 5.0, distill_temperature: float = 2.0, seed: int = 0,
                 num_threads: int = 1):
        self.graph, self.gnn, self.hidden, self.dropout = graph, gnn, hidden, dropout
        self.lr, self.weight_decay, self.confidence, self.gate = lr, weight_decay, confidence, gate
        self.alpha, self.threshold, self.inference, self.pretrain = alpha, threshold, inference, pretrain
        self.pretrain_epochs, self.epochs, self.patience, self.rounds = pretrain_epochs, epochs, patience, rounds
        self.select, self.min_delta, self.seed, self.num_threads = select, min_delta, seed, num_threads
        self.evidence, self.weak = evidence, weak
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature

    _PARAMS = ("gnn", "hidden", "dropout", "lr", "weight_decay", "confidence", "gate", "alpha",
               "threshold", "inference", "pretrain", "pretrain_epochs", "epochs", "patience",
               "rounds", "select", "min_delta", "evidence", "weak", "distill_weight",
               "distill_temperature", "seed", "num_threads")

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        return {"graph": self.graph, **{k: getattr(self, k) for k in self._PARAMS}}

    # -- checks --------------------------------------------------------------------------------
    def _check_params(self) -> None:
        for name, value, allowed in (("gnn", self.gnn, GNNS), ("confidence", self.confidence, CONFIDENCES),
                                     ("gate", self.gate, GATES), ("inference", self.inference, INFERENCE),
                                     ("pretrain", self.pretrain, ("none", "gnn", "both")),
                                     ("select", self.select, ("acc", "loss")),
                                     ("weak", self.weak, WEAK)):
            if value not in allowed:
                raise ValueError(f"Mowst {name}={value!r}; choose one of {allowed}")
        if self.weak == "distilled" and self.pretrain == "none":
            raise ValueError("Mowst weak='distilled' learns from the pre-trained GNN; use "
                             "pretrain='gnn' or 'both' (or weak='plain')")
        if self.distill_weight < 0 or self.distill_temperature <= 0:
            raise ValueError("Mowst distill_weight must be >= 0 and distill_temperature > 0")
        if self.graph is None:
            raise ValueError("Mowst needs graph=GraphData (composer.specialists.data.load_planetoid)")
        if self.threshold != "auto" and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"Mowst threshold must be 'auto' or in [0, 1], got {self.threshold!r}")
        if not 0.0 <= float(self.evidence) <= 1.0:
            raise ValueError(f"Mowst evidence must be a p-value bound in [0, 1], got {self.evidence!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "mlp_"):
            raise NotFittedError("this Mowst is not fitted yet; call fit(train_node_ids) or "
                                 "Mowst.load(path) first")

    def _node_ids(self, X, where: str = "X") -> np.ndarray:
        arr = np.asarray(X)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise BadRequestError(f"{where}: expected a 1-D list of integer node ids")
        arr = arr.astype(np.int64)
        n = self.graph.num_nodes
        bad = np.flatnonzero((arr < 0) | (arr >= n))
        if bad.size:
            i = int(bad[0])
            raise BadRequestError(f"{where}[{i}]: unknown node id {int(arr[i])}; graph "
                                  f"'{self.graph.name}' has nodes 0..{n - 1}")
        return arr

    # -- tensors -------------------------------------------------------------------------------
    def _tensors(self):
        """(edge_index, GCN edge weights or None) of the whole graph, built once per graph.

        GCN normalisation (with self loops) is computed on the whole graph, so a subgraph that
        keeps these weights gives exactly the whole-graph outputs at its inner nodes."""
        import torch
        from torch_geometric.nn.conv.gcn_conv import gcn_norm

        if getattr(self, "_cache", None) is None:
            ei = torch.from_numpy(self.graph.edge_index)
            ew = None
            if self.gnn == "gcn":
                ei, ew = gcn_norm(ei, None, self.graph.num_nodes, add_self_loops=True)
            self._cache = (ei, ew)
        return self._cache

    def _rows(self, nodes: np.ndarray, grad: bool = False):
        """Sparse feature rows of `nodes` (+ their transpose when weight gradients are needed)."""
        sub = self.graph.x[nodes]
        return (_csr(sub), _csr(sub.T) if grad else None)

    def _subgraph(self, nodes: np.ndarray, grad: bool = False):
        """(rows, edge_index, edge_weight, position of `nodes`) of the 2-hop subgraph of nodes."""
        import torch
        from torch_geometric.utils import k_hop_subgraph

        ei, ew = self._tensors()
        subset, sub_ei, mapping, mask = k_hop_subgraph(torch.as_tensor(nodes), 2, ei, relabel_nodes=True,
                                                       num_nodes=self.graph.num_nodes)
        return (self._rows(subset.numpy(), grad), sub_ei, ew[mask] if ew is not None else None,
                mapping)

    def _build(self):
        import torch

        MLP, GNN, Gate = _modules()
        torch.manual_seed(self.seed)
        f, c = self.graph.num_features, self.graph.num_classes
        return (MLP(f, self.hidden, c, self.dropout), GNN(self.gnn, f, self.hidden, c, self.dropout),
                Gate(self.gate, self.alpha, self.confidence))

    # -- training ------------------------------------------------------------------------------
    def fit(self, X, y=None, *, X_val=None, y_val=None) -> "Mowst":
        """Pre-train the experts alone, then alternate weak/strong turns on the Mowst loss."""
        import torch
        import torch.nn.functional as F

        self._check_params()
        torch.set_num_threads(self.num_threads)
        self._cache = None
        tr = self._node_ids(X)
        ytr = torch.as_tensor(self.graph.y[tr] if y is None else np.asarray(y), dtype=torch.long)
        va = self._node_ids(tr if X_val is None else X_val, "X_val")
        yva = torch.as_tensor(self.graph.y[va] if y_val is None else np.asarray(y_val), dtype=torch.long)
        if len(ytr) != len(tr) or (ytr < 0).any():
            raise ValueError("fit: every training node needs a label (and len(y) == len(X))")
        mlp, gnn, gate = self._build()
        # Outputs at a node depend only on its own row (MLP) or its 2-hop subgraph (GNN), so
        # training and validation run on those pieces only: same values, far less compute.
        rows_tr, rows_va = self._rows(tr, grad=True), self._rows(va)
        sub_tr, sub_va = self._subgraph(tr, grad=True), self._subgraph(va)

        def run_gnn(sub):
            xs, ei, ew, mapping = sub
            return gnn(xs, ei, ew)[mapping]

        def train_alone(model, forward, train_loss=None):
            """Train one expert alone; keep its best-validation-accuracy state. `forward(True)`
            gives training-node logits, `forward(False)` validation ones; `train_loss()` replaces
            the plain cross-entropy when given."""
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            best, state = -1.0, None
            for _ in range(self.pretrain_epochs):
                model.train()
                opt.zero_grad()
                (train_loss() if train_loss else F.cross_entropy(forward(True), ytr)).backward()
                opt.step()
                model.eval()
                with torch.no_grad():
                    a = float((forward(False).argmax(1) == yva).float().mean())
                if a > best:
                    best, state = a, copy.deepcopy(model.state_dict())
            model.load_state_dict(state)
            return best

        self.alone_val_ = {}
        if self.pretrain in ("gnn", "both"):
            self.alone_val_["gnn"] = train_alone(gnn, lambda t: run_gnn(sub_tr if t else sub_va))
        if self.pretrain == "both":
            self.alone_val_["mlp"] = train_alone(mlp, lambda t: mlp(rows_tr if t else rows_va))
        self.baselines_ = {"mlp": copy.deepcopy(mlp).eval(), "gnn": copy.deepcopy(gnn).eval()}
        kd = None
        if self.weak == "distilled":
            mlp, kd = self._distilled_mlp(gnn, tr, ytr, rows_va, yva, train_alone)

        def evaluate():
            """(score, val accuracy, threshold, per-node correctness of the deployed rule): the
            score that selects states is the validation accuracy of the deployed rule ("acc") or
            minus the Mowst loss on validation ("loss")."""
            for m in (mlp, gnn, gate):
                m.eval()
            with torch.no_grad():
                lm, lg = mlp(rows_va), run_gnn(sub_va)
                conf = gate(lm)
                mlp_ok, gnn_ok = (lm.argmax(1) == yva).numpy(), (lg.argmax(1) == yva).numpy()
                acc, tau = _best_threshold(conf.numpy(), mlp_ok, gnn_ok, self.threshold, self.evidence)
                ok = np.where(conf.numpy() >= tau, mlp_ok, gnn_ok)
                if self.select == "acc":
                    return acc, acc, tau, ok
                loss = (conf * F.cross_entropy(lm, yva, reduction="none")
                        + (1 - conf) * F.cross_entropy(lg, yva, reduction="none")).mean()
            return -float(loss), acc, tau, ok

        def better(new, old) -> bool:
            """A turn's state replaces the best one only on evidence: a score gain over min_delta
            and, for select="acc", a sign test at `evidence` on the validation nodes whose
            correctness changed (a few nodes either way on 500 is noise, not improvement)."""
            if new[0] <= old[0] + self.min_delta:
                return False
            if self.select != "acc":
                return True
            return sign_test_p(int((new[3] & ~old[3]).sum()), int((~new[3] & old[3]).sum())) <= self.evidence

        def snapshot():
            return [copy.deepcopy(m.state_dict()) for m in (mlp, gnn, gate)]

        def restore(states):
            for m, st in zip((mlp, gnn, gate), states):
                m.load_state_dict(st)

        best, best_state = evaluate(), snapshot()
        self.history_ = [{"round": 0, "turn": "start", "val_acc": best[1], "threshold": best[2]}]
        for r in range(1, self.rounds + 1):
            improved = False
            for turn in ("weak", "strong"):
                weak = turn == "weak"
                params = list(mlp.parameters()) + list(gate.parameters()) if weak else list(gnn.parameters())
                opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
                turn_best, turn_state, wait, ep = (-np.inf, 0.0, None, None), None, 0, 0
                for ep in range(1, self.epochs + 1):
                    # As in the paper's code both experts run in train mode (dropout); only the
                    # expert whose turn it is receives gradients.
                    for m in (mlp, gnn, gate):
                        m.train()
                    opt.zero_grad()
                    with torch.set_grad_enabled(weak):
                        lm = mlp(rows_tr)
                        conf = gate(lm)
                    with torch.set_grad_enabled(not weak):
                        lg = run_gnn(sub_tr)
                    loss = (conf * F.cross_entropy(lm, ytr, reduction="none")
                            + (1 - conf) * F.cross_entropy(lg, ytr, reduction="none")).mean()
                    if weak and kd is not None:  # keep what the weak expert learnt from the GNN
                        loss = loss + self.distill_weight * kd()
                    loss.backward()
                    opt.step()
                    res = evaluate()
                    if res[0] > turn_best[0]:
                        turn_best, turn_state, wait = res, snapshot(), 0
                    else:
                        wait += 1
                        if wait > self.patience:
                            break
                # Keep the turn's best state if it beats the best so far on evidence (see
                # better()), else revert to it (the paper's code reverts too).
                if turn_state is not None and better(turn_best, best):
                    best, best_state, improved = turn_best, turn_state, True
                restore(best_state)
                self.history_.append({"round": r, "turn": turn, "epochs": ep, "val_acc": turn_best[1],
                                      "threshold": turn_best[2]})
            if not improved:
                break
        restore(best_state)
        for m in (mlp, gnn, gate):
            m.eval()
        self.mlp_, self.gnn_, self.gate_ = mlp, gnn, gate
        self.best_val_acc_, self.threshold_ = best[1], best[2]
        self.classes_ = np.arange(self.graph.num_classes)
        self.n_nodes_ = self.graph.num_nodes
        return self

    def _distilled_mlp(self, gnn, tr, ytr, rows_va, yva, train_alone):
        """A fresh weak MLP trained on the labels plus the pre-trained GNN's soft predictions on
        every node of the graph (knowledge distillation, as in GLNN, Zhang et al. ICLR 2022):

            L = CE(mlp(x_v), y_v) over training nodes
                + distill_weight * T^2 * KL(softmax(gnn/T) || softmax(mlp/T)) over all nodes

        No labels beyond the training ones are used. The MLP still sees only each node's own
        features, so it stays the cheap weak expert; it just learns from far more than 20 labels
        per class, which makes it right on its confident nodes often enough for the gate to use it."""
        import torch
        import torch.nn.functional as F

        MLP, _, _ = _modules()
        torch.manual_seed(self.seed + 1)
        mlp = MLP(self.graph.num_features, self.hidden, self.graph.num_classes, self.dropout)
        every = np.arange(self.graph.num_nodes)
        T = float(self.distill_temperature)
        gnn.eval()
        with torch.no_grad():
            ei, ew = self._tensors()
            soft = torch.softmax(gnn(self._rows(every), ei, ew) / T, 1)
        rows_all, pos = self._rows(every, grad=True), torch.as_tensor(tr)

        def train_loss():
            out = mlp(rows_all)
            kd = F.kl_div(F.log_softmax(out / T, 1), soft, reduction="batchmean") * T * T
            return F.cross_entropy(out[pos], ytr) + self.distill_weight * kd

        self.alone_val_["mlp_distilled"] = train_alone(
            mlp, lambda training: mlp(rows_va), train_loss)

        def kd():  # the distillation term alone, for the weak turns of the alternating training
            return F.kl_div(F.log_softmax(mlp(rows_all) / T, 1), soft, reduction="batchmean") * T * T

        return mlp, kd

    # -- inference -----------------------------------------------------------------------------
    def _mlp_logits(self, nodes: np.ndarray, model=None):
        import torch

        with torch.no_grad():
            return (model or self.mlp_)(self._rows(nodes))

    def _gnn_logits(self, nodes: np.ndarray, model=None):
        """GNN logits of `nodes`, computed on their 2-hop subgraph only (exact)."""
        import torch

        model = model or self.gnn_
        with torch.no_grad():
            if len(nodes) == 0:
                return torch.zeros((0, self.graph.num_classes))
            xs, ei, ew, mapping = self._subgraph(nodes)
            self.last_subgraph_size_ = int(xs[0].shape[0])
            return model(xs, ei, ew)[mapping]

    def _gnn_logits_full(self, nodes: np.ndarray, model=None):
        """Reference path: the GNN on the whole graph (used by tests to check subgraph exactness)."""
        import torch

        ei, ew = self._tensors()
        with torch.no_grad():
            out = (model or self.gnn_)(self._rows(np.arange(self.graph.num_nodes)), ei, ew)
        return out[torch.as_tensor(nodes)]

    def confidence_of(self, X) -> np.ndarray:
        """Per-node confidence C of the weak expert (needs only node features)."""
        import torch

        self._check_fitted()
        nodes = self._node_ids(X)
        with torch.no_grad():
            return self.gate_(self._mlp_logits(nodes)).numpy().astype(float)

    def _answer(self, X):
        import torch

        self._check_fitted()
        nodes = self._node_ids(X)
        lm = self._mlp_logits(nodes)
        with torch.no_grad():
            conf = self.gate_(lm).numpy().astype(float)
        if self.inference == "threshold":
            use_mlp = conf >= self.threshold_
        else:
            use_mlp = np.random.default_rng(self.seed).random(len(nodes)) < conf
        proba = torch.softmax(lm, 1).numpy().astype(float)
        need = np.flatnonzero(~use_mlp)
        if need.size:  # the strong expert runs only for the nodes that need it
            proba[need] = torch.softmax(self._gnn_logits(nodes[need]), 1).numpy()
        return proba, np.where(use_mlp, "mlp", "gnn"), conf

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities from the expert that answers each node."""
        return self._answer(X)[0]

    def predict(self, X, return_details: bool = False):
        """Labels; with return_details also which expert answered ('mlp'/'gnn') and C."""
        proba, expert, conf = self._answer(X)
        labels = proba.argmax(1)
        return (labels, expert, conf) if return_details else labels

    def predict_expert(self, X, expert: str) -> np.ndarray:
        """Labels from one expert alone: 'mlp'/'gnn' (Mowst-trained) or 'mlp_alone'/'gnn_alone'
        (the pre-trained experts, available right after fit only)."""
        self._check_fitted()
        nodes = self._node_ids(X)
        if expert in ("mlp_alone", "gnn_alone"):
            if not hasattr(self, "baselines_"):
                raise ComposerError("the pre-trained experts are kept in memory after fit only, "
                                    "not in saved artifacts")
            model = self.baselines_[expert.split("_")[0]]
            kind = expert.split("_")[0]
        elif expert in ("mlp", "gnn"):
            model, kind = (self.mlp_ if expert == "mlp" else self.gnn_), expert
        else:
            raise ValueError(f"expert must be mlp, gnn, mlp_alone or gnn_alone, got {expert!r}")
        logits = self._mlp_logits(nodes, model) if kind == "mlp" else self._gnn_logits(nodes, model)
        return logits.argmax(1).numpy()

    def score(self, X, y=None) -> float:
        nodes = self._node_ids(X)
        y = self.graph.y[nodes] if y is None else np.asarray(y)
        return float((self.predict(nodes) == y).mean())

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """One torch file with the parameters, the weights and the graph (loadable weights_only)."""
        import torch

        self._check_fitted()
        g = self.graph
        x = g.x.tocsr()
        blob = {
            "format": FORMAT,
            "params": {k: getattr(self, k) for k in self._PARAMS},
            "graph": {"name": g.name, "num_classes": g.num_classes, "shape": list(x.shape),
                      "indptr": torch.from_numpy(x.indptr.astype(np.int64)),
                      "indices": torch.from_numpy(x.indices.astype(np.int64)),
                      "data": torch.from_numpy(x.data.astype(np.float32)),
                      **{k: torch.from_numpy(np.asarray(getattr(g, k))) for k in
                         ("y", "edge_index", "train_idx", "val_idx", "test_idx")}},
            "state": {"mlp": self.mlp_.state_dict(), "gnn": self.gnn_.state_dict(),
                      "gate": self.gate_.state_dict()},
            "best_val_acc": self.best_val_acc_,
            "threshold": self.threshold_,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Mowst":
        import scipy.sparse as sp
        import torch

        from composer.specialists.data import GraphData

        try:
            blob = torch.load(Path(path), weights_only=True)
        except FileNotFoundError:
            raise ComposerError(f"Mowst artifact {path} not found; create it with "
                                "`composer specialist train --kind mowst`") from None
        except Exception as exc:  # torch raises several types for foreign or damaged files
            raise ComposerError(f"{path} is not a Mowst artifact (format {FORMAT}): "
                                f"{type(exc).__name__}") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ComposerError(f"{path} is not a Mowst artifact (format {FORMAT})")
        gd = blob["graph"]
        x = sp.csr_matrix((gd["data"].numpy(), gd["indices"].numpy(), gd["indptr"].numpy()),
                          shape=tuple(gd["shape"]))
        graph = GraphData(name=gd["name"], x=x, y=gd["y"].numpy(), edge_index=gd["edge_index"].numpy(),
                          train_idx=gd["train_idx"].numpy(), val_idx=gd["val_idx"].numpy(),
                          test_idx=gd["test_idx"].numpy(), num_classes=int(gd["num_classes"]))
        m = cls(graph=graph, **blob["params"])
        mlp, gnn, gate = m._build()
        for mod, key in ((mlp, "mlp"), (gnn, "gnn"), (gate, "gate")):
            mod.load_state_dict(blob["state"][key])
            mod.eval()
        m.mlp_, m.gnn_, m.gate_ = mlp, gnn, gate
        m.best_val_acc_ = float(blob["best_val_acc"])
        m.threshold_ = float(blob["threshold"])
        m.classes_ = np.arange(graph.num_classes)
        m.n_nodes_ = graph.num_nodes
        m._cache = None
        return m
