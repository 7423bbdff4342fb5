"""Torch building blocks of Mowst: dispersion, the weak/strong experts and the gate.

Kept apart from the estimator (composer.specialists.mowst) so that importing the package stays
light: torch and torch_geometric are imported only when a model is built.
"""

from __future__ import annotations

import numpy as np

CONFIDENCES = ("variance", "entropy")


def _csr(matrix):
    """A scipy sparse matrix as a float32 torch CSR tensor."""
    import warnings

    import torch

    m = matrix.tocsr()
    with warnings.catch_warnings():  # torch warns that sparse CSR support is "beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                       torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data.astype(np.float32)), size=m.shape)


_DENSE: dict[int, tuple] = {}


def _dense_rows(x):
    """Dense copy of a sparse row set, kept while that tensor lives: a fit reuses its training
    and validation subgraph rows every epoch, and densifying them each time dominated GAT/GIN."""
    import weakref

    hit = _DENSE.get(id(x))
    if hit is not None and hit[0]() is x:
        return hit[1]
    for key in [k for k, (ref, _) in _DENSE.items() if ref() is None]:
        del _DENSE[key]
    dense = x.to_dense()
    _DENSE[id(x)] = (weakref.ref(x), dense)
    return dense


def dispersion(logits, kind: str = "variance"):
    """Dispersion of softmax(logits) per row, scaled to [0, 1] (1 = one-hot, 0 = uniform)."""
    import math

    import torch

    p = torch.softmax(logits, dim=1)
    c = p.shape[1]
    if kind == "variance":
        max_var = (1.0 / c) * (1 - 1.0 / c)  # population variance of a one-hot vector
        return p.var(dim=1, unbiased=False) / max_var
    if kind == "entropy":
        ent = -(p * torch.log(p.clamp_min(1e-12))).sum(1)
        return 1.0 - ent / math.log(c)
    raise ValueError(f"confidence must be one of {CONFIDENCES}, got '{kind}'")


