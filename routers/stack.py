"""Stacked router: kNN, MLP and a task prior, combined per expert on out-of-fold predictions.

Each base predicts every expert's accuracy credit from the query's embedding:

- ``knn``: the mean credit over the nearest training prompts (k by leave-one-out);
- ``mlp``: the one-hidden-layer MLP;
- ``prior``: P(task | query) from a multinomial logistic regression over the training tasks,
  times each task's mean credit per expert: "the best model for this kind of query", which
  also carries to unseen tasks through their nearest training task.

The meta-model is a logistic regression per expert over the bases' logits, fitted on
out-of-fold predictions (`folds`-fold cross-validation on the training table, so it learns how
far to trust each base where it has not seen the query); the bases are then refitted on all of
it. Selection is the shared one (score - lam * cost); `margin` is a bonus added to the prior's
choice, so another expert wins only when its stacked score beats that one by more than the
margin (uncertainty-aware selection: a query-level prediction must be clearly better to leave
the best model for that kind of query). The default 0.03 was chosen by 5-fold cross-validation
on RouterDC's five training files (task-average accuracy 60.49 % against 60.37 % at 0, 60.26 % at
0.05 and 60.40 % for the prior alone: differences within noise; see docs/routers.md).
"""

from __future__ import annotations

import numpy as np

from composer.errors import RoutingError
from composer.routers.base import Router, make_router
from composer.routers.embed import ROUTING_EMBEDDING
from composer.routers.training import sigmoid

BASES = ("knn", "mlp", "prior")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


class TaskPrior:
    """P(task | x) by multinomial logistic regression, times each task's mean credit per expert."""

    def __init__(self, C: float = 10.0, seed: int = 0):
        self.C, self.seed = C, seed

    def fit(self, X: np.ndarray, Y: np.ndarray, labels: np.ndarray) -> "TaskPrior":
        from sklearn.linear_model import LogisticRegression

        self.classes = np.array(sorted(set(labels.tolist())))
        with np.errstate(invalid="ignore"):
            self.A = np.stack([np.nanmean(Y[labels == c], axis=0) for c in self.classes])
        self.A = np.where(np.isnan(self.A), np.nanmean(Y, axis=0)[None, :], self.A)
        if len(self.classes) == 1:
            self.coef, self.intercept = np.zeros((1, X.shape[1])), np.zeros(1)
            return self
        clf = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed).fit(X, labels)
        coef, icpt = clf.coef_, clf.intercept_
        if len(self.classes) == 2:  # sklearn's binary form: one row for the second class
            coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, icpt]
        self.coef, self.intercept = coef, icpt
        return self

    def proba(self, X: np.ndarray) -> np.ndarray:
        z = X @ self.coef.T + self.intercept
        z = z - z.max(axis=1, keepdims=True)
        P = np.exp(z)
        return P / P.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.proba(X) @ self.A


