"""A feature schema for tabular specialists: validates records and one-hot encodes them.

The schema records every numeric feature (with its standardisation, optionally after log1p) and
every categorical feature with its full category list, so a record with a missing or extra
feature, a wrong type, or a category the model never saw fails with a `BadRequestError` that
names the field (`records[3].workclass`), instead of being silently encoded as all zeros.

Example:
    >>> schema = TabularSchema.build(frame, numeric=["age"], categorical={"job": ["a", "b"]})
    >>> schema.encode_records([{"age": 40, "job": "a"}])   # -> array of shape (1, 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from composer.errors import BadRequestError


@dataclass(frozen=True)
class Feature:
    """One raw feature. Numeric: mean/std of the (log1p-)transformed training values."""

    name: str
    kind: str  # "numeric" | "categorical"
    categories: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    log1p: bool = False
    baseline: Any = None  # raw value used as the default Shapley baseline (median or mode)

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1


@dataclass(frozen=True)
class TabularSchema:
    features: tuple[Feature, ...]

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, frame, numeric: Sequence[str], categorical: Mapping[str, Sequence[str]],
              log1p: Sequence[str] = ()) -> "TabularSchema":
        """Fit standardisation on `frame` (training data); keep feature order of `frame`."""
        feats = []
        for col in frame.columns:
            if col in categorical:
                cats = tuple(str(c) for c in categorical[col])
                mode = str(frame[col].astype(str).mode().iloc[0])
                feats.append(Feature(col, "categorical", categories=cats, baseline=mode))
            elif col in numeric:
                raw = frame[col].to_numpy(float)
                vals = np.log1p(raw) if col in log1p else raw
                std = float(vals.std()) or 1.0
                feats.append(Feature(col, "numeric", mean=float(vals.mean()), std=std,
                                     log1p=col in log1p, baseline=float(np.median(raw))))
            else:
                raise ValueError(f"column '{col}' is neither numeric nor categorical in the schema")
        return cls(tuple(feats))

    def to_dict(self) -> dict:
        return {"features": [{"name": f.name, "kind": f.kind, "categories": list(f.categories),
                              "mean": f.mean, "std": f.std, "log1p": f.log1p,
                              "baseline": f.baseline} for f in self.features]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TabularSchema":
        return cls(tuple(Feature(name=f["name"], kind=f["kind"], categories=tuple(f["categories"]),
                                 mean=float(f["mean"]), std=float(f["std"]), log1p=bool(f["log1p"]),
                                 baseline=f["baseline"]) for f in d["features"]))

    # -- layout ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def groups(self) -> list[tuple[str, int, int]]:
        """(feature, first column, end column) of each raw feature in the encoded matrix."""
        out, start = [], 0
        for f in self.features:
            out.append((f.name, start, start + f.width))
            start += f.width
        return out

    @property
    def columns(self) -> list[str]:
        cols = []
        for f in self.features:
            cols += [f"{f.name}={c}" for c in f.categories] if f.kind == "categorical" else [f.name]
        return cols

    @property
    def n_columns(self) -> int:
        return sum(f.width for f in self.features)

    def baseline_record(self) -> dict[str, Any]:
        """Training medians (numeric) and modes (categorical): the default Shapley baseline,
        a typical person of the training data."""
        return {f.name: f.baseline for f in self.features}

    # -- validation --------------------------------------------------------------------------
    def validate_record(self, record: Any, where: str = "record") -> None:
        """Raise BadRequestError naming the field for any problem with one feature record."""
        if not isinstance(record, Mapping):
            raise BadRequestError(f"{where}: expected an object mapping feature names to values, "
                                  f"got {type(record).__name__}")
        known = set(self.names)
        extra = [k for k in record if k not in known]
        if extra:
            raise BadRequestError(f"{where}.{extra[0]}: unknown feature; expected exactly: "
                                  f"{', '.join(self.names)}")
        for f in self.features:
            if f.name not in record:
                raise BadRequestError(f"{where}.{f.name}: missing feature ({f.kind})")
            v = record[f.name]
            if f.kind == "numeric":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise BadRequestError(f"{where}.{f.name}: expected a finite number, got {v!r}")
                if f.log1p and v <= -1:
                    raise BadRequestError(f"{where}.{f.name}: must be > -1 (log1p feature), got {v!r}")
            else:
                if not isinstance(v, str):
                    raise BadRequestError(f"{where}.{f.name}: expected a category string, got {v!r}")
                if v not in f.categories:
                    shown = ", ".join(f.categories[:12]) + (", ..." if len(f.categories) > 12 else "")
                    raise BadRequestError(f"{where}.{f.name}: unseen category {v!r}; known: {shown}")

    # -- encoding ----------------------------------------------------------------------------
    def encode_records(self, records: Sequence[Mapping], where: str = "records") -> np.ndarray:
        for i, r in enumerate(records):
            self.validate_record(r, f"{where}[{i}]")
        out = np.zeros((len(records), self.n_columns))
        for (name, a, _), f in zip(self.groups, self.features):
            for i, r in enumerate(records):
                if f.kind == "numeric":
                    out[i, a] = self._scale(f, np.asarray([float(r[name])]))[0]
                else:
                    out[i, a + f.categories.index(r[name])] = 1.0
        return out

    def encode_frame(self, frame, where: str = "X") -> np.ndarray:
        """Encode a pandas DataFrame with exactly the schema's columns (vectorised)."""
        cols = list(frame.columns)
        missing = [n for n in self.names if n not in cols]
        extra = [c for c in cols if c not in self.names]
        if missing:
            raise BadRequestError(f"{where}.{missing[0]}: missing feature column")
        if extra:
            raise BadRequestError(f"{where}.{extra[0]}: unknown feature column")
        out = np.zeros((len(frame), self.n_columns))
        for (name, a, b), f in zip(self.groups, self.features):
            col = frame[name]
            if f.kind == "numeric":
                try:
                    vals = col.to_numpy(float)
                except (TypeError, ValueError):
                    raise BadRequestError(f"{where}.{name}: expected numbers") from None
                if not np.isfinite(vals).all():
                    raise BadRequestError(f"{where}.{name}: non-finite value at row "
                                          f"{int(np.flatnonzero(~np.isfinite(vals))[0])}")
                out[:, a] = self._scale(f, vals)
            else:
                codes = self._codes(f, col.astype(str).to_numpy(), where)
                out[np.arange(len(frame)), a + codes] = 1.0
        return out

    def encode(self, X, where: str = "X") -> np.ndarray:
        """DataFrame, list of records, or an already encoded 2-D array (width checked)."""
        if hasattr(X, "columns"):
            return self.encode_frame(X, where)
        if isinstance(X, (list, tuple)) and (not X or isinstance(X[0], Mapping)):
            return self.encode_records(X, where)
        arr = np.asarray(X, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != self.n_columns:
            raise BadRequestError(f"{where}: expected {self.n_columns} encoded columns, got shape {arr.shape}")
        return arr

    # Raw "code" space: numerics as raw values, categoricals as integer codes. Used to hand the
    # same model to model-agnostic explainers (shap.KernelExplainer) one column per raw feature.
    def to_codes(self, frame) -> np.ndarray:
        out = np.zeros((len(frame), len(self.features)))
        for j, f in enumerate(self.features):
            col = frame[f.name]
            out[:, j] = col.to_numpy(float) if f.kind == "numeric" else \
                self._codes(f, col.astype(str).to_numpy(), "X")
        return out

    def encode_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.atleast_2d(codes)
        out = np.zeros((len(codes), self.n_columns))
        for j, ((_, a, _), f) in enumerate(zip(self.groups, self.features)):
            if f.kind == "numeric":
                out[:, a] = self._scale(f, codes[:, j])
            else:
                out[np.arange(len(codes)), a + codes[:, j].astype(int)] = 1.0
        return out

    @staticmethod
    def _scale(f: Feature, vals: np.ndarray) -> np.ndarray:
        v = np.log1p(vals) if f.log1p else vals
        return (v - f.mean) / f.std

    @staticmethod
    def _codes(f: Feature, vals: np.ndarray, where: str) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(f.categories)}
        codes = np.fromiter((lookup.get(v, -1) for v in vals), dtype=np.int64, count=len(vals))
        if (codes < 0).any():
            i = int(np.flatnonzero(codes < 0)[0])
            raise BadRequestError(f"{where}.{f.name}: unseen category {vals[i]!r} at row {i}")
        return codes
