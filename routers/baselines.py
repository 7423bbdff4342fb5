"""Baseline routers: random, best single expert (by training score), oracle (evaluation only)."""

from __future__ import annotations

import hashlib

import numpy as np

from composer.errors import RoutingError
from composer.routers.base import Router


class RandomRouter(Router):
    """Random scores per (query, expert), deterministic per query text and seed.

    With the shared lam / threshold sweep this is RouteLLM's random router: a random share of
    queries goes to the pricier experts. `experts` makes it usable without fit.
    """

    name = "random"
    uses_embeddings = False
    fit_free = True

    def __init__(self, *, experts: list[str] | None = None, lam: float = 0.0, k: int = 1,
                 budget: float | None = None, seed: int = 0):
        super().__init__(lam=lam, k=k, budget=budget, seed=seed)
        self.experts = experts

    def _check_fitted(self) -> None:
        if not hasattr(self, "experts_") and self.experts:
            self.experts_ = list(self.experts)
            self.train_means_ = np.zeros(len(self.experts_))
            self.expert_costs_ = np.zeros(len(self.experts_))
            self.has_costs_, self.lambda_, self.pool_ = False, None, None
        super()._check_fitted()

    def _fit(self, X, Y, table) -> None:
        pass

    def _predict(self, texts) -> np.ndarray:
        out = np.empty((len(texts), len(self.experts_)))
        for i, t in enumerate(texts):
            h = int.from_bytes(hashlib.sha256(f"{self.seed}\x00{t}".encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(h).random(len(self.experts_))
        return out


class BestSingleRouter(Router):
    """Always the expert with the best mean training score."""

    name = "best_single"
    uses_embeddings = False

    def _fit(self, X, Y, table) -> None:
        pass

    def _predict(self, texts) -> np.ndarray:
        return np.broadcast_to(self.train_means_, (len(texts), len(self.experts_))).copy()


class OracleRouter(Router):
    """Knows the true scores of the table it was fitted on (evaluation upper bound only).

    It routes by prompt text; a prompt it has not seen is an error, not a guess.
    """

    name = "oracle"
    uses_embeddings = False

    def _fit(self, X, Y, table) -> None:
        keys = [_key(t) for t in X]
        # A prompt can occur more than once (real data has duplicates): average its scores.
        uniq, inv = np.unique(np.array(keys), return_inverse=True)
        sums = np.zeros((len(uniq), Y.shape[1]))
        counts = np.zeros((len(uniq), Y.shape[1]))
        np.add.at(sums, inv, np.nan_to_num(Y, nan=0.0))
        np.add.at(counts, inv, ~np.isnan(Y))
        with np.errstate(invalid="ignore", divide="ignore"):
            self.truth_ = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        self.keys_ = uniq

    def _predict(self, texts) -> np.ndarray:
        keys = np.array([_key(t) for t in texts])
        pos = np.searchsorted(self.keys_, keys)
        pos = np.minimum(pos, len(self.keys_) - 1)
        unknown = self.keys_[pos] != keys
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise RoutingError(f"oracle router: query {i} was not in the outcomes it was fitted on; "
                               "the oracle only replays known outcomes")
        S = self.truth_[pos]
        # A missing true score must never look like the best choice.
        return np.where(np.isnan(S), -1e9, S)


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