class StackRouter(Router):
    """kNN + MLP + task prior, stacked per expert on out-of-fold predictions (see module doc)."""

    name = "stack"

    def __init__(self, *, bases: tuple[str, ...] | list[str] = BASES, folds: int = 5, meta_C: float = 1.0,
                 prior_C: float = 10.0, margin: float = 0.03, lam: float = 0.0, k: int = 1,
                 budget: float | None = None, embedding_model: str = ROUTING_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.bases = bases
        self.folds = folds
        self.meta_C = meta_C
        self.prior_C = prior_C
        self.margin = margin

    # -- bases ----------------------------------------------------------------------------------
    def _check_bases(self) -> list[str]:
        bases = list(self.bases)
        bad = [b for b in bases if b not in BASES]
        if bad or not bases:
            raise RoutingError(f"router 'stack': bases {bad or bases} are not among {', '.join(BASES)}")
        return bases

    def _fit_bases(self, X, Y, labels) -> dict:
        fitted = {}
        for b in self._check_bases():
            if b == "prior":
                fitted[b] = TaskPrior(self.prior_C, self.seed).fit(X, Y, labels)
                continue
            fitted[b] = make_router(b, seed=self.seed, embedding_model=self.embedding_model).fit_vectors(
                X, Y, self.experts_)
        return fitted

    @staticmethod
    def _base_predict(base, X) -> np.ndarray:
        return base.predict(X) if isinstance(base, TaskPrior) else base._predict(X)

    # -- fit ------------------------------------------------------------------------------------
    def _fit(self, X, Y, table) -> None:
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(table.task_of().tolist()) if table is not None else np.zeros(len(X), dtype=str)
        n, E = Y.shape
        bases = self._check_bases()
        # out-of-fold base predictions, folds stratified by task
        rng = np.random.default_rng(self.seed)
        fold = np.empty(n, dtype=int)
        for t in np.unique(labels):
            idx = np.flatnonzero(labels == t)
            fold[idx] = rng.permutation(len(idx)) % max(2, self.folds)
        oof = np.full((len(bases), n, E), np.nan)
        for f in range(max(2, self.folds)):
            te, tr = fold == f, fold != f
            if not te.any() or not tr.any():
                continue
            fitted = self._fit_bases(X[tr], Y[tr], labels[tr])
            for i, b in enumerate(bases):
                oof[i, te] = self._base_predict(fitted[b], X[te])
        F = _logit(oof)
        self.meta_coef_ = np.zeros((E, len(bases)))
        self.meta_intercept_ = np.zeros(E)
        for e in range(E):
            m = ~np.isnan(Y[:, e]) & np.isfinite(F[:, :, e]).all(axis=0)
            Z, y = F[:, m, e].T, Y[m, e]
            if not m.any() or y.min() == y.max():
                p = min(max(float(np.nanmean(Y[:, e])) if m.any() else 0.5, 1e-4), 1 - 1e-4)
                self.meta_intercept_[e] = np.log(p / (1 - p))
                continue
            Zd = np.vstack([Z, Z])  # fractional credit as soft labels
            yd = np.r_[np.ones(len(y)), np.zeros(len(y))]
            wd = np.r_[y, 1.0 - y]
            keep = wd > 0
            clf = LogisticRegression(C=self.meta_C, max_iter=1000).fit(Zd[keep], yd[keep], sample_weight=wd[keep])
            self.meta_coef_[e], self.meta_intercept_[e] = clf.coef_[0], clf.intercept_[0]
        fitted = self._fit_bases(X, Y, labels)
        for b in bases:
            if b == "prior":
                p = fitted[b]
                self.prior_coef_, self.prior_intercept_, self.prior_A_ = p.coef, p.intercept, p.A
            else:
                setattr(self, f"{b}_", fitted[b])

    def _after_load(self) -> None:
        for b in ("knn", "mlp"):
            base = getattr(self, f"{b}_", None)
            if base is not None and getattr(self, "_embedder", None) is not None:
                base.use_embedder(self._embedder)

    def _prior(self) -> TaskPrior:
        p = TaskPrior(self.prior_C, self.seed)
        p.coef, p.intercept, p.A = self.prior_coef_, self.prior_intercept_, self.prior_A_
        return p

    # -- predict --------------------------------------------------------------------------------
    def _base_matrix(self, X) -> np.ndarray:
        preds = [self._prior().predict(X) if b == "prior" else getattr(self, f"{b}_")._predict(X)
                 for b in self._check_bases()]
        return _logit(np.stack(preds))  # (B, n, E)

    def _predict(self, X) -> np.ndarray:
        F = self._base_matrix(X)
        S = sigmoid(np.einsum("bne,eb->ne", F, self.meta_coef_) + self.meta_intercept_)
        if self.margin and "prior" in self._check_bases():
            # the prior's choice gets a bonus: leave it only for a clearly better expert
            pick = self._prior().predict(X).argmax(axis=1)
            S[np.arange(len(S)), pick] += self.margin
        return S
