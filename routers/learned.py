"""Learned routers over sentence embeddings: kNN, MLP, linear (ridge), logistic, matrix factorisation.

Each predicts every expert's score for a query from its embedding (all-MiniLM-L6-v2 by default;
any local sentence-transformers folder via `embedding_model`). Missing training scores are
left out of every fit, never read as 0. Selection (score - lam * cost, budgets, calibration) is
the shared one in `routers.base`.
"""

from __future__ import annotations

import numpy as np

from composer.errors import RoutingError
from composer.routers.base import Router
from composer.routers.embed import ROUTING_EMBEDDING
from composer.routers.training import scores_are_probabilities, sigmoid, train_masked

_CHUNK = 2048


def _nanmean_rows(V: np.ndarray, fallback: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean over axis 1 of (n, k, E) ignoring NaN; columns with nothing observed take `fallback`."""
    obs = ~np.isnan(V)
    w = obs.astype(float) if weights is None else obs * weights[:, :, None]
    total = np.where(obs, V, 0.0) * w
    denom = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total.sum(axis=1) / denom
    return np.where(denom > 0, out, fallback[None, :])


class KNNRouter(Router):
    """Mean score of each expert over the k most similar training prompts (cosine similarity).

    RouterBench's kNN router, for any number of experts; `weighted` weights neighbours by
    similarity. `n_neighbors="auto"` picks k from `k_grid` by leave-one-out routing quality on
    the training table itself (the mean true score of the expert each training query would get).
    """

    name = "knn"

    def __init__(self, *, n_neighbors: int | str = "auto", k_grid: tuple[int, ...] = (10, 20, 50, 100, 200),
                 weighted: bool = False, lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = ROUTING_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.n_neighbors = n_neighbors
        self.k_grid = k_grid
        self.weighted = weighted

    def _fit(self, X, Y, table) -> None:
        self.X_ = np.ascontiguousarray(X, dtype=np.float32)
        self.Y_ = Y.astype(np.float32)
        if self.n_neighbors == "auto":
            self.loo_scores_ = {int(kk): self._loo_score(int(kk)) for kk in self.k_grid if kk < len(X)}
            self.k_ = max(self.loo_scores_, key=self.loo_scores_.get) if self.loo_scores_ else len(X)
        else:
            self.k_ = int(self.n_neighbors)

    def _loo_score(self, kk: int) -> float:
        """Mean true score of the argmax expert when each training query is routed by the others."""
        Yf = self.Y_.astype(float)
        got = []
        for s in range(0, len(self.X_), _CHUNK):
            sims = self.X_[s:s + _CHUNK] @ self.X_.T
            sims[np.arange(len(sims)), np.arange(s, s + len(sims))] = -np.inf  # leave the query out
            idx = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            pred = _nanmean_rows(Yf[idx], self.train_means_)
            pick = pred.argmax(axis=1)
            got.append(Yf[np.arange(s, s + len(sims)), pick])
        return float(np.nanmean(np.concatenate(got)))

    def _predict(self, X) -> np.ndarray:
        kk = max(1, min(int(getattr(self, "k_", self.n_neighbors)), len(self.X_)))
        out = np.empty((len(X), self.Y_.shape[1]))
        for s in range(0, len(X), _CHUNK):
            sims = X[s:s + _CHUNK] @ self.X_.T
            idx = np.argpartition(-sims, kk - 1, axis=1)[:, :kk] if kk < sims.shape[1] else \
                np.tile(np.arange(sims.shape[1]), (len(sims), 1))
            w = np.clip(np.take_along_axis(sims, idx, axis=1), 1e-6, None) if self.weighted else None
            out[s:s + _CHUNK] = _nanmean_rows(self.Y_[idx].astype(float), self.train_means_, w)
        return out


class LinearRouter(Router):
    """Ridge regression per expert on the rows where that expert has a score."""

    name = "linear"

    def __init__(self, *, alpha: float = 1.0, lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = ROUTING_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.alpha = alpha

    def _fit(self, X, Y, table) -> None:
        d, E = X.shape[1], Y.shape[1]
        self.coef_ = np.zeros((E, d))
        self.intercept_ = np.zeros(E)
        for e in range(E):
            m = ~np.isnan(Y[:, e])
            Xe, ye = X[m].astype(float), Y[m, e]
            mu_x, mu_y = Xe.mean(axis=0), ye.mean()
            Xc = Xe - mu_x
            w = np.linalg.solve(Xc.T @ Xc + self.alpha * np.eye(d), Xc.T @ (ye - mu_y))
            self.coef_[e], self.intercept_[e] = w, mu_y - mu_x @ w

    def _predict(self, X) -> np.ndarray:
        return X @ self.coef_.T + self.intercept_


class LogisticRouter(LinearRouter):
    """Logistic regression per expert: P(expert answers well | prompt).

    Fractional scores in [0, 1] (e.g. the share of sampled answers that were right) are fitted
    exactly as soft labels: each row appears once as a positive with weight s and once as a
    negative with weight 1 - s.
    """

    name = "logistic"

    def __init__(self, *, C: float = 1.0, max_iter: int = 500, lam: float = 0.0, k: int = 1,
                 budget: float | None = None, embedding_model: str = ROUTING_EMBEDDING, seed: int = 0):
        Router.__init__(self, lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.C = C
        self.max_iter = max_iter

    def _fit(self, X, Y, table) -> None:
        from sklearn.linear_model import LogisticRegression

        if not scores_are_probabilities(Y):
            raise RoutingError("the logistic router needs scores in [0, 1]; use the 'linear' router for "
                               "other score scales")
        d, E = X.shape[1], Y.shape[1]
        self.coef_ = np.zeros((E, d))
        self.intercept_ = np.zeros(E)
        for e in range(E):
            m = ~np.isnan(Y[:, e])
            Xe, ye = X[m], Y[m, e]
            if ye.min() == ye.max():  # one class only: a constant prediction
                p = min(max(float(ye[0]), 1e-4), 1 - 1e-4)
                self.intercept_[e] = np.log(p / (1 - p))
                continue
            Xd = np.vstack([Xe, Xe])
            yd = np.concatenate([np.ones(len(ye)), np.zeros(len(ye))])
            wd = np.concatenate([ye, 1.0 - ye])
            keep = wd > 0
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
            clf.fit(Xd[keep], yd[keep], sample_weight=wd[keep])
            self.coef_[e], self.intercept_[e] = clf.coef_[0], clf.intercept_[0]

    def _predict(self, X) -> np.ndarray:
        return sigmoid(X @ self.coef_.T + self.intercept_)


class MLPRouter(Router):
    """A one-hidden-layer MLP predicting all experts' scores at once (masked loss over holes)."""

    name = "mlp"

    def __init__(self, *, hidden: int = 256, dropout: float = 0.2, epochs: int = 300, lr: float = 1e-3,
                 weight_decay: float = 1e-3, batch_size: int = 256, patience: int = 15,
                 val_fraction: float = 0.1, lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = ROUTING_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.hidden, self.dropout, self.epochs, self.lr = hidden, dropout, epochs, lr
        self.weight_decay, self.batch_size, self.patience = weight_decay, batch_size, patience
        self.val_fraction = val_fraction

    def _fit(self, X, Y, table) -> None:
        import torch

        torch.manual_seed(self.seed)
        self.probabilities_ = scores_are_probabilities(Y)
        net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], self.hidden), torch.nn.ReLU(),
                                  torch.nn.Dropout(self.dropout), torch.nn.Linear(self.hidden, Y.shape[1]))
        net, self.training_ = train_masked(
            net, X, Y, probabilities=self.probabilities_, epochs=self.epochs, lr=self.lr,
            weight_decay=self.weight_decay, batch_size=self.batch_size, patience=self.patience,
            val_fraction=self.val_fraction, seed=self.seed)
        self.w1_ = net[0].weight.detach().numpy().T.copy()
        self.b1_ = net[0].bias.detach().numpy().copy()
        self.w2_ = net[3].weight.detach().numpy().T.copy()
        self.b2_ = net[3].bias.detach().numpy().copy()

    def _predict(self, X) -> np.ndarray:
        z = np.maximum(X @ self.w1_ + self.b1_, 0.0) @ self.w2_ + self.b2_
        return sigmoid(z) if self.probabilities_ else z


