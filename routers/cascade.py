"""Cascade routing: cheapest expert first, escalate while confidence is below a threshold.

The chain orders experts by expected cost (ties: the better one by training score first).
Two confidence signals:

- predicted (offline and at routing time): a base router's predicted score for each expert in
  the chain; the query goes to the first expert predicted to reach `threshold` (else to the
  expert with the highest prediction). Known before any call, so no call is wasted.
- self-reported (live): after an expert answered, `escalate(tried, confidence)` names the next
  expert in the chain when the answer's own confidence (e.g. a stated probability or a mean
  token probability) is below `threshold`, or None to accept the answer.
"""

from __future__ import annotations

import numpy as np

from composer.routers.base import Router, make_router
from composer.routers.embed import ROUTING_EMBEDDING


class CascadeRouter(Router):
    """Cheapest expert first; escalate while (predicted or self-reported) confidence < threshold."""

    name = "cascade"

    def __init__(self, *, base: str = "knn", base_params: dict | None = None, threshold: float = 0.5,
                 lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = ROUTING_EMBEDDING, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, embedding_model=embedding_model, seed=seed)
        self.base = base
        self.base_params = base_params
        self.threshold = threshold

    def _fit(self, X, Y, table) -> None:
        params = dict(self.base_params or {})
        params.setdefault("embedding_model", self.embedding_model)
        self.base_ = make_router(self.base, **params).use_embedder(self.embedder).fit(table)
        self.chain_ = [int(i) for i in np.lexsort((-self.train_means_, self.expert_costs_))]

    def use_embedder(self, embedder):
        super().use_embedder(embedder)
        if hasattr(self, "base_"):
            self.base_.use_embedder(embedder)
        return self

    def _after_load(self) -> None:
        self.base_.use_embedder(self.embedder)

    def _predict(self, X):
        return self.base_._predict(X)

    def chain(self) -> list[str]:
        """The escalation order (restricted to the routing pool, if any)."""
        self._check_fitted()
        pool = self._pool_mask()
        return [self.experts_[j] for j in self.chain_ if pool[j]]

    def select(self, S, C, *, threshold=None, budget=None, **_):
        tau = self.threshold if threshold is None else threshold
        budget = self.budget if budget is None else budget
        pool = self._pool_mask()
        chain = [j for j in self.chain_ if pool[j]]
        sub = S[:, chain]                                       # (n, L) in chain order
        ok = sub >= tau
        if budget is not None:
            ok &= C[:, chain] <= budget
        first = np.where(ok.any(axis=1), ok.argmax(axis=1), sub.argmax(axis=1))
        return [[chain[int(f)]] for f in first]

    def sweep_knobs(self, S, C, n_points: int = 20):
        pool = self._pool_mask()
        vals = S[:, [j for j in self.chain_ if pool[j]]].ravel()
        qs = np.quantile(vals, np.linspace(0.0, 1.0, max(n_points - 1, 2)))
        return [{"threshold": float(t)} for t in sorted(set([-np.inf, *qs.tolist(), float(vals.max()) + 1.0]))]

    def strong_preference(self, S, strong: int, weak: int) -> np.ndarray:
        """For a strong/weak pair: how much a query wants the strong expert (RouteLLM's curve)."""
        first = next(j for j in self.chain_ if j in (strong, weak))
        return -S[:, weak] if first == weak else S[:, strong]

    def escalate(self, tried: list[str], confidence: float) -> str | None:
        """Live cascade step: the next expert after `tried[-1]` if `confidence` < threshold, else None."""
        if confidence >= self.threshold:
            return None
        chain = self.chain()
        nxt = chain.index(tried[-1]) + 1 if tried and tried[-1] in chain else 0
        while nxt < len(chain) and chain[nxt] in tried:
            nxt += 1
        return chain[nxt] if nxt < len(chain) else None

    def route(self, queries, *, k=None, lam=None, budget=None):
        decisions = super().route(queries, k=k, lam=lam, budget=budget)
        chain = self.chain()
        for d in decisions:
            passed = [e for e in chain[: chain.index(d.experts[0])]]
            d.reason = (f"cascade {' -> '.join(chain)} at threshold {self.threshold:g}: "
                        + (f"skipped {', '.join(f'{e} ({d.scores[e]:.2f})' for e in passed)}; " if passed else "")
                        + f"{d.experts[0]} predicted {d.scores[d.experts[0]]:.2f}")
        return decisions
