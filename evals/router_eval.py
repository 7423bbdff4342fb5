"""Offline router evaluation: train on outcome tables, replay decisions on held-out ones.

No model runs: a decision's quality is the recorded score of the expert it chose, counted as
accuracy by its task's score kind (a `correct_if_positive` score counts 1 when > 0: RouterDC's
metric), its cost the recorded (or price-estimated) cost. For every router and task it reports accuracy, cost, the
oracle gap closed, the cost-quality curve of its lam / threshold / top-p sweep, RouteLLM's
CPT(20/50/80%), AUC and APGR (strong/weak pairs), and RouterBench's AIQ against the zero router.
Missing scores are excluded and counted, never read as 0.

    >>> res = evaluate(train, test, ["best_single", "knn", "mlp"], out_dir="runs/eval")

Multi-expert decisions (symbolic k>1, dynamic) are scored by their first (highest-ranked)
expert, i.e. as if the aggregator returned it; `accuracy_best_of` is the upper bound if it
always picked the best candidate. Their cost is the sum over the experts called.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from composer.errors import RoutingError
from composer.outcomes import OutcomeTable
from composer.evals.router_metrics import aiq, midpoint_gain, pair_metrics, routellm_selections
from composer.routers.base import make_router


def _nanmean(x) -> float | None:
    x = np.asarray(x, dtype=float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


class Replay:
    """The test table as arrays: true scores, true costs, tasks."""

    def __init__(self, test: OutcomeTable, experts: list[str], expected_costs: np.ndarray):
        self.experts = experts
        self.query_ids = test.query_ids
        self.prompts = test.prompts()
        self.tasks = np.asarray(test.task_of().tolist())
        self.task_names = list(dict.fromkeys(self.tasks.tolist()))
        self.Y = test.credit_matrix(experts).to_numpy(dtype=float)
        C = test.cost_matrix(experts).to_numpy(dtype=float)
        self.cost_unit = "usd" if np.isfinite(C).any() else "calls"
        if self.cost_unit == "calls":
            C = np.ones_like(self.Y)
        # a cost missing in the test table falls back to the expert's mean training cost
        self.C = np.where(np.isfinite(C), C, expected_costs[None, :])

    def point(self, chosen: list[list[int]]) -> dict[str, Any]:
        """Accuracy / cost of one set of decisions, overall and per task."""
        n = len(chosen)
        first = np.array([c[0] for c in chosen])
        rows = np.arange(n)
        primary = self.Y[rows, first]
        n_exp = np.fromiter(map(len, chosen), dtype=int, count=n)
        if (n_exp == 1).all():  # the common case, vectorised
            best_of, cost = primary, self.C[rows, first]
        else:
            best_of = np.array([np.nanmax(self.Y[i, c]) if np.isfinite(self.Y[i, c]).any() else np.nan
                                for i, c in enumerate(chosen)])
            cost = np.array([self.C[i, c].sum() for i, c in enumerate(chosen)])
        task_acc = {t: _nanmean(primary[self.tasks == t]) for t in self.task_names}
        task_cost = {t: float(cost[self.tasks == t].sum()) for t in self.task_names}
        counts = np.bincount(first, minlength=len(self.experts))
        return {
            "accuracy": _nanmean(primary), "accuracy_best_of": _nanmean(best_of),
            "task_accuracy": task_acc, "task_average": _nanmean(list(task_acc.values())),
            "cost": float(cost.sum()), "cost_per_query": float(cost.mean()), "task_cost": task_cost,
            "missing": int(np.isnan(primary).sum()), "experts_per_query": float(n_exp.mean()),
            "share": {e: float(c / n) for e, c in zip(self.experts, counts) if c},
        }


def evaluate(train: OutcomeTable, test: OutcomeTable | None, routers: list[str], *,
             params: dict[str, dict] | None = None, sweep: bool = True, n_points: int = 20,
             embedder=None, out_dir: str | Path | None = None, strong: str | None = None,
             weak: str | None = None, progress=print, cv: int = 0, seed: int = 0,
             keep_choices: bool = False, cv_by_task: bool = False) -> dict[str, Any]:
    """Fit each router on `train`, replay it on `test`; write results.json, decisions.jsonl and
    curves.png under `out_dir` when given. Returns the results dict.

    cv=K (test None): K-fold cross-fitting on `train` alone: each query's predicted scores (and
    expected costs) come from a router fitted on the other K-1 folds (folds drawn per task with
    `seed`), and every query is scored; selection and sweeps then run on those predictions with
    the last fold's router (selection depends only on the scores, costs and its parameters).

    cv_by_task (test None): leave one task out: each task's queries are scored by a router fitted
    on the other tasks only (how a router carries to a kind of query it never saw).

    keep_choices: each router's entry also lists its first choice per test query (expert
    indices, in test order), for paired statistics over the same queries."""
    from composer.routers.embed import Embedder

    if cv and cv_by_task:
        raise RoutingError("give cv folds or leave-one-task-out, not both")
    if cv or cv_by_task:
        if test is not None:
            raise RoutingError("give either a test table or cv folds, not both")
        if cv_by_task and len(set(train.task_of().tolist())) < 2:
            raise RoutingError(f"leaving one task out needs 2 tasks or more; {train.source} has "
                               f"{sorted(set(train.task_of().tolist()))}")
        if cv and (cv < 2 or cv > train.n_queries):
            raise RoutingError(f"cv needs 2 to {train.n_queries} folds, got {cv}")
        test = train
    elif test is None:
        raise RoutingError("give a test table (or cv folds)")
    experts = train.experts
    missing = sorted(set(experts) ^ set(test.experts))
    if missing:
        raise RoutingError(f"train and test tables must have the same experts; differing: {missing}")
    params = params or {}
    embedder = embedder or Embedder()
    embedders: dict[str, Embedder] = {embedder.model_id: embedder}
    train_means = train.accuracies().reindex(experts).to_numpy(dtype=float)
    train_costs = train.cost_matrix(experts).to_numpy(dtype=float)
    exp_costs = (np.nan_to_num(np.nanmean(train_costs, axis=0), nan=0.0) if np.isfinite(train_costs).any()
                 else np.zeros(len(experts)))
    rep = Replay(test, experts, exp_costs)
    res: dict[str, Any] = {
        "train": train.source, "test": test.source, "experts": experts, "tasks": rep.task_names,
        "n_train_queries": train.n_queries - (-(-train.n_queries // cv) if cv else 0),
        "n_test_queries": test.n_queries, "cost_unit": rep.cost_unit, "cv": "task" if cv_by_task else cv or None,
        "task_sizes": {t: int((rep.tasks == t).sum()) for t in rep.task_names},
        "score_kinds": {"train": train.score_kinds, "test": test.score_kinds},
        "routers": {}, "params": params,
    }
    n = len(rep.query_ids)
    res["singles"] = {e: rep.point([[j]] * n) for j, e in enumerate(experts)}
    oracle_pick = [[int(np.nanargmax(np.where(np.isfinite(r), r, -np.inf)))] for r in rep.Y]
    res["oracle"] = rep.point(oracle_pick)
    best = max(experts, key=lambda e: res["singles"][e]["task_average"] or -1)
    res["best_single"] = {"expert": best, **{k: res["singles"][best][k] for k in
                                              ("accuracy", "task_average", "task_accuracy", "cost")}}
    per_task = {t: max(experts, key=lambda e: res["singles"][e]["task_accuracy"][t] or -1) for t in rep.task_names}
    res["best_single_per_task"] = {t: {"expert": e, "accuracy": res["singles"][e]["task_accuracy"][t]}
                                   for t, e in per_task.items()}
    pair = _pair(experts, train_means, strong, weak)
    if cv_by_task:
        folds = [np.flatnonzero(rep.tasks == t) for t in rep.task_names]
        res["n_train_queries"] = n - min(len(f) for f in folds)  # the largest training set
    else:
        folds = kfold_positions(rep.tasks, cv, seed) if cv else [np.arange(n)]
    decisions: dict[str, list] = {}
    for name in routers:
        S, C = np.empty((n, len(experts))), np.empty((n, len(experts)))
        fit_s = predict_s = 0.0
        for idx in folds:
            t0 = time.perf_counter()
            r = make_router(name, **params.get(name, {}))
            # one loaded embedder per embedding spec, shared by the routers that use it
            own = Embedder(r.embedding_model)
            r.use_embedder(embedders.setdefault(own.model_id, own))
            if name == "oracle":
                r.fit(test)
            else:
                r.fit(train.filter(query_ids=np.delete(np.asarray(rep.query_ids), idx).tolist()) if test is train
                      else train)
            if list(r.experts_) != experts:  # a fold's table listing its experts in another order
                raise RoutingError(f"router '{name}' was fitted on experts {r.experts_}, expected {experts}")
            t1 = time.perf_counter()
            S[idx] = r.predict_scores_texts([rep.prompts[i] for i in idx])
            C[idx] = r.expected_costs(len(idx))
            fit_s, predict_s = fit_s + t1 - t0, predict_s + time.perf_counter() - t1
        default = r.select(S, C)
        entry: dict[str, Any] = {"params": r.get_params(), "fit_s": round(fit_s, 2),
                                 "predict_s": round(predict_s, 2), "default": rep.point(default)}
        entry["oracle_gap_closed"] = _gap(entry["default"], res)
        if keep_choices:
            entry["choices"] = [int(c[0]) for c in default]
        if sweep:
            entry["curve"] = [{"knob": knob, **rep.point(r.select(S, C, **knob))}
                              for knob in r.sweep_knobs(S, C, n_points)]
        if pair is not None:
            entry["pair"] = _routellm_curve(r, S, C, rep, pair)
        decisions[name] = [{"query_id": q, "task": t, "experts": [experts[j] for j in c],
                            "score": None if np.isnan(rep.Y[i, c[0]]) else float(rep.Y[i, c[0]]),
                            "cost": float(rep.C[i, c].sum())}
                           for i, (q, t, c) in enumerate(zip(rep.query_ids, rep.tasks, default))]
        res["routers"][name] = entry
        d = entry["default"]
        progress(f"{name:<12} task-avg {d['task_average']:.4f}  pooled {d['accuracy']:.4f}  "
                 f"cost {d['cost']:.4g}  gap closed {_pct(entry['oracle_gap_closed'])}  "
                 f"(fit {entry['fit_s']}s, predict {entry['predict_s']}s)")
    if pair is not None:
        res["pair"] = {"strong": experts[pair[0]], "weak": experts[pair[1]]}
    if sweep and rep.cost_unit == "usd":
        res["aiq"] = _aiq_table(res, rep)
        res["midpoint"] = _midpoint_table(res, rep)
    res["summary"] = summary_rows(res)
    if out_dir is not None:
        write_outputs(res, decisions, Path(out_dir))
    return res


def kfold_positions(tasks: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """K folds of row positions, drawn per task (each task spread evenly over the folds)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(tasks), dtype=int)
    start = 0
    for t in dict.fromkeys(np.asarray(tasks).tolist()):
        pos = rng.permutation(np.flatnonzero(np.asarray(tasks) == t))
        fold[pos] = (np.arange(len(pos)) + start) % k  # continue the rotation across tasks
        start += len(pos)
    return [np.flatnonzero(fold == f) for f in range(k)]


