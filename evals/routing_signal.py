"""Is there anything to route on inside a task? A permutation test on recorded outcomes.

A router can beat "take each task's best expert" only where the query text says which expert
will do better on *that* query. This measures that signal directly, per task, on a training
table alone (no test files):

- Within each task, a learned router (kNN, MLP, ...) is cross-validated on that task's queries
  only (so recognising the task is not what it gets credit for).
- **gain**: accuracy of its per-query pick minus that of the fold's best expert for the task
  (chosen on the same training folds), in points.
- **interaction**: the correlation between predicted and recorded scores after removing each
  query's mean over experts (how hard the query is) and each expert's mean over the task (how
  good the expert is): the query-by-expert part that per-query routing lives on.
- **null**: the same, after the outcome rows are shuffled among the task's queries. That keeps
  every expert's accuracy and every query's difficulty mix but cuts the link between a query's
  text and its outcomes. The p-value is the share of shuffles scoring at least as high
  ((1 + count) / (1 + permutations)); the task average uses the same shuffle of every task in
  one permutation.

A gain or interaction inside its null's spread means the table holds no per-query signal the
router's features can find; no router on those features can then be expected to beat the best
expert per task except by chance.

    >>> res = routing_signal(table, ["knn", "mlp"], permutations=50)
    >>> res["routers"]["knn"]["task_average"]["gain"], res["routers"]["knn"]["task_average"]["p_gain"]
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from composer.errors import RoutingError

MIN_PER_FOLD = 2  # a task needs this many queries per fold to be tested
# routers that learn every expert's score from the query's vector alone (no task labels, no LLM)
LEARNED = ("knn", "mlp", "linear", "logistic", "mf")


def _folds(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(n) % k


def _interaction(M: np.ndarray) -> np.ndarray:
    """M minus its row means and column means (plus the grand mean), NaN-aware."""
    with np.errstate(invalid="ignore"):
        r = np.nanmean(M, axis=1, keepdims=True)
        c = np.nanmean(M, axis=0, keepdims=True)
        return M - r - c + np.nanmean(M)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    m = np.isfinite(a) & np.isfinite(b)
    a, b = a[m], b[m]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _cv_task(make: Callable[[], Any], X: np.ndarray, Y: np.ndarray, fold: np.ndarray, k: int) -> tuple[float, float]:
    """(gain in points, interaction correlation) of one router cross-validated on one task."""
    n, _ = Y.shape
    P = np.full(Y.shape, np.nan)
    base = np.full(n, np.nan)
    for f in range(k):
        te, tr = fold == f, fold != f
        r = make().fit_vectors(X[tr], Y[tr], [str(j) for j in range(Y.shape[1])])
        P[te] = r._predict(X[te])  # noqa: SLF001 - the router's own prediction on precomputed vectors
        base[te] = Y[te, int(np.argmax(r.train_means_))]
    pick = np.argmax(np.nan_to_num(P, nan=-np.inf), axis=1)
    got = Y[np.arange(n), pick]
    ok = np.isfinite(got) & np.isfinite(base)
    gain = 100 * float(np.mean(got[ok] - base[ok])) if ok.any() else 0.0
    inter = _corr(_interaction(P).ravel(), _interaction(Y).ravel())
    return gain, inter


def routing_signal(table, routers: Sequence[str] = ("knn",), *, folds: int = 5, permutations: int = 50,
                   seed: int = 0, params: dict[str, dict] | None = None, embedder=None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per router and task: CV gain over the task's best expert and the query-by-expert
    correlation, each with its permutation null and p-value (see the module doc)."""
    from composer.routers.base import make_router

    if folds < 2:
        raise RoutingError(f"folds must be 2 or more, got {folds}")
    if permutations < 1:
        raise RoutingError(f"permutations must be 1 or more, got {permutations}")
    experts = list(table.experts)
    if len(experts) < 2:
        raise RoutingError(f"{table.source}: routing needs 2 experts or more, the table has {experts}")
    params = params or {}
    other = [n for n in routers if n not in LEARNED]
    if other:
        raise RoutingError(f"router(s) {other}: the signal test takes routers that learn each expert's score "
                           f"from the query's embedding alone: {', '.join(LEARNED)}")
    def build(name: str):  # a fresh router as the user configured it (one per CV fold below)
        return make_router(name, **{"seed": seed, **params.get(name, {})})

    protos = {name: build(name) for name in routers}
    Y = table.credit_matrix(experts).to_numpy(dtype=float)
    labels = np.asarray(table.task_of().tolist())
    prompts = list(table.prompts())
    tasks, skipped = [], {}
    for t in sorted(set(labels.tolist())):
        n_t = int((labels == t).sum())
        if n_t < folds * MIN_PER_FOLD:
            skipped[t] = f"{n_t} queries; needs {folds * MIN_PER_FOLD} for {folds} folds"
        else:
            tasks.append(t)
    if not tasks:
        raise RoutingError(f"{table.source}: no task has {folds * MIN_PER_FOLD} queries or more for {folds}-fold "
                           f"cross-validation ({skipped})")
    vectors: dict[str, np.ndarray] = {}  # one embedding pass per spec, shared by the routers using it
    for r in protos.values():
        if r.embedding_model not in vectors:
            vectors[r.embedding_model] = np.asarray(r.use_embedder(embedder).embedder.encode(prompts),
                                                    dtype=np.float32)
    rng = np.random.default_rng(seed)
    idx = {t: np.flatnonzero(labels == t) for t in tasks}
    fold = {t: _folds(len(idx[t]), folds, rng) for t in tasks}
    perms = [{t: rng.permutation(len(idx[t])) for t in tasks} for _ in range(permutations)]
    out: dict[str, Any] = {"source": table.source, "experts": experts, "folds": folds, "permutations": permutations,
                           "seed": seed, "task_sizes": {t: len(idx[t]) for t in tasks}, "skipped": skipped,
                           "routers": {}}
    for name, proto in protos.items():
        X = vectors[proto.embedding_model]
        make = partial(build, name)

        real = {t: _cv_task(make, X[idx[t]], Y[idx[t]], fold[t], folds) for t in tasks}
        null = {t: np.empty((permutations, 2)) for t in tasks}
        for p, perm in enumerate(perms):
            for t in tasks:
                null[t][p] = _cv_task(make, X[idx[t]], Y[idx[t]][perm[t]], fold[t], folds)
            if progress and (p + 1) % max(1, permutations // 5) == 0:
                progress(f"{name}: {p + 1}/{permutations} permutations")
        per_task = {t: _summary(np.array(real[t]), null[t]) for t in tasks}
        avg_real = np.mean([real[t] for t in tasks], axis=0)
        avg_null = np.mean([null[t] for t in tasks], axis=0)
        out["routers"][name] = {"embedding_model": proto.embedding_model, "tasks": per_task,
                                "task_average": _summary(avg_real, avg_null)}
    return out


def _summary(real: np.ndarray, null: np.ndarray) -> dict[str, float]:
    """real: (gain, interaction); null: (permutations, 2)."""
    res: dict[str, float] = {}
    for j, key in enumerate(("gain", "interaction")):
        nd = null[:, j]
        res[key] = round(float(real[j]), 4 if key == "interaction" else 2)
        res[f"{key}_null_mean"] = round(float(nd.mean()), 4 if key == "interaction" else 2)
        res[f"{key}_null_q95"] = round(float(np.quantile(nd, 0.95)), 4 if key == "interaction" else 2)
        res[f"p_{key}"] = round(float((1 + np.sum(nd >= real[j] - 1e-12)) / (1 + len(nd))), 4)
    return res


def markdown(res: dict[str, Any]) -> str:
    """The result as a markdown table, one row per router and task."""
    lines = [f"{res['source']}: {res['folds']}-fold CV within each task, {res['permutations']} permutations "
             f"(seed {res['seed']})", "",
             "| router | task | queries | gain vs task's best (pts) | null 95 % | p | interaction r | null 95 % | p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["routers"].items():
        rows = [*r["tasks"].items(), ("task average", r["task_average"])]
        for t, s in rows:
            n = res["task_sizes"].get(t, sum(res["task_sizes"].values()))
            lines.append(f"| {name} | {t} | {n} | {s['gain']:+.2f} | {s['gain_null_q95']:+.2f} | {s['p_gain']:.3f} | "
                         f"{s['interaction']:+.4f} | {s['interaction_null_q95']:+.4f} | {s['p_interaction']:.3f} |")
    for t, why in res["skipped"].items():
        lines.append(f"\nskipped {t}: {why}")
    return "\n".join(lines)
