"""Composition of Experts (CoE): a category classifier, then a category-to-expert map.

Step 1 predicts the query's category from its embedding (a multinomial logistic regression on
the training table's `task` labels; with fewer than two tasks, or ``categories="cluster"``,
the categories are k-means clusters of the training prompts). Step 2 maps each category to the
experts' mean scores in that category (shrunk towards their overall means), so the expert
chosen is the category's best. ``soft=True`` mixes categories by their probabilities instead.
"""

from __future__ import annotations

import numpy as np

from composer.errors import RoutingError
from composer.routers.base import Router
from composer.routers.embed import DEFAULT_EMBEDDING


class CoERouter(Router):
    """Composition of Experts: predict the category, route to that category's best expert."""

    name = "coe"

    def __init__(self, *, categories: str = "task", n_clusters: int = 8, C: float = 1.0, soft: bool = False,
                 shrinkage: float = 5.0, lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = DEFAULT_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.categories = categories
        self.n_clusters = n_clusters
        self.C = C
        self.soft = soft
        self.shrinkage = shrinkage

    def _fit(self, X, Y, table) -> None:
        if self.categories not in ("task", "cluster"):
            raise RoutingError(f"coe: categories must be 'task' or 'cluster', got '{self.categories}'")
        labels = np.asarray(table.task_of().tolist())
        if self.categories == "cluster" or len(set(labels)) < 2:
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=min(self.n_clusters, len(X)), n_init=4, random_state=self.seed).fit(X)
            self.kind_ = "cluster"
            self.category_names_ = [f"cluster-{i}" for i in range(km.n_clusters)]
            self.centroids_ = km.cluster_centers_.astype(np.float32)
            y = km.labels_
        else:
            from sklearn.linear_model import LogisticRegression

            self.kind_ = "task"
            self.category_names_ = sorted(set(labels.tolist()))
            y = np.searchsorted(np.array(self.category_names_), labels)
            clf = LogisticRegression(C=self.C, max_iter=1000).fit(X, y)
            coef, intercept = clf.coef_, clf.intercept_
            if coef.shape[0] == 1:  # binary: sklearn keeps one row; make it two-class softmax
                coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
                intercept = np.array([0.0, intercept[0]])
            self.coef_, self.intercept_ = coef, intercept
        obs = ~np.isnan(Y)
        Y0 = np.nan_to_num(Y, nan=0.0)
        n_cat = len(self.category_names_)
        onehot = np.eye(n_cat)[y]                                   # (n, K)
        g = self.train_means_
        self.category_scores_ = (onehot.T @ Y0 + self.shrinkage * g) / (onehot.T @ obs + self.shrinkage)
        self.category_sizes_ = onehot.sum(axis=0)

    def _proba(self, X) -> np.ndarray:
        if self.kind_ == "cluster":
            d = X @ self.centroids_.T - 0.5 * (self.centroids_ ** 2).sum(axis=1)
            P = np.zeros_like(d)
            P[np.arange(len(d)), d.argmax(axis=1)] = 1.0
            return P
        z = X @ self.coef_.T + self.intercept_
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def _predict_explained(self, X):
        P = self._proba(X)
        S = P @ self.category_scores_ if self.soft else self.category_scores_[P.argmax(axis=1)]
        notes = [f"category '{self.category_names_[int(p.argmax())]}' (p={p.max():.2f})" for p in P]
        return S, notes

    def _predict(self, X):
        return self._predict_explained(X)[0]
