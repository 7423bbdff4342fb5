"""Dynamic top-p routing ("Harder Tasks Need More Experts"): as many experts as confidence needs.

A base router (kNN by default) predicts every expert's score; the utilities (score - lam * cost)
become a distribution with a softmax at `temperature`; experts are taken best first until their
probability mass reaches `top_p` (at most `max_experts`). A confident query gets one expert, an
uncertain one gets several, whose answers an aggregator (the pipeline's; "vote" by default here)
combines.
"""

from __future__ import annotations

import numpy as np

from composer.routers.base import Router, lam_grid, make_router
from composer.routers.embed import ROUTING_EMBEDDING


class DynamicTopPRouter(Router):
    """As many experts as the top-p mass of the predicted-utility softmax needs."""

    name = "dynamic"

    def __init__(self, *, base: str = "knn", base_params: dict | None = None, top_p: float = 0.8,
                 temperature: float = 0.05, max_experts: int = 3, aggregator: str = "vote",
                 lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = ROUTING_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.base = base
        self.base_params = base_params
        self.top_p = top_p
        self.temperature = temperature
        self.max_experts = max_experts
        self.aggregator = aggregator

    def _fit(self, X, Y, table) -> None:
        params = dict(self.base_params or {})
        params.setdefault("embedding_model", self.embedding_model)
        self.base_ = make_router(self.base, **params).use_embedder(self.embedder).fit(table)

    def use_embedder(self, embedder):
        super().use_embedder(embedder)
        if hasattr(self, "base_"):
            self.base_.use_embedder(embedder)
        return self

    def _after_load(self) -> None:
        self.base_.use_embedder(self.embedder)

    def _predict(self, X):
        return self.base_._predict(X)

    def select(self, S, C, *, lam=None, k=None, budget=None, top_p=None, **_):
        lam = self.current_lam(lam)
        top_p = self.top_p if top_p is None else top_p
        allowed = np.broadcast_to(self._pool_mask(), S.shape)
        if budget is not None or self.budget is not None:
            allowed = allowed & (C <= (budget if budget is not None else self.budget))
        U = np.where(allowed, S - lam * C, -np.inf)
        order = np.argsort(-U, axis=1, kind="stable")
        z = np.where(np.isfinite(U), U / max(self.temperature, 1e-6), -np.inf)
        z = z - z.max(axis=1, keepdims=True)
        P = np.exp(z)
        P /= P.sum(axis=1, keepdims=True)
        out = []
        for i in range(len(S)):
            mass, pick = 0.0, []
            for j in order[i]:
                if not np.isfinite(U[i, j]) or len(pick) >= self.max_experts:
                    break
                pick.append(int(j))
                mass += P[i, j]
                if mass >= top_p:
                    break
            out.append(pick or [int(order[i][0])])
        return out

    def sweep_knobs(self, S, C, n_points: int = 20):
        """The whole cost range: one expert traded against cost by lam (top_p 0) at the cheap end,
        then more experts by top_p at the expensive end. A top-p sweep alone starts where one
        expert is already the best predicted, often the priciest: no cheap points, AIQ near 0."""
        lams = [{"top_p": 0.0, "lam": float(lam)} for lam in lam_grid(S, C, max(n_points // 2, 2))]
        tops = np.linspace(0.0, 0.99, max(n_points - len(lams), 1) + 1)[1:]
        return lams + [{"top_p": float(p), "lam": 0.0} for p in tops]

    def route(self, queries, *, k=None, lam=None, budget=None):
        decisions = super().route(queries, k=k, lam=lam, budget=budget)
        for d in decisions:
            d.reason += f"; top-p {self.top_p} -> {len(d.experts)} expert(s)"
            if len(d.experts) > 1:
                d.aggregator = self.aggregator
        return decisions