def _pair(experts, train_means, strong, weak) -> tuple[int, int] | None:
    if strong or weak:
        if not (strong in experts and weak in experts):
            raise RoutingError(f"--strong/--weak must both name experts of the table: {experts}")
        return experts.index(strong), experts.index(weak)
    if len(experts) != 2:
        return None
    s = int(np.argmax(train_means))
    return s, 1 - s


def _routellm_curve(r, S, C, rep: Replay, pair) -> dict[str, Any]:
    """RouteLLM's 11-threshold curve over the router's strong preference, and its metrics."""
    s, w = pair
    pref = r.strong_preference(S, s, w) if hasattr(r, "strong_preference") else S[:, s] - S[:, w]
    pts = []
    for thr, sel in routellm_selections(pref, 10):
        chosen = [[s] if x else [w] for x in sel]
        p = rep.point(chosen)
        pts.append({"threshold": thr, "strong_pct": 100.0 * float(sel.mean()), "accuracy_pct": 100.0 * p["accuracy"],
                    "cost": p["cost"]})
    weak_acc = 100.0 * _nanmean(rep.Y[:, w])
    strong_acc = 100.0 * _nanmean(rep.Y[:, s])
    m = pair_metrics([p["strong_pct"] for p in pts], [p["accuracy_pct"] for p in pts], weak_acc, strong_acc)
    return {"points": pts, "weak_accuracy_pct": weak_acc, "strong_accuracy_pct": strong_acc, **m}