class MFRouter(Router):
    """RouteLLM's matrix factorisation router generalised to N experts.

    RouteLLM scores a (strong, weak) pair as w . ((v_strong - v_weak) * P q). Here each expert e
    has an embedding v_e and score_e(q) = sigmoid(w . (v_e * P q) + b_e), trained on every
    recorded score (pointwise) plus RouteLLM's pairwise Bradley-Terry loss over expert pairs of
    the same query (`pair_weight`).
    """

    name = "mf"

    def __init__(self, *, dim: int = 128, epochs: int = 300, lr: float = 3e-3, weight_decay: float = 1e-4,
                 pair_weight: float = 1.0, batch_size: int = 256, patience: int = 15,
                 val_fraction: float = 0.1, lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = ROUTING_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.dim, self.epochs, self.lr, self.weight_decay = dim, epochs, lr, weight_decay
        self.pair_weight, self.batch_size, self.patience = pair_weight, batch_size, patience
        self.val_fraction = val_fraction

    def _fit(self, X, Y, table) -> None:
        import torch

        torch.manual_seed(self.seed)
        self.probabilities_ = scores_are_probabilities(Y)
        E = Y.shape[1]

        class MF(torch.nn.Module):
            def __init__(self, d_in: int, dim: int):
                super().__init__()
                self.proj = torch.nn.Linear(d_in, dim, bias=False)
                self.experts = torch.nn.Parameter(torch.randn(E, dim) * 0.1)
                self.w = torch.nn.Linear(dim, 1, bias=False)
                self.b = torch.nn.Parameter(torch.zeros(E))

            def forward(self, x):
                q = self.proj(x)                                      # (n, dim)
                inter = q.unsqueeze(1) * self.experts.unsqueeze(0)     # (n, E, dim)
                return self.w(inter).squeeze(-1) + self.b

        net, self.training_ = train_masked(
            MF(X.shape[1], self.dim), X, Y, probabilities=self.probabilities_, epochs=self.epochs,
            lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size, patience=self.patience,
            val_fraction=self.val_fraction, seed=self.seed, pair_weight=self.pair_weight)
        self.proj_ = net.proj.weight.detach().numpy().T.copy()            # (d_in, dim)
        self.expert_emb_ = net.experts.detach().numpy().copy()             # (E, dim)
        self.w_ = net.w.weight.detach().numpy()[0].copy()                  # (dim,)
        self.b_ = net.b.detach().numpy().copy()

    def _predict(self, X) -> np.ndarray:
        q = X @ self.proj_
        z = q @ (self.expert_emb_ * self.w_).T + self.b_
        return sigmoid(z) if self.probabilities_ else z
