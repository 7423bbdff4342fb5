"""Data loaders for the specialists: Planetoid graphs (Cora, CiteSeer) and fairness tables.

Everything is read from the shared data folder (`$COMPOSER_DATA`, default `<repo>/../shared/data`);
nothing is downloaded and nothing is written.

Graphs follow the Planetoid loader convention of GCN (Kipf & Welling) and PyG:
`ind.{name}.{x,y,tx,ty,allx,ally,graph,test.index}`; test rows are re-ordered by the sorted test
index; CiteSeer's isolated test nodes (ids missing from `test.index`) get zero features and no
label (they are in no split); the standard split is the first 20 nodes per class for training
(140 on Cora, 120 on CiteSeer), the next 500 for validation and the 1,000 test-index nodes.

Tables (Adult, COMPAS, German credit) come back as raw pandas frames plus a `TabularSchema`
(composer.specialists.schema) that one-hot encodes them and rejects unseen categories.

Example:
    >>> g = load_planetoid("cora")
    >>> g.x.shape, len(g.train_idx), len(g.val_idx), len(g.test_idx)
    ((2708, 1433), 140, 500, 1000)
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from composer.errors import ComposerError
from composer.specialists.schema import TabularSchema

PLANETOID = ("cora", "citeseer")
TABULAR = ("adult", "compas", "german")


class DataNotFoundError(ComposerError, FileNotFoundError):
    """A dataset file is missing; the message names the file and the COMPOSER_DATA setting."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: `root`, else $COMPOSER_DATA, else `<repo>/../shared/data`, else the user
    data folder `composer data pull` fills (composer/data/paths.py)."""
    from composer.data.paths import data_root as resolve  # noqa: PLC0415

    return resolve(root)


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataNotFoundError(
            f"{path} not found; point COMPOSER_DATA at the shared data folder (it holds "
            "graphs/planetoid and tabular/) or fetch it with `composer data pull`")
    return path


# ---------------------------------------------------------------------------------------------
# Planetoid


@dataclass(frozen=True)
class GraphData:
    """A node-classification graph. `x` is a scipy CSR matrix (rows L1-normalised when asked)."""

    name: str
    x: "object"  # scipy.sparse.csr_matrix, float32
    y: np.ndarray  # int64 labels; -1 where a node has no label (CiteSeer's isolated test nodes)
    edge_index: np.ndarray  # int64 [2, E], undirected (both directions), no self loops, sorted
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    num_classes: int

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])


class _PlanetoidUnpickler(pickle.Unpickler):
    """Only numpy/scipy arrays and plain containers may come out of a Planetoid pickle."""

    _ALLOWED_PREFIXES = ("numpy", "scipy.sparse")
    _ALLOWED = {("collections", "defaultdict"), ("copyreg", "_reconstructor"),
                ("builtins", "object"), ("builtins", "list"), ("builtins", "dict"),
                ("builtins", "int"), ("builtins", "tuple"), ("builtins", "set")}

    _PY2 = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # the files were pickled by Python 2

    def find_class(self, module: str, name: str):
        plain = self._PY2.get(module, module)
        if module.startswith("scipy.sparse."):  # old private paths (scipy.sparse.csr) are deprecated
            module = "scipy.sparse"
        if module.startswith(self._ALLOWED_PREFIXES) or (plain, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a Planetoid file")


def _read_pickle(path: Path):
    with open(_need(path), "rb") as f:
        return _PlanetoidUnpickler(f, encoding="latin1").load()


def load_planetoid(name: str, root: str | os.PathLike | None = None,
                   normalize_features: bool = True) -> GraphData:
    """Load Cora or CiteSeer with the standard public split (see the module docstring)."""
    import scipy.sparse as sp

    name = name.lower()
    if name not in PLANETOID:
        raise ComposerError(f"unknown graph dataset '{name}'; available: {', '.join(PLANETOID)}")
    folder = data_root(root) / "graphs" / "planetoid"
    parts = {k: _read_pickle(folder / f"ind.{name}.{k}")
             for k in ("x", "y", "tx", "ty", "allx", "ally", "graph")}
    test_index = np.array([int(line) for line in
                           _need(folder / f"ind.{name}.test.index").read_text().split()], dtype=np.int64)
    test_sorted = np.sort(test_index)

    tx, ty = sp.csr_matrix(parts["tx"]), np.asarray(parts["ty"])
    if name == "citeseer":
        # Isolated test nodes are missing from tx/ty: add zero rows so ids line up.
        full = np.arange(test_sorted.min(), test_sorted.max() + 1)
        tx_ext = sp.lil_matrix((len(full), tx.shape[1]), dtype=np.float32)
        tx_ext[test_sorted - test_sorted.min(), :] = tx
        ty_ext = np.zeros((len(full), ty.shape[1]), dtype=ty.dtype)
        ty_ext[test_sorted - test_sorted.min(), :] = ty
        tx, ty = sp.csr_matrix(tx_ext), ty_ext

    x = sp.vstack([sp.csr_matrix(parts["allx"]), tx]).tolil()
    x[test_index, :] = x[test_sorted, :]
    x = sp.csr_matrix(x, dtype=np.float32)
    onehot = np.vstack([np.asarray(parts["ally"]), ty])
    onehot[test_index, :] = onehot[test_sorted, :]
    y = np.where(onehot.sum(1) > 0, onehot.argmax(1), -1).astype(np.int64)
    if normalize_features:
        rowsum = np.asarray(x.sum(1)).ravel()
        inv = np.divide(1.0, rowsum, out=np.zeros_like(rowsum), where=rowsum > 0)
        x = sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ x, dtype=np.float32)

    n = x.shape[0]
    src, dst = [], []
    for u, nbrs in parts["graph"].items():
        for v in nbrs:
            if u != v and u < n and v < n:
                src += [u, v]
                dst += [v, u]
    edges = np.unique(np.array([src, dst], dtype=np.int64).T, axis=0).T
    num_classes = int(onehot.shape[1])
    train_idx = np.arange(int(np.asarray(parts["y"]).shape[0]), dtype=np.int64)
    val_idx = np.arange(len(train_idx), len(train_idx) + 500, dtype=np.int64)
    return GraphData(name=name, x=x, y=y, edge_index=np.ascontiguousarray(edges),
                     train_idx=train_idx, val_idx=val_idx, test_idx=test_sorted,
                     num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class TabularData:
    """A fairness table: raw feature frames, binary targets, sensitive groups, and the schema.

    The sensitive attribute is not among the model features (it is given to fairness penalties and
    metrics separately); `schema` encodes the feature frames.
    """

    name: str
    X_train: "object"  # pandas.DataFrame of raw features
    y_train: np.ndarray
    s_train: np.ndarray  # sensitive group labels (strings)
    X_test: "object"
    y_test: np.ndarray
    s_test: np.ndarray
    schema: TabularSchema
    sensitive: str
    positive_label: str


ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income"]
ADULT_NUMERIC = ["age", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
ADULT_CATEGORICAL = ["workclass", "marital-status", "occupation", "relationship", "race", "sex",
                     "native-country"]


def _adult_categories(names_file: Path) -> dict[str, list[str]]:
    """Category lists as declared in adult.names (plus '?', the file's missing-value marker)."""
    cats: dict[str, list[str]] = {}
    for line in names_file.read_text(encoding="latin1").splitlines():
        if ":" not in line or line.startswith("|"):
            continue
        key, _, rest = line.partition(":")
        rest = rest.strip().rstrip(".")
        if key in ADULT_CATEGORICAL and rest != "continuous":
            cats[key] = [c.strip() for c in rest.split(",")] + ["?"]
    missing = set(ADULT_CATEGORICAL) - set(cats)
    if missing:
        raise ComposerError(f"{names_file}: no category list for {sorted(missing)}")
    return cats


def _split(features, y, s, frac: float, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    cut = int(round(len(y) * frac))
    tr, te = np.sort(idx[:cut]), np.sort(idx[cut:])
    return (features.iloc[tr].reset_index(drop=True), y[tr], s[tr],
            features.iloc[te].reset_index(drop=True), y[te], s[te])


def load_adult(root=None, sensitive: str = "sex") -> TabularData:
    """UCI Adult: official train (32,561) / test (16,281) files; target income >50K.

    Dropped: `fnlwgt` (a census sampling weight, not a person's attribute) and `education`
    (one-to-one with `education-num`). The sensitive column (sex or race) is held out of X.
    """
    import pandas as pd

    folder = data_root(root) / "tabular" / "adult"
    cats = _adult_categories(_need(folder / "adult.names"))
    frames = []
    for fname, skip in (("adult.data", 0), ("adult.test", 1)):
        df = pd.read_csv(_need(folder / fname), header=None, names=ADULT_COLUMNS, skiprows=skip,
                         skipinitialspace=True, dtype=str, na_filter=False)
        df = df[df["income"].str.len() > 0].copy()
        df["income"] = df["income"].str.rstrip(".")
        frames.append(df)
    if sensitive not in ("sex", "race"):
        raise ComposerError(f"Adult's sensitive attribute must be 'sex' or 'race', got '{sensitive}'")
    feats = [c for c in ADULT_NUMERIC + ADULT_CATEGORICAL if c != sensitive]
    out = []
    for df in frames:
        for c in ADULT_NUMERIC:
            df[c] = df[c].astype(float)
        out.append((df[feats].reset_index(drop=True), (df["income"] == ">50K").to_numpy(np.int64),
                    df[sensitive].to_numpy(str)))
    schema = TabularSchema.build(out[0][0], numeric=[c for c in ADULT_NUMERIC],
                                 categorical={c: cats[c] for c in ADULT_CATEGORICAL if c != sensitive},
                                 log1p=["capital-gain", "capital-loss"])
    (Xtr, ytr, str_), (Xte, yte, ste) = out
    return TabularData("adult", Xtr, ytr, str_, Xte, yte, ste, schema, sensitive, ">50K")


COMPAS_NUMERIC = ["age", "priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count"]
COMPAS_CATEGORICAL = ["c_charge_degree", "sex", "race"]


def load_compas(root=None, sensitive: str = "race", test_frac: float = 0.3, seed: int = 0,
                races: tuple[str, ...] = ("African-American", "Caucasian")) -> TabularData:
    """ProPublica COMPAS two-year recidivism, with ProPublica's filters (6,172 rows).

    Filters: |days_b_screening_arrest| <= 30, is_recid != -1, c_charge_degree != 'O',
    score_text != 'N/A'. Target: two_year_recid (1 = re-offended). By default only the two races
    the fairness literature compares are kept (5,278 rows). Random split with `seed`.
    """
    import pandas as pd

    df = pd.read_csv(_need(data_root(root) / "tabular" / "compas" / "compas-scores-two-years.csv"))
    df = df[df["days_b_screening_arrest"].between(-30, 30) & (df["is_recid"] != -1)
            & (df["c_charge_degree"] != "O") & (df["score_text"] != "N/A")]
    if races:
        df = df[df["race"].isin(races)]
    if sensitive not in ("race", "sex"):
        raise ComposerError(f"COMPAS's sensitive attribute must be 'race' or 'sex', got '{sensitive}'")
    feats = [c for c in COMPAS_NUMERIC + COMPAS_CATEGORICAL if c != sensitive]
    X = df[feats].reset_index(drop=True)
    for c in COMPAS_NUMERIC:
        X[c] = X[c].astype(float)
    y = df["two_year_recid"].to_numpy(np.int64)
    s = df[sensitive].to_numpy(str)
    cats = {c: sorted(df[c].unique().tolist()) for c in COMPAS_CATEGORICAL if c != sensitive}
    Xtr, ytr, s_tr, Xte, yte, s_te = _split(X, y, s, 1 - test_frac, seed)
    schema = TabularSchema.build(Xtr, numeric=COMPAS_NUMERIC, categorical=cats)
    return TabularData("compas", Xtr, ytr, s_tr, Xte, yte, s_te, schema, sensitive, "recidivism")


GERMAN_COLUMNS = ["status", "duration", "credit_history", "purpose", "credit_amount", "savings",
                  "present_employment", "installment_rate", "status_sex", "other_debtors",
                  "present_residence", "property", "age", "installment_plans", "housing",
                  "number_of_credits", "job", "people_liable", "telephone", "foreign_worker", "credit"]
GERMAN_NUMERIC = ["duration", "credit_amount", "installment_rate", "present_residence", "age",
                  "number_of_credits", "people_liable"]


def load_german(root=None, sensitive: str = "sex", test_frac: float = 0.3, seed: int = 0) -> TabularData:
    """Statlog German credit (1,000 rows); target 1 = good credit. Codes mapped by values_maps.json.

    Sensitive: 'sex' (from the personal status code: A92/A95 female) or 'age' (<= 25 vs > 25).
    The status_sex column is replaced by `personal_status` (marital part only) so that sex is not
    a model feature when it is the sensitive attribute.
    """
    import json

    import pandas as pd

    folder = data_root(root) / "tabular" / "german"
    maps = json.loads(_need(folder / "values_maps.json").read_text())
    df = pd.read_csv(_need(folder / "german.data"), sep=" ", header=None, names=GERMAN_COLUMNS,
                     dtype=str)
    sex = np.where(df["status_sex"].isin(["A92", "A95"]), "female", "male")
    marital = {"A91": "divorced/separated", "A92": "divorced/separated/married", "A93": "single",
               "A94": "married/widowed", "A95": "single"}
    df["personal_status"] = df["status_sex"].map(marital)
    categorical = [c for c in GERMAN_COLUMNS if c not in GERMAN_NUMERIC + ["credit", "status_sex"]]
    for c in categorical:
        df[c] = df[c].map(lambda v, m=maps[c]: str(m[v]).strip())
    categorical.append("personal_status")
    for c in GERMAN_NUMERIC:
        df[c] = df[c].astype(float)
    if sensitive == "sex":
        s = sex
    elif sensitive == "age":
        s = np.where(df["age"] > 25, "over_25", "25_or_under")
    else:
        raise ComposerError(f"German credit's sensitive attribute must be 'sex' or 'age', got '{sensitive}'")
    feats = [c for c in GERMAN_NUMERIC if not (sensitive == "age" and c == "age")] + categorical
    X = df[feats].reset_index(drop=True)
    y = (df["credit"] == "1").to_numpy(np.int64)
    cats = {c: sorted(X[c].unique().tolist()) for c in categorical}
    Xtr, ytr, s_tr, Xte, yte, s_te = _split(X, y, s, 1 - test_frac, seed)
    numeric = [c for c in GERMAN_NUMERIC if c in feats]
    schema = TabularSchema.build(Xtr, numeric=numeric, categorical=cats, log1p=["credit_amount"])
    return TabularData("german", Xtr, ytr, s_tr, Xte, yte, s_te, schema, sensitive, "good")


def load_tabular(name: str, root=None, **kw) -> TabularData:
    """Dispatch by name: adult, compas, german."""
    loaders = {"adult": load_adult, "compas": load_compas, "german": load_german}
    if name.lower() not in loaders:
        raise ComposerError(f"unknown tabular dataset '{name}'; available: {', '.join(TABULAR)}")
    return loaders[name.lower()](root, **kw)