def _modules():
    """Build the torch module classes lazily (keeps `import composer.specialists` light).

    Node features are sparse bag-of-words, so the MLP's, GCN's, GraphSAGE's and GIN's first layer projects
    the sparse input with its own PyG weights first and then aggregates in the hidden space: for GCN
    A_hat (X W) + b, for GraphSAGE mean_j(X_j W_l) + b_l + X_i W_r. This is the same function as
    GCNConv / SAGEConv on X (both are linear before the activation), without densifying X; for GIN
    nn((1 + eps) x_i + sum_j x_j) with the MLP's first Linear moved inside the sum (exact). GAT
    runs PyG's GATConv on the dense rows of the subgraph.
    """
    import torch
    from torch import nn
    from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv

    class SpMM(torch.autograd.Function):
        """X @ W.T for a sparse CSR X whose transpose is precomputed (fast weight gradient)."""

        @staticmethod
        def forward(ctx, x, xt, weight):
            ctx.xt = xt
            return torch.sparse.mm(x, weight.t().contiguous())

        @staticmethod
        def backward(ctx, grad):
            return None, None, torch.sparse.mm(ctx.xt, grad).t()

    def project(xs, weight):
        x, xt = xs
        if xt is not None and torch.is_grad_enabled() and weight.requires_grad:
            return SpMM.apply(x, xt, weight)
        return torch.sparse.mm(x, weight.t().contiguous())

    def dropout(h, p, training):
        # Same as F.dropout; a uniform mask is ~2x faster than bernoulli_ on CPU here.
        if not training or p == 0:
            return h
        return h * (torch.rand_like(h) >= p) / (1 - p)

    class MLP(nn.Module):
        def __init__(self, n_in, hidden, n_out, dropout):
            super().__init__()
            self.lin1, self.lin2, self.dropout = nn.Linear(n_in, hidden), nn.Linear(hidden, n_out), dropout

        def forward(self, xs):
            h = torch.relu(project(xs, self.lin1.weight) + self.lin1.bias)
            return self.lin2(dropout(h, self.dropout, self.training))

    class GNN(nn.Module):
        def __init__(self, kind, n_in, hidden, n_out, dropout):
            super().__init__()
            self.kind, self.dropout = kind, dropout
            if kind == "gcn":  # normalisation precomputed on the full graph: exact on subgraphs
                self.conv1 = GCNConv(n_in, hidden, normalize=False, add_self_loops=False)
                self.conv2 = GCNConv(hidden, n_out, normalize=False, add_self_loops=False)
            elif kind == "sage":
                self.conv1, self.conv2 = SAGEConv(n_in, hidden), SAGEConv(hidden, n_out)
            elif kind == "gat":  # 8 heads x hidden/8 channels, concatenated; one averaged head out
                heads = 8
                self.conv1 = GATConv(n_in, max(1, hidden // heads), heads=heads, dropout=dropout)
                self.conv2 = GATConv(max(1, hidden // heads) * heads, n_out, heads=1, concat=False,
                                     dropout=dropout)
            elif kind == "gin":  # sum aggregation, a 2-layer MLP per layer (Xu et al. 2019)
                self.conv1 = GINConv(nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(),
                                                   nn.Linear(hidden, hidden)), train_eps=True)
                self.conv2 = GINConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(),
                                                   nn.Linear(hidden, n_out)), train_eps=True)
            else:
                raise ValueError(f"unknown GNN '{kind}'; choose gcn, sage, gat or gin")

        def first_layer(self, xs, edge_index, edge_weight):
            c = self.conv1
            if self.kind == "gcn":
                return c.propagate(edge_index, x=project(xs, c.lin.weight), edge_weight=edge_weight) + c.bias
            if self.kind == "gin":  # nn((1+eps) x_i + sum_j x_j); its first Linear commutes with the sum
                lin1 = c.nn[0]
                p = project(xs, lin1.weight)
                z = c.propagate(edge_index, x=(p, p)) + (1 + c.eps) * p + lin1.bias
                return c.nn[2](c.nn[1](z))
            xl = project(xs, c.lin_l.weight)
            return c.propagate(edge_index, x=(xl, xl)) + c.lin_l.bias + project(xs, c.lin_r.weight)

        def forward(self, xs, edge_index, edge_weight):
            if self.kind == "gat":
                # PyG's GATConv as it is, on dense rows (Planetoid-sized: cheap to densify; the
                # attention needs the projected features of both ends of every edge anyway).
                x = _dense_rows(xs[0])
                h = dropout(torch.relu(self.conv1(x, edge_index)), self.dropout, self.training)
                return self.conv2(h, edge_index)
            h = torch.relu(self.first_layer(xs, edge_index, edge_weight))
            h = dropout(h, self.dropout, self.training)
            if self.kind == "gcn":
                return self.conv2(h, edge_index, edge_weight)
            return self.conv2(h, edge_index)

    class Gate(nn.Module):
        """C = G(D). power: D**alpha (fixed). learned: sigmoid(softplus(s) * (D - t)), a
        monotone soft threshold with learnable t and sharpness s. mlp: the paper code's small MLP
        over both dispersions [D_var, D_ent] with a sigmoid output (input: logits, not D)."""

        def __init__(self, kind, alpha, confidence="variance", hidden=16):
            super().__init__()
            self.kind, self.alpha, self.confidence = kind, alpha, confidence
            if kind == "learned":
                self.t = nn.Parameter(torch.tensor(0.5))
                self.s = nn.Parameter(torch.tensor(2.0))  # slope 10 * softplus(2) ~ 21 at the start
            elif kind == "mlp":
                self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 1))

        def forward(self, logits):
            if self.kind == "mlp":
                d = torch.stack([dispersion(logits, "variance"), dispersion(logits, "entropy")], 1)
                return torch.sigmoid(self.net(d)).squeeze(1)
            d = dispersion(logits, self.confidence)
            if self.kind == "power":
                return d.clamp(0, 1) ** self.alpha
            return torch.sigmoid(nn.functional.softplus(self.s) * 10.0 * (d - self.t))

    return MLP, GNN, Gate
