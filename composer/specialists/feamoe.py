"""FEAMOE: fair, explainable and adaptive mixture of experts (Sharma, Henderson, Ghosh; IJCAI 2023).

Model: K logistic-regression experts combined by a softmax gate that is linear in the features,

    P(y=1 | x) = sum_k g_k(x) * sigmoid(w_k . x + b_k),    g(x) = softmax(V x + c)

trained by minimising   NLL + fairness_weight * gap(p) + l2 * (|W|^2 + |V|^2)   with L-BFGS,
where gap is a smooth absolute gap between sensitive groups of the *soft* positive rate:
demographic parity ("dp": E[p | s=a]), equalized odds ("eo": E[p | s=a, y] for y in {0, 1})
or equal opportunity ("eopp": y = 1 only). Reported metrics come from fairlearn.

Streams: `partial_fit` scores each batch before learning from it (prequential). If accuracy falls
more than `acc_tolerance` below the reference, or the fairness gap (fairlearn, same notion as the
penalty) rises more than `fairness_tolerance` above it, the model adapts: on accuracy drift it
adds an expert (fitted on the recent window; old experts frozen; gate re-fitted), otherwise, or
when `max_experts` is reached, it re-weights the experts (gate only). Training data for an update
is the recent window plus a reservoir sample of the past, so old regions are not forgotten.

Explanations (`explain`): Shapley values per raw feature (one-hot columns grouped) for the
baseline game v(S) = f(x_S, b_rest) with a stated baseline b (default: training medians for
numbers and modes for categories, i.e. a typical person; without a schema, column means).
- method="exact" (default) explains the model's probability f(x) = P(y=1|x) exactly. Because
  the gate logits and the expert logits are both additive over features, v(S) for every
  coalition is a closed-form function of per-feature terms; all 2**d values come from small
  matrix products and the Shapley formula is one more product (phi = v @ M). Features equal to
  the baseline are null players and are skipped exactly, so d is the number of features where
  the row differs from the baseline (<= 20).
- method="gate_linear" is the closed form that follows from linear experts combined through the
  gate: phi_j = sum_k g_k(x) w_kj (x_j - b_j). It is exact for the game in which the gate is
  frozen at g(x) and the output is the gated expert logit sum_k g_k(x)(w_k.z + b_k); it is *not*
  the Shapley value of P(y=1|x), since a feature-dependent softmax gate makes the model nonlinear.
(The paper's own text was not reachable offline; see docs/specialists.md for what was verified.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from composer.errors import BadRequestError, ComposerError, NotFittedError
from composer.specialists.schema import TabularSchema
from composer.specialists.shapley import coalition_masks, groups_to_slices, shapley_from_values

PENALTIES = ("dp", "eo", "eopp")
FORMAT = "composer.feamoe/1"


def fairness_gap(y_true, y_pred, sensitive, penalty: str) -> float:
    """The fairlearn metric matching a penalty: DP, equalized-odds or equal-opportunity difference."""
    from fairlearn.metrics import (demographic_parity_difference, equal_opportunity_difference,
                                   equalized_odds_difference)

    fn = {"dp": demographic_parity_difference, "eo": equalized_odds_difference,
          "eopp": equal_opportunity_difference}[penalty]
    return float(fn(y_true, y_pred, sensitive_features=sensitive))


def _groups(sensitive) -> np.ndarray:
    """Sensitive group labels as an object array of str (no fixed-width truncation)."""
    return np.asarray(sensitive).astype(str).astype(object)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


class FEAMOE:
    """Fair mixture of logistic experts with drift adaptation and exact Shapley explanations.

    X is an encoded matrix, or (with `schema`) a DataFrame / list of feature records.
    `sensitive_features` are group labels (fairlearn's convention), used by the penalty only.
    """

    def __init__(self, schema: TabularSchema | None = None, n_experts: int = 2, penalty: str = "dp",
                 fairness_weight: float = 1.0, l2: float = 1e-4, max_iter: int = 100,
                 max_experts: int = 6, acc_tolerance: float = 0.05, fairness_tolerance: float = 0.05,
                 min_batch: int = 100, window: int = 2000, replay: int = 2000, update_iter: int = 60,
                 seed: int = 0, num_threads: int = 1):
        self.schema, self.n_experts, self.penalty = schema, n_experts, penalty
        self.fairness_weight, self.l2, self.max_iter, self.max_experts = fairness_weight, l2, max_iter, max_experts
        self.acc_tolerance, self.fairness_tolerance, self.min_batch = acc_tolerance, fairness_tolerance, min_batch
        self.window, self.replay, self.update_iter = window, replay, update_iter
        self.seed, self.num_threads = seed, num_threads

    _PARAMS = ("n_experts", "penalty", "fairness_weight", "l2", "max_iter", "max_experts",
               "acc_tolerance", "fairness_tolerance", "min_batch", "window", "replay",
               "update_iter", "seed", "num_threads")

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        return {"schema": self.schema, **{k: getattr(self, k) for k in self._PARAMS}}

    # -- helpers -------------------------------------------------------------------------------
    def _encode(self, X, where: str = "X") -> np.ndarray:
        if self.schema is not None:
            arr = self.schema.encode(X, where)
        else:
            arr = np.asarray(X, dtype=float)
            if arr.ndim != 2:
                raise BadRequestError(f"{where}: expected a 2-D feature matrix, got shape {arr.shape}")
        if hasattr(self, "W_") and arr.shape[1] != self.W_.shape[1]:
            raise BadRequestError(f"{where}: expected {self.W_.shape[1]} columns, got {arr.shape[1]}")
        return arr

    def _check_fitted(self) -> None:
        if not hasattr(self, "W_"):
            raise NotFittedError("this FEAMOE is not fitted yet; call fit(X, y, sensitive_features=...) "
                                 "or FEAMOE.load(path) first")

    @property
    def n_experts_(self) -> int:
        self._check_fitted()
        return int(self.W_.shape[0])

    def _forward(self, X: np.ndarray):
        gate = _softmax(X @ self.V_.T + self.c_)
        experts = _sigmoid(X @ self.W_.T + self.b_)
        return gate, experts

    # -- training ------------------------------------------------------------------------------
    def _optimize(self, X, y, s, W, b, V, c, n_frozen: int, train_gate: bool, iters: int):
        """L-BFGS on the fair objective; experts [0, n_frozen) and, optionally, the gate frozen."""
        import torch

        torch.set_num_threads(self.num_threads)
        t = lambda a, g=False: torch.tensor(a, dtype=torch.float64, requires_grad=g)  # noqa: E731
        Xt, yt = t(X), t(y.astype(float))
        Wf, bf, Wn, bn = t(W[:n_frozen]), t(b[:n_frozen]), t(W[n_frozen:], True), t(b[n_frozen:], True)
        Vt, ct = t(V, train_gate), t(c, train_gate)
        params = [p for p in (Wn, bn, Vt, ct) if p.requires_grad and p.numel()]
        sel = []  # index sets the penalty compares across groups
        conds = [None] if self.penalty == "dp" else ([1] if self.penalty == "eopp" else [0, 1])
        for cond in conds:
            rows = np.ones(len(y), bool) if cond is None else (y == cond)
            sets = [torch.as_tensor(np.flatnonzero(rows & (s == a))) for a in np.unique(s)]
            sel.append([ix for ix in sets if len(ix)])

        def objective():
            Wall, ball = torch.cat([Wf, Wn]), torch.cat([bf, bn])
            g = torch.softmax(Xt @ Vt.T + ct, dim=1)
            p = (g * torch.sigmoid(Xt @ Wall.T + ball)).sum(1).clamp(1e-9, 1 - 1e-9)
            loss = -(yt * torch.log(p) + (1 - yt) * torch.log(1 - p)).mean()
            if self.fairness_weight > 0:
                for sets in sel:
                    if len(sets) > 1:
                        means = torch.stack([p[ix].mean() for ix in sets])
                        loss = loss + self.fairness_weight * torch.sqrt((means - means.mean()) ** 2 + 1e-6).sum()
            return loss + self.l2 * ((Wall ** 2).sum() + (Vt ** 2).sum())

        if params:
            opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, history_size=20,
                                    line_search_fn="strong_wolfe", tolerance_grad=1e-7,
                                    tolerance_change=1e-10)

            def closure():
                opt.zero_grad()
                loss = objective()
                loss.backward()
                return loss

            opt.step(closure)
        d = lambda a: a.detach().numpy().copy()  # noqa: E731
        return (np.vstack([d(Wf), d(Wn)]), np.concatenate([d(bf), d(bn)]), d(Vt), d(ct))

    @staticmethod
    def _logreg(X, y, seed):
        from sklearn.linear_model import LogisticRegression

        if len(np.unique(y)) < 2:
            return np.zeros(X.shape[1]), float(np.log((y.mean() + 1e-3) / (1 - y.mean() + 1e-3)))
        lr = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(X, y)
        return lr.coef_[0], float(lr.intercept_[0])

    def _init(self, X, y):
        """K-means regions -> one logistic expert per region, gate = multinomial LR on regions."""
        from sklearn.cluster import KMeans
        from sklearn.linear_model import LogisticRegression

        k, rng = self.n_experts, np.random.default_rng(self.seed)
        D = X.shape[1]
        W, b, V, c = np.zeros((k, D)), np.zeros(k), np.zeros((k, D)), np.zeros(k)
        if k == 1:
            W[0], b[0] = self._logreg(X, y, self.seed)
            return W, b, V, c
        # A subsample is enough for a starting point; L-BFGS on all rows does the real fit.
        pick = rng.choice(len(X), min(len(X), 4000), replace=False)
        Xs, ys = X[pick], y[pick]
        region = KMeans(n_clusters=k, n_init=2, random_state=self.seed).fit_predict(Xs)
        for j in range(k):
            rows = region == j
            ok = rows.sum() >= 20 and 0 < ys[rows].mean() < 1
            W[j], b[j] = self._logreg(Xs[rows] if ok else Xs, ys[rows] if ok else ys, self.seed)
        if len(np.unique(region)) < k:  # degenerate data: one region only; the gate starts uniform
            return W, b, V, c
        gate = LogisticRegression(C=1.0, max_iter=1000, random_state=self.seed).fit(Xs, region)
        coef, icpt = gate.coef_, gate.intercept_
        if k == 2:  # binary sklearn model: logit(region 1) = coef.x + icpt
            coef, icpt = np.vstack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
        V[:], c[:] = coef, icpt
        return W, b, V, c

    def fit(self, X, y, sensitive_features) -> "FEAMOE":
        if self.penalty not in PENALTIES:
            raise ValueError(f"FEAMOE penalty={self.penalty!r}; choose one of {PENALTIES}")
        if self.n_experts < 1 or self.max_experts < self.n_experts:
            raise ValueError("FEAMOE needs 1 <= n_experts <= max_experts")
        Xe, y, s = self._encode(X), np.asarray(y).astype(int), _groups(sensitive_features)
        if not (len(Xe) == len(y) == len(s)):
            raise ValueError(f"fit: X, y and sensitive_features differ in length ({len(Xe)}, {len(y)}, {len(s)})")
        if set(np.unique(y)) - {0, 1}:
            raise ValueError("fit: y must be binary 0/1")
        W, b, V, c = self._init(Xe, y)
        self.W_, self.b_, self.V_, self.c_ = self._optimize(Xe, y, s, W, b, V, c, 0, True, self.max_iter)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = Xe.shape[1]
        self.mean_ = Xe.mean(0)
        self.groups_ = tuple(sorted(np.unique(s).tolist()))
        self.reference_ = self._metrics(Xe, y, s)
        self.drift_log_: list[dict] = []
        rng = np.random.default_rng(self.seed)
        keep = rng.choice(len(y), min(len(y), self.replay), replace=False)
        self._replay = [Xe[keep], y[keep], s[keep], len(y)]
        self._window = [Xe[-self.window:], y[-self.window:], s[-self.window:]]
        return self

    def _metrics(self, Xe, y, s) -> dict[str, float]:
        pred = (self._proba(Xe) >= 0.5).astype(int)
        return {"accuracy": float((pred == y).mean()), "fairness": fairness_gap(y, pred, s, self.penalty)}

    # -- streams -------------------------------------------------------------------------------
    def partial_fit(self, X, y, sensitive_features) -> "FEAMOE":
        """Score the batch (prequential), detect accuracy/fairness drift, adapt if needed."""
        if not hasattr(self, "W_"):
            return self.fit(X, y, sensitive_features)
        Xe, y, s = self._encode(X), np.asarray(y).astype(int), _groups(sensitive_features)
        seen = self._metrics(Xe, y, s)
        drift_acc = seen["accuracy"] < self.reference_["accuracy"] - self.acc_tolerance
        drift_fair = seen["fairness"] > self.reference_["fairness"] + self.fairness_tolerance
        wX, wy, ws = self._window
        self._window = [np.vstack([wX, Xe])[-self.window:], np.concatenate([wy, y])[-self.window:],
                        np.concatenate([ws, s])[-self.window:]]
        action = "none"
        if len(y) >= self.min_batch and (drift_acc or drift_fair):
            rX, ry, rs, _ = self._replay
            TX, Ty, Ts = (np.vstack([self._window[0], rX]), np.concatenate([self._window[1], ry]),
                          np.concatenate([self._window[2], rs]))
            W, b, V, c = self.W_, self.b_, self.V_, self.c_
            if drift_acc and self.n_experts_ < self.max_experts:
                w_new, b_new = self._logreg(self._window[0], self._window[1], self.seed)
                W, b = np.vstack([W, w_new]), np.append(b, b_new)
                V, c = np.vstack([V, np.zeros(V.shape[1])]), np.append(c, c.max())
                n_frozen, action = W.shape[0] - 1, "add_expert"
            else:
                n_frozen, action = W.shape[0], "reweight"
            self.W_, self.b_, self.V_, self.c_ = self._optimize(TX, Ty, Ts, W, b, V, c, n_frozen, True,
                                                                self.update_iter)
            self.reference_ = self._metrics(*self._window)
        self._reservoir(Xe, y, s)
        self.drift_log_.append({"batch": len(self.drift_log_), "n": int(len(y)), **seen,
                                "drift_accuracy": bool(drift_acc), "drift_fairness": bool(drift_fair),
                                "action": action, "n_experts": self.n_experts_})
        return self

    def _reservoir(self, Xe, y, s) -> None:
        """Reservoir sampling: the replay buffer stays a uniform sample of everything seen."""
        rX, ry, rs, seen = self._replay
        rng = np.random.default_rng(self.seed + seen)
        for i in range(len(y)):
            seen += 1
            if len(ry) < self.replay:
                rX, ry, rs = np.vstack([rX, Xe[i:i + 1]]), np.append(ry, y[i]), np.append(rs, s[i])
            else:
                j = rng.integers(seen)
                if j < self.replay:
                    rX[j], ry[j], rs[j] = Xe[i], y[i], s[i]
        self._replay = [rX, ry, rs, seen]

    # -- inference -----------------------------------------------------------------------------
    def _proba(self, Xe: np.ndarray) -> np.ndarray:
        gate, experts = self._forward(Xe)
        return (gate * experts).sum(1)

    def predict_proba(self, X) -> np.ndarray:
        self._check_fitted()
        p = self._proba(self._encode(X))
        return np.column_stack([1 - p, p])

    def predict(self, X) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def gate_weights(self, X) -> np.ndarray:
        """g(x): how much each expert contributes to each row."""
        self._check_fitted()
        return self._forward(self._encode(X))[0]

    def score(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())

    def fairness_report(self, X, y, sensitive_features) -> dict[str, float]:
        """Accuracy and fairlearn's DP / equalized-odds / equal-opportunity differences."""
        y, s = np.asarray(y).astype(int), _groups(sensitive_features)
        pred = self.predict(X)
        return {"accuracy": float((pred == y).mean()),
                **{p: fairness_gap(y, pred, s, p) for p in PENALTIES}}

    # -- explanations --------------------------------------------------------------------------
    def baseline_vector(self, baseline=None) -> np.ndarray:
        if baseline is None:
            if self.schema is not None:
                return self.schema.encode_records([self.schema.baseline_record()], "baseline")[0]
            return self.mean_.copy()
        if isinstance(baseline, dict):
            return self._encode([baseline], "baseline")[0]
        return self._encode(np.atleast_2d(np.asarray(baseline, dtype=float)), "baseline")[0]

    def groups(self) -> list[tuple[str, int, int]]:
        """Players of the explanation: raw features (one-hot columns grouped) or columns."""
        self._check_fitted()
        return groups_to_slices(self.schema.groups if self.schema is not None else None, self.n_features_in_)

    def explain(self, X, baseline=None, method: str = "exact", max_players: int = 20) -> np.ndarray:
        """Shapley values (n, d) per raw feature for the baseline game (see the module docstring).

        exact: of P(y=1|x); rows sum to f(x) - f(baseline). gate_linear: the paper's closed
        form, of the gated expert logit with the gate frozen at g(x).
        """
        self._check_fitted()
        Xe, b = self._encode(X), self.baseline_vector(baseline)
        groups = self.groups()
        delta = Xe - b
        # Per-player contributions to the gate logits and expert logits: (n, d, K).
        dg = np.stack([delta[:, a:e] @ self.V_[:, a:e].T for _, a, e in groups], 1)
        dh = np.stack([delta[:, a:e] @ self.W_[:, a:e].T for _, a, e in groups], 1)
        if method == "gate_linear":
            gate = _softmax(Xe @ self.V_.T + self.c_)
            return np.einsum("nk,ndk->nd", gate, dh)
        if method != "exact":
            raise ValueError(f"method must be 'exact' or 'gate_linear', got {method!r}")
        # A feature equal to the baseline is a null player (v(S + j) = v(S) for every S): its
        # value is 0 and dropping it leaves the others' values unchanged, so each row only
        # enumerates the coalitions of the features where it differs from the baseline.
        active = np.stack([(delta[:, a:e] != 0).any(1) for _, a, e in groups], 1)
        if active.sum(1).max(initial=0) > max_players:
            raise ComposerError(f"exact Shapley values enumerate 2**{int(active.sum(1).max())} coalitions "
                                f"for a row; group features (a schema) so rows differ from the baseline "
                                f"in <= {max_players} players, or use method='gate_linear'")
        u0, h0 = b @ self.V_.T + self.c_, b @ self.W_.T + self.b_
        out = np.zeros((len(Xe), len(groups)))
        counts = active.sum(1)
        for m in np.unique(counts[counts > 0]):  # rows with the same number of active players
            rows = np.flatnonzero(counts == m)
            J = np.nonzero(active[rows])[1].reshape(len(rows), m)  # each row's active players
            dg_r = np.take_along_axis(dg[rows], J[:, :, None], axis=1)
            dh_r = np.take_along_axis(dh[rows], J[:, :, None], axis=1)
            out[rows[:, None], J] = self._exact_values(dg_r, dh_r, u0, h0)
        return out

    def _exact_values(self, dg: np.ndarray, dh: np.ndarray, u0: np.ndarray, h0: np.ndarray) -> np.ndarray:
        """Shapley values (n, d) from per-player logit contributions dg, dh (n, d, K)."""
        n, d, _ = dg.shape
        masks = coalition_masks(d)
        out = np.zeros((n, d))
        chunk = max(1, 2 ** 21 // len(masks))
        for i in range(0, n, chunk):
            m = len(dg[i:i + chunk])
            # Each expert's gate and expert logit at every coalition: (2**d, d) @ (d, m).
            U = [u0[k] + masks @ dg[i:i + chunk, :, k].T for k in range(self.n_experts_)]
            H = [h0[k] + masks @ dh[i:i + chunk, :, k].T for k in range(self.n_experts_)]
            top = np.maximum.reduce(U)
            num, den = np.zeros_like(top), np.zeros_like(top)
            for u, h in zip(U, H):  # softmax over experts, elementwise over (2**d, m)
                e = np.exp(u - top)
                num += e * _sigmoid(h)
                den += e
            out[i:i + m] = shapley_from_values((num / den).T)  # f at every coalition -> phi
        return out

    def expected_value(self, baseline=None) -> float:
        """f(baseline): what the exact explanation's values are measured from."""
        self._check_fitted()
        return float(self._proba(self.baseline_vector(baseline)[None, :])[0])

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """A JSON artifact (weights, schema, fairness reference). Stream buffers are not saved."""
        self._check_fitted()
        blob = {"format": FORMAT, "params": {k: getattr(self, k) for k in self._PARAMS},
                "schema": self.schema.to_dict() if self.schema is not None else None,
                "W": self.W_.tolist(), "b": self.b_.tolist(), "V": self.V_.tolist(), "c": self.c_.tolist(),
                "mean": self.mean_.tolist(), "groups": list(self.groups_), "reference": self.reference_,
                "drift_log": self.drift_log_}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(blob))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FEAMOE":
        try:
            blob = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ComposerError(f"FEAMOE artifact {path} not found; create it with "
                                "`composer specialist train --kind feamoe`") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ComposerError(f"{path} is not a FEAMOE artifact (format {FORMAT})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ComposerError(f"{path} is not a FEAMOE artifact (format {FORMAT})")
        schema = TabularSchema.from_dict(blob["schema"]) if blob["schema"] else None
        m = cls(schema=schema, **blob["params"])
        m.W_, m.b_ = np.array(blob["W"]), np.array(blob["b"])
        m.V_, m.c_ = np.array(blob["V"]), np.array(blob["c"])
        m.mean_, m.groups_ = np.array(blob["mean"]), tuple(blob["groups"])
        m.reference_, m.drift_log_ = blob["reference"], blob["drift_log"]
        m.classes_, m.n_features_in_ = np.array([0, 1]), m.W_.shape[1]
        # Stream buffers start empty after a load.
        m._replay = [np.zeros((0, m.n_features_in_)), np.zeros(0, int), np.zeros(0, object), 0]
        m._window = [np.zeros((0, m.n_features_in_)), np.zeros(0, int), np.zeros(0, object)]
        return m
