"""The Router contract (scikit-learn style) and the ROUTERS registry.

Every router predicts, for each query, a score per expert (an estimate of how well that expert
answers it) and knows each expert's expected cost. Selection is then shared:

- default: the expert maximising ``score - lam * cost`` (RouterBench's willingness to pay is
  ``1 / lam``); ``k > 1`` takes the top k by that utility;
- ``budget``: only experts whose expected cost per query is at most the budget;
- ``calibrate(...)``: picks ``lam`` on held-out queries so the mean cost per query meets a
  target, or the share of calls to the expensive experts does (RouteLLM's calibration).

    >>> r = make_router("knn", k=20).fit(train_table)
    >>> r.route(["What is 17 * 23?"])[0].experts
    >>> r.save("runs/knn"); same = load_router(None, "runs/knn")

Subclasses implement `_fit(X, Y, table)` and `_predict(X) -> (n, E)`; `X` is the embedding
matrix (or the list of texts when `uses_embeddings` is False). Fitted attributes end in `_`.
State is saved without pickle: JSON plus a NumPy .npz (allow_pickle=False).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from composer.errors import NotFittedError, RoutingError
from composer.types import Query, RouteDecision, new_query_id
from composer.routers.embed import DEFAULT_EMBEDDING, Embedder

# name -> "module:Class"; modules import lazily so `import routers` stays light.
ROUTERS: dict[str, str] = {
    "random": "composer.routers.baselines:RandomRouter",
    "best_single": "composer.routers.baselines:BestSingleRouter",
    "oracle": "composer.routers.baselines:OracleRouter",
    "knn": "composer.routers.learned:KNNRouter",
    "mlp": "composer.routers.learned:MLPRouter",
    "linear": "composer.routers.learned:LinearRouter",
    "logistic": "composer.routers.learned:LogisticRouter",
    "mf": "composer.routers.learned:MFRouter",
    "symbolic": "composer.routers.symbolic:SymbolicMoERouter",
    "coe": "composer.routers.coe:CoERouter",
    "dynamic": "composer.routers.dynamic:DynamicTopPRouter",
    "cascade": "composer.routers.cascade:CascadeRouter",
    "stack": "composer.routers.stack:StackRouter",
}
STATE_FORMAT = 1
_SMALL_BATCH = 64  # batches up to this size predict with one BLAS thread


def router_class(name: str) -> type["Router"]:
    try:
        target = ROUTERS[name]
    except KeyError:
        raise RoutingError(f"unknown router '{name}'; known: {', '.join(ROUTERS)}") from None
    mod, cls = target.split(":")
    return getattr(importlib.import_module(mod), cls)


def make_router(name: str, **params) -> "Router":
    cls = router_class(name)
    try:
        return cls(**params)
    except TypeError as exc:
        allowed = ", ".join(cls._param_names())
        raise RoutingError(f"router '{name}': {exc}; its parameters are: {allowed}") from None


def load_router(name: str | None, path: str | Path | None, *, experts: Sequence[str] | None = None,
                **params) -> "Router":
    """A fitted router from `path` (saved by `Router.save`), or an unfitted-but-usable one by name.

    `experts` restricts routing to that pool (e.g. a pipeline's experts); `params` override
    selection parameters (lam, k, budget, ...).
    """
    if path is not None:
        router = Router.load(path)
        if name is not None and name != router.name and name in ROUTERS:
            raise RoutingError(f"{path} holds a '{router.name}' router, not '{name}'")
        if params:
            router.set_params(**params)
    elif name is not None:
        router = make_router(name, **params)
        if not router.fit_free:
            raise NotFittedError(f"router '{name}' must be trained first: run `composer router train "
                                 f"--router {name} --outcomes FILE --out DIR` and set router_path")
        if experts and "experts" in router._param_names() and not getattr(router, "experts", None):
            router.set_params(experts=list(experts))
    else:
        raise RoutingError("give a router name or a saved router path")
    if experts:
        router.restrict(experts)
    return router


def as_queries(queries: Iterable[Query | str]) -> tuple[list[str], list[str]]:
    """(ids, texts) of a batch of Query objects or plain strings."""
    ids, texts = [], []
    for q in queries:
        if isinstance(q, str):
            ids.append(new_query_id())
            texts.append(q)
        elif isinstance(q, Query):
            ids.append(q.id)
            texts.append(q.text if not q.messages else q.chat_messages()[-1]["content"])
        else:
            raise RoutingError(f"expected a Query or a string, got {type(q).__name__}")
    return ids, texts


class Router:
    """Base class: shared fitting of costs, selection, calibration, save/load."""

    name: ClassVar[str] = "router"
    uses_embeddings: ClassVar[bool] = True
    fit_free: ClassVar[bool] = False  # True: usable without fit (given experts)

    def __init__(self, *, lam: float = 0.0, k: int = 1, budget: float | None = None,
                 embedding_model: str = DEFAULT_EMBEDDING, seed: int = 0):
        self.lam = lam
        self.k = k
        self.budget = budget
        self.embedding_model = embedding_model
        self.seed = seed

    # -- params (scikit-learn style) ---------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        # scikit-learn's rule: the parameters are exactly the constructor's keyword arguments
        return [p.name for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def get_params(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self._param_names() if hasattr(self, n)}

    def set_params(self, **params) -> "Router":
        allowed = set(self._param_names())
        for key, value in params.items():
            if key not in allowed:
                raise RoutingError(f"router '{self.name}' has no parameter '{key}'; known: {', '.join(sorted(allowed))}")
            setattr(self, key, value)
        return self

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, outcomes, *, embedder: Embedder | None = None) -> "Router":
        """Learn from an OutcomeTable. Returns self.

        The targets are the table's accuracy credit (`credit_matrix`: a correct_if_positive score
        counts 1 when > 0), i.e. what `composer eval` measures, not the raw stored values."""
        if outcomes.n_queries == 0:
            raise RoutingError(f"cannot fit router '{self.name}' on an empty outcome table")
        if embedder is not None:
            self._embedder = embedder
        self.experts_ = list(outcomes.experts)
        Y = outcomes.credit_matrix(self.experts_).to_numpy(dtype=float)
        if np.isnan(Y).all(axis=0).any():
            empty = [e for e, col in zip(self.experts_, np.isnan(Y).all(axis=0)) if col]
            raise RoutingError(f"expert(s) {empty} have no recorded score in {outcomes.source}; drop them")
        self.train_means_ = np.nanmean(Y, axis=0)
        C = outcomes.cost_matrix(self.experts_).to_numpy(dtype=float)
        self.has_costs_ = bool(np.isfinite(C).any())
        with np.errstate(all="ignore"):
            costs = np.nanmean(C, axis=0) if self.has_costs_ else np.zeros(len(self.experts_))
        self.expert_costs_ = np.nan_to_num(costs, nan=float(np.nanmax(costs)) if self.has_costs_ else 0.0)
        self.lambda_ = None
        self.pool_ = None
        self._fit(self._features(outcomes.prompts()), Y, outcomes)
        return self

    def fit_vectors(self, X, Y: np.ndarray, experts: Sequence[str]) -> "Router":
        """Fit on query vectors already computed and a credit matrix (columns in `experts` order),
        without a table: for routers fitted inside others (the stack's bases) or many times over
        the same vectors (the routing-signal test). Returns self."""
        self.experts_ = list(experts)
        with np.errstate(all="ignore"):
            self.train_means_ = np.nan_to_num(np.nanmean(Y, axis=0), nan=0.0)
        self._fit(X, Y, None)
        return self

    def _fit(self, X, Y: np.ndarray, table) -> None:
        raise NotImplementedError

    def _predict(self, X) -> np.ndarray:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "experts_"):
            raise NotFittedError(f"router '{self.name}' is not fitted; call fit(outcomes) or load a saved one")

    # -- features -----------------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        if getattr(self, "_embedder", None) is None:
            self._embedder = Embedder(self.embedding_model)
        return self._embedder

    def use_embedder(self, embedder: Embedder) -> "Router":
        """Share one loaded embedder between routers (evaluations, servers). One made for another
        embedding spec is not taken: a router's vectors must come from the spec it is fitted on."""
        if embedder is not None and embedder.model_id == Embedder(self.embedding_model).model_id:
            self._embedder = embedder
        return self

    def _features(self, texts: Sequence[str]):
        if not self.uses_embeddings:
            return list(texts)
        return self.embedder.encode(texts)

    # -- prediction -----------------------------------------------------------------------------
    def predict_scores(self, queries: Sequence[Query | str]) -> np.ndarray:
        """(n, E) predicted score of every expert (columns in `experts_` order)."""
        self._check_fitted()
        _, texts = as_queries(queries)
        return self.predict_scores_texts(texts)

    def predict_scores_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._scores(texts)[0]

    def _scores(self, texts: Sequence[str], explain: bool = False) -> tuple[np.ndarray, list[str] | None]:
        self._check_fitted()
        if not texts:
            return np.zeros((0, len(self.experts_))), None
        X = self._features(texts)
        with self._few_threads(len(texts)):
            S, notes = self._predict_explained(X) if explain else (self._predict(X), None)
        S = np.asarray(S, dtype=float)
        if S.shape != (len(texts), len(self.experts_)):
            raise RoutingError(f"router '{self.name}' predicted shape {S.shape} for {len(texts)} queries "
                               f"and {len(self.experts_)} experts")
        return S, notes

    def _few_threads(self, n: int):
        """One BLAS thread for small batches: on a busy CPU a multi-threaded matrix-vector product
        waits on the other core (8 ms instead of 0.4 ms for kNN over 5.6k prompts)."""
        if n > _SMALL_BATCH:
            return contextlib.nullcontext()
        if getattr(self, "_blas", None) is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=1, user_api="blas")

    def _predict_explained(self, X) -> tuple[np.ndarray, list[str] | None]:
        """Scores plus a short note per query for the decision's reason (None: no note)."""
        return self._predict(X), None

    def expected_costs(self, n: int) -> np.ndarray:
        """(n, E) expected cost of each expert per query (the training mean per expert)."""
        return np.broadcast_to(self.expert_costs_, (n, len(self.experts_)))

    # -- selection ------------------------------------------------------------------------------
    def _pool_mask(self) -> np.ndarray:
        if getattr(self, "pool_", None):
            return np.array([e in self.pool_ for e in self.experts_])
        return np.ones(len(self.experts_), dtype=bool)

    def restrict(self, experts: Sequence[str]) -> "Router":
        """Route only among `experts` (all must be known to the router)."""
        self._check_fitted()
        unknown = [e for e in experts if e not in self.experts_]
        if unknown:
            raise RoutingError(f"router '{self.name}' was trained on {self.experts_}; it does not know "
                               f"{unknown}. Train it on outcomes whose expert names match experts.yaml")
        self.pool_ = list(experts)
        return self

    def current_lam(self, lam: float | None = None) -> float:
        if lam is not None:
            return float(lam)
        if getattr(self, "lambda_", None) is not None:
            return float(self.lambda_)
        return float(self.lam)

    def select(self, S: np.ndarray, C: np.ndarray, *, lam: float | None = None, k: int | None = None,
               budget: float | None = None, **_) -> list[list[int]]:
        """Chosen expert indices per query, best first."""
        lam = self.current_lam(lam)
        k = int(k or self.k or 1)
        budget = self.budget if budget is None else budget
        U = S - lam * C
        allowed = np.broadcast_to(self._pool_mask(), U.shape).copy()
        if budget is not None:
            within = C <= budget
            # nothing within budget: fall back to the cheapest allowed expert
            cheapest = np.where(allowed, C, np.inf).argmin(axis=1)
            none = ~(within & allowed).any(axis=1)
            within[none, cheapest[none]] = True
            allowed &= within
        U = np.where(allowed, U, -np.inf)
        if k == 1:
            return [[int(i)] for i in U.argmax(axis=1)]
        order = np.argsort(-U, axis=1, kind="stable")[:, :k]
        return [[int(j) for j in row if np.isfinite(U[i, j])] for i, row in enumerate(order)]

    def sweep_knobs(self, S: np.ndarray, C: np.ndarray, n_points: int = 20) -> list[dict[str, float]]:
        """Selection settings that trace the cost-quality curve (here: lam values)."""
        return [{"lam": lam} for lam in lam_grid(S, C, n_points)]

    def route(self, queries: Iterable[Query | str], *, k: int | None = None, lam: float | None = None,
              budget: float | None = None) -> list[RouteDecision]:
        """One RouteDecision per query: experts chosen, predicted scores and costs, and why."""
        self._check_fitted()
        ids, texts = as_queries(queries)
        if not texts:
            return []
        S, notes = self._scores(texts, explain=True)
        C = self.expected_costs(len(texts))
        chosen = self.select(S, C, lam=lam, k=k, budget=budget)
        return [self._decision(qid, S[i], C[i], chosen[i], lam, notes[i] if notes else None)
                for i, qid in enumerate(ids)]

    def _decision(self, qid: str, s: np.ndarray, c: np.ndarray, chosen: list[int], lam,
                  note: str | None = None) -> RouteDecision:
        names = [self.experts_[j] for j in chosen]
        reason = self._reason(s, c, chosen, lam)
        return RouteDecision(
            query_id=qid, experts=names,
            scores={e: round(float(v), 6) for e, v in zip(self.experts_, s)},
            costs={e: float(v) for e, v in zip(self.experts_, c)},
            reason=f"{reason}; {note}" if note else reason, router=self.name)

    def _reason(self, s: np.ndarray, c: np.ndarray, chosen: list[int], lam) -> str:
        lam = self.current_lam(lam)
        best = chosen[0]
        ranked = np.argsort(-s)
        runner = next((int(j) for j in ranked if j != best), None)
        why = f"{self.name}: {self.experts_[best]} predicted {s[best]:.3f}"
        if runner is not None:
            why += f" (next: {self.experts_[runner]} {s[runner]:.3f})"
        if lam and self.has_costs_:
            why += f"; maximising score - {lam:g} x cost (cost {c[best]:.3g})"
        if len(chosen) > 1:
            why += f"; plus {', '.join(self.experts_[j] for j in chosen[1:])}"
        return why

    # -- calibration (RouteLLM-style, generalised to N experts) ----------------------------------
    def calibrate(self, queries: Sequence[Query | str], *, target_cost: float | None = None,
                  expensive_share: float | None = None, expensive: Sequence[str] | None = None) -> float:
        """Set `lambda_` on held-out queries so that the mean cost per query <= target_cost, or the
        share of calls to `expensive` experts (default: the priciest one) <= expensive_share.
        Returns the chosen lam (the smallest one meeting the target: the most quality)."""
        if (target_cost is None) == (expensive_share is None):
            raise RoutingError("calibrate needs exactly one of target_cost or expensive_share")
        self._check_fitted()
        if not self.has_costs_:
            raise RoutingError(f"router '{self.name}' was fitted on outcomes without costs; give prices "
                               "(--prices experts.yaml) so cost-based calibration has something to trade")
        S = self.predict_scores(queries)
        C = self.expected_costs(len(S))
        if expensive is None:
            expensive = [self.experts_[int(np.argmax(self.expert_costs_))]]
        exp_idx = np.array([e in set(expensive) for e in self.experts_])
        best_lam = None
        for lam in lam_grid(S, C, 200, extra_high=True):
            pick = np.array([c[0] for c in self.select(S, C, lam=lam, k=1)])
            value = C[np.arange(len(pick)), pick].mean() if target_cost is not None else exp_idx[pick].mean()
            if value <= (target_cost if target_cost is not None else expensive_share) + 1e-12:
                best_lam = float(lam)
                break
        if best_lam is None:
            raise RoutingError("no lam meets the target even when always routing to the cheapest expert")
        self.lambda_ = best_lam
        return best_lam

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the fitted router to folder `path` (router.json + arrays.npz; no pickle)."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta, arrays = {}, {}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                arrays[key] = value
            elif isinstance(value, Router):
                value.save(path / key)
                meta[key] = {"__router__": key}
            else:
                meta[key] = _jsonable(value, key, self.name)
        doc = {"format": STATE_FORMAT, "router": self.name, "class": ROUTERS.get(self.name, ""),
               "params": _jsonable(self.get_params(), "params", self.name), "state": meta}
        (path / "router.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        np.savez(path / "arrays.npz", **arrays)
        return path

    @staticmethod
    def load(path: str | Path) -> "Router":
        path = Path(path)
        try:
            doc = json.loads((path / "router.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RoutingError(f"{path}: no router.json; save a router there with `composer router train`") from None
        if doc.get("format") != STATE_FORMAT:
            raise RoutingError(f"{path}: router state format {doc.get('format')} is not {STATE_FORMAT}; retrain it")
        router = make_router(doc["router"], **doc["params"])
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            for key in z.files:
                setattr(router, key, z[key])
        for key, value in doc["state"].items():
            if isinstance(value, dict) and "__router__" in value:
                value = Router.load(path / key)
            setattr(router, key, value)
        router._after_load()
        return router

    def _after_load(self) -> None:
        """Hook for subclasses that rebuild derived state."""


def _jsonable(value, key: str, name: str):
    try:
        json.dumps(value)
    except TypeError:
        raise RoutingError(f"router '{name}': attribute '{key}' of type {type(value).__name__} cannot be "
                           "saved; store it as a NumPy array or JSON values") from None
    return value


def lam_grid(S: np.ndarray, C: np.ndarray, n_points: int = 20, extra_high: bool = False) -> list[float]:
    """lam values spreading decisions from the best predicted score (lam=0) to the cheapest expert.

    The decision for one query changes only where lam crosses (s_i - s_j) / (c_i - c_j) for a
    pricier expert i that is predicted better than j; the grid takes quantiles of those points.
    """
    n, E = S.shape
    pts = []
    for i in range(E):
        for j in range(E):
            dc = C[:, i] - C[:, j]
            ds = S[:, i] - S[:, j]
            ok = (dc > 0) & (ds > 0)
            if ok.any():
                pts.append(ds[ok] / dc[ok])
    if not pts:
        return [0.0]
    pts = np.concatenate(pts)
    qs = np.quantile(pts, np.linspace(0.0, 1.0, max(n_points - 1, 2)))
    grid = [0.0] + [float(q) * (1 + 1e-9) for q in qs]
    if extra_high:
        grid.append(float(pts.max()) * 10 + 1.0)
    return sorted(set(grid))