def _gap(point, res) -> float | None:
    lo, hi = res["best_single"]["task_average"], res["oracle"]["task_average"]
    if point["task_average"] is None or hi is None or hi == lo:
        return None
    return (point["task_average"] - lo) / (hi - lo)


def _aiq_table(res, rep: Replay) -> dict[str, Any]:
    """AIQ per task and overall for every router's sweep, with the zero router of the singles."""
    out: dict[str, Any] = {}
    for scope in [*rep.task_names, "all"]:
        curves = {name: pts for name, e in res["routers"].items() if len(pts := _router_points(e, scope))}
        curves["zero_router"] = _single_points(res, scope)
        out[scope] = aiq(curves)
    names = [*res["routers"], "zero_router"]
    out["task_mean"] = {nm: _nanmean([out[t].get(nm, np.nan) for t in rep.task_names]) for nm in names}
    return out


def _points(points, scope) -> np.ndarray:
    """(cost, accuracy) of each point that has an accuracy in `scope`, as an (n, 2) array."""
    pts = [(_cost(p, scope), _acc(p, scope)) for p in points]
    return np.array([p for p in pts if p[1] is not None], dtype=float).reshape(-1, 2)


def _router_points(e, scope) -> np.ndarray:
    return _points(e.get("curve", []) + [e["default"]], scope)


