"""Exact Shapley values over a small set of players (features or one-hot feature groups).

Baseline ("interventional") game: for an instance x, a baseline point b and a coalition S of
players, v(S) = f(z) where z takes the columns of the players in S from x and all other columns
from b. The Shapley value of player j is

    phi_j = sum over S not containing j of |S|! (d - |S| - 1)! / d! * (v(S + j) - v(S))

and the values add up to f(x) - f(b) (efficiency).

`shapley_from_values` evaluates this formula for all players at once from the 2**d coalition
values; `shapley_bruteforce` is an independent, deliberately plain reference (itertools +
factorials + one model call per coalition) used to check fast implementations.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np


@lru_cache(maxsize=8)
def coalition_masks(d: int) -> np.ndarray:
    """All 2**d coalitions as a (2**d, d) 0/1 float matrix; row m has bit j of m in column j."""
    m = np.arange(2 ** d, dtype=np.int64)[:, None]
    out = ((m >> np.arange(d)) & 1).astype(float)
    out.setflags(write=False)
    return out


def shapley_weights(d: int) -> np.ndarray:
    """w[s] = s! (d - s - 1)! / d! for coalition sizes s = 0..d-1."""
    return np.array([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d)
                     for s in range(d)])


@lru_cache(maxsize=8)
def shapley_matrix(d: int) -> np.ndarray:
    """M (2**d, d) with phi = v @ M: M[S, j] = w(|S|-1) if j in S else -w(|S|).

    From phi_j = sum_{S not containing j} w(|S|) (v(S + j) - v(S)): every coalition T that contains
    j enters with +w(|T| - 1), every coalition S without j with -w(|S|). (w(d) is never used.)"""
    masks = coalition_masks(d)
    size = masks.sum(1).astype(int)
    w = np.append(shapley_weights(d), 0.0)
    plus = w[np.maximum(size - 1, 0)][:, None]
    minus = w[size][:, None]
    m = np.where(masks > 0, plus, -minus)
    m.setflags(write=False)
    return m


def shapley_from_values(values: np.ndarray) -> np.ndarray:
    """Shapley values (n, d) from coalition values (n, 2**d) indexed by the coalition bitmask."""
    values = np.atleast_2d(values)
    size = values.shape[1]
    d = int(round(math.log2(size)))
    if 2 ** d != size:
        raise ValueError(f"expected 2**d coalition values per row, got {size}")
    return values @ shapley_matrix(d)


def groups_to_slices(groups: Sequence[tuple[str, int, int]] | None, n_columns: int):
    if groups is None:
        return [(str(i), i, i + 1) for i in range(n_columns)]
    return list(groups)


def shapley_bruteforce(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, baseline: np.ndarray,
                       groups: Sequence[tuple[str, int, int]] | None = None) -> np.ndarray:
    """Reference Shapley values of one instance by explicit enumeration (2**d model calls)."""
    x, baseline = np.asarray(x, float), np.asarray(baseline, float)
    groups = groups_to_slices(groups, x.shape[0])
    d = len(groups)

    def value(coalition: frozenset) -> float:
        z = baseline.copy()
        for j in coalition:
            _, a, b = groups[j]
            z[a:b] = x[a:b]
        return float(f(z[None, :])[0])

    cache: dict[frozenset, float] = {}
    for size in range(d + 1):
        for combo in itertools.combinations(range(d), size):
            key = frozenset(combo)
            cache[key] = value(key)
    phi = np.zeros(d)
    for j in range(d):
        others = [k for k in range(d) if k != j]
        for size in range(d):
            weight = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for combo in itertools.combinations(others, size):
                s = frozenset(combo)
                phi[j] += weight * (cache[s | {j}] - cache[s])
    return phi
