"""Router metrics with their peers' definitions.

RouteLLM (`routellm/evals/evaluate.py`, `benchmarks.py`), for a strong/weak pair:
- the curve: thresholds are the 11 edges of 10 equal-count bins of the router's strong-preference
  score (`pd.qcut(scores, 10, retbins=True)`); at edge i a query goes to the strong model when its
  score >= edge (> edge for the last one); a point is (% strong calls, accuracy %).
- CPT(x%): `np.interp(weak + x * (strong - weak), accuracy, strong_pct)` over the curve sorted
  by strong %: the % of strong calls needed to reach x of the quality gap.
- AUC: `np.trapz(accuracy, strong_pct / 100)`; APGR: `(AUC - weak_auc) / (strong_auc - weak_auc)`
  with weak_auc / strong_auc the AUC of the constant weak / strong accuracies over the same x.

RouterBench (`evaluation/AIQ.py`):
- AIQ: the non-decreasing convex hull of a router's (total cost, performance) points, extended
  flat to the largest cost among all routers compared, area under it / that largest cost.
- the zero router: mixing single models at random; its curve is the hull of the models' points.

composer's own check, `midpoint_gain`: at the cost halfway between the cheapest and the most
expensive single expert, a router's hull (as AIQ draws it) minus the zero router's hull.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_trapz = getattr(np, "trapezoid", None) or np.trapz


def routellm_thresholds(strong_pref: np.ndarray, num_results: int = 10) -> np.ndarray:
    """The bin edges pd.qcut(strong_pref, num_results, retbins=True) returns (linear quantiles)."""
    return np.quantile(np.asarray(strong_pref, dtype=float), np.linspace(0.0, 1.0, num_results + 1))


def routellm_selections(strong_pref: np.ndarray, num_results: int = 10) -> list[tuple[float, np.ndarray]]:
    """(threshold, boolean 'route to strong' per query) for each RouteLLM threshold."""
    edges = routellm_thresholds(strong_pref, num_results)
    out = []
    for i, t in enumerate(edges):
        sel = strong_pref >= t if i != len(edges) - 1 else strong_pref > t
        out.append((float(t), sel))
    return out


def _sorted_curve(strong_pct: Sequence[float], accuracy: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(strong_pct, dtype=float)
    y = np.asarray(accuracy, dtype=float)
    order = np.argsort(x, kind="stable")  # RouteLLM: sort_values(by=["strong_percentage"])
    return x[order], y[order]


def cpt(strong_pct, accuracy, weak_acc: float, strong_acc: float, pct: float) -> float:
    """RouteLLM's call-performance threshold: % strong calls to reach `pct` of the quality gap."""
    x, y = _sorted_curve(strong_pct, accuracy)
    return float(np.interp(pct * (strong_acc - weak_acc) + weak_acc, y, x))


def auc(strong_pct, accuracy) -> float:
    x, y = _sorted_curve(strong_pct, accuracy)
    return float(_trapz(y, x / 100))


def apgr(strong_pct, accuracy, weak_acc: float, strong_acc: float) -> float:
    """Average performance gap recovered (RouteLLM)."""
    x, _ = _sorted_curve(strong_pct, accuracy)
    weak_auc = float(_trapz(np.full(len(x), weak_acc), x / 100))
    strong_auc = float(_trapz(np.full(len(x), strong_acc), x / 100))
    if strong_auc == weak_auc:
        return float("nan")
    return (auc(strong_pct, accuracy) - weak_auc) / (strong_auc - weak_auc)


def pair_metrics(strong_pct, accuracy, weak_acc: float, strong_acc: float) -> dict[str, float]:
    """CPT(20/50/80%), AUC and APGR exactly as RouteLLM's generate_results computes them."""
    return {"cpt20": cpt(strong_pct, accuracy, weak_acc, strong_acc, 0.2),
            "cpt50": cpt(strong_pct, accuracy, weak_acc, strong_acc, 0.5),
            "cpt80": cpt(strong_pct, accuracy, weak_acc, strong_acc, 0.8),
            "auc": auc(strong_pct, accuracy),
            "apgr": apgr(strong_pct, accuracy, weak_acc, strong_acc)}


# -- RouterBench AIQ ----------------------------------------------------------------------------

def nondecreasing_convex_hull(points: np.ndarray) -> np.ndarray:
    """RouterBench's non-decreasing convex hull of (cost, performance) points, sorted by cost.

    The upper concave envelope from the cheapest point, cut where it stops increasing. This is
    what `get_non_descreasing_convex_hull_of` computes (it evaluates the envelope at every
    point's cost and then drops the points lower than their predecessor); the area under the
    result is the same.
    """
    pts = np.asarray(points, dtype=float)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        raise ValueError("no finite (cost, performance) points")
    # best performance at each cost, then sort by cost
    order = np.lexsort((-pts[:, 1], pts[:, 0]))
    pts = pts[order]
    _, first = np.unique(pts[:, 0], return_index=True)
    pts = pts[first]
    hull: list[np.ndarray] = []
    for p in pts:  # Andrew's monotone chain, upper part
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # hull[-1] on/below chord
                hull.pop()
            else:
                break
        hull.append(p)
    h = np.array(hull)
    peak = int(np.argmax(h[:, 1]))
    return h[: peak + 1]


def aiq(curves: dict[str, np.ndarray]) -> dict[str, float]:
    """AIQ of several routers' (cost, performance) point sets, compared on a common cost range."""
    hulls = {name: nondecreasing_convex_hull(p) for name, p in curves.items()}
    max_x = max(float(h[:, 0].max()) for h in hulls.values())
    if max_x <= 0:
        return {name: float("nan") for name in curves}
    out = {}
    for name, h in hulls.items():
        ext = np.vstack([h, [max_x, h[-1, 1]]])
        out[name] = float(_trapz(ext[:, 1], ext[:, 0]) / max_x)
    return out


# -- cost-quality curve at the middle of the single experts' cost range --------------------------

def hull_value_at(points: np.ndarray, cost: float) -> float:
    """Quality of the non-decreasing convex hull of (cost, performance) points at `cost`.

    Linear between hull points and flat past the last one (as AIQ extends it); NaN below the
    cheapest point (the router cannot run that cheaply; AIQ counts that range as 0)."""
    h = nondecreasing_convex_hull(points)
    if cost < h[0, 0]:
        return float("nan")
    return float(np.interp(cost, h[:, 0], h[:, 1]))


def midpoint_gain(curves: dict[str, np.ndarray], singles: np.ndarray) -> dict[str, Any]:
    """Each router's hull versus the zero router's at the cost halfway between the cheapest and
    the most expensive single expert.

    curves: router name -> (cost, performance) points of its sweep; singles: one (cost,
    performance) point per single expert (the zero router mixes them by cost: its curve is their
    non-decreasing convex hull). Returns {"cost": mid cost, "zero_router": its quality there,
    "routers": {name: {"quality", "gain"}}} with gain = router minus zero router (NaN when the
    router's cheapest point costs more than the mid cost)."""
    s = np.asarray(singles, dtype=float)
    s = s[np.isfinite(s).all(axis=1)]
    if len(s) == 0:
        raise ValueError("no finite single-expert (cost, performance) points")
    mid = float((s[:, 0].min() + s[:, 0].max()) / 2)
    zero = hull_value_at(s, mid)
    out = {}
    for name, pts in curves.items():
        q = hull_value_at(pts, mid)
        out[name] = {"quality": q, "gain": q - zero}
    return {"cost": mid, "zero_router": zero, "routers": out}