def _single_points(res, scope) -> np.ndarray:
    return _points(res["singles"].values(), scope)


def _midpoint_table(res, rep: Replay) -> dict[str, Any]:
    """Per task and overall: each router's hull minus the zero router's at the cost halfway
    between the cheapest and the most expensive single expert (`midpoint_gain`)."""
    out: dict[str, Any] = {}
    for scope in [*rep.task_names, "all"]:
        curves = {name: pts for name, e in res["routers"].items() if len(pts := _router_points(e, scope))}
        singles = _single_points(res, scope)
        if len(singles):
            m = midpoint_gain(curves, singles)
            out[scope] = {"cost": m["cost"], "zero_router": m["zero_router"],
                          "routers": {k: {kk: _finite(vv) for kk, vv in v.items()} for k, v in m["routers"].items()}}
    return out


def _finite(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _cost(p, scope):
    return p["cost"] if scope == "all" else p["task_cost"][scope]


def _acc(p, scope):
    return p["accuracy"] if scope == "all" else p["task_accuracy"][scope]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def summary_rows(res) -> list[dict[str, Any]]:
    rows = []
    for name, e in res["routers"].items():
        d = e["default"]
        row = {"router": name, "task_average": d["task_average"], "accuracy": d["accuracy"],
               "cost": d["cost"], "oracle_gap_closed": e["oracle_gap_closed"], "missing": d["missing"],
               "experts_per_query": d["experts_per_query"]}
        if "pair" in e:
            row.update({k: e["pair"][k] for k in ("apgr", "cpt20", "cpt50", "cpt80", "auc")})
        if "aiq" in res:
            row["aiq_task_mean"] = res["aiq"]["task_mean"].get(name)
            row["aiq_all"] = res["aiq"]["all"].get(name)
        if "midpoint" in res and "all" in res["midpoint"]:
            row["gain_at_mid_cost"] = res["midpoint"]["all"]["routers"].get(name, {}).get("gain")
        rows.append(row)
    return rows


def write_outputs(res: dict, decisions: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float), encoding="utf-8")
    with (out / "decisions.jsonl").open("w", encoding="utf-8") as f:
        for name, rows in decisions.items():
            for row in rows:
                f.write(json.dumps({"router": name, **row}, ensure_ascii=False) + "\n")
    from composer.evals.router_plot import plot_accuracy, plot_curves

    plot_curves(res, out / "curves.png")
    plot_accuracy(res, out / "accuracy.png")
