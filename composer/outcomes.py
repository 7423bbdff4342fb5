"""Recorded per-query outcomes of experts, in one long table.

An `OutcomeTable` has one row per (query, expert) with the columns

    query_id, prompt, task, expert, score, cost, response

`score`, `cost` and `response` may be missing (NaN / None). A missing score means "not
recorded": it is excluded from means and counted, never read as 0. Routers train on it,
`composer eval` replays it, and the replay backend answers from it.

    >>> table = read_outcomes("../shared/data/outcomes/routerdc-7b/mmlu_test.json")
    >>> table.expert_summary()           # rows, mean score, missing, total cost per expert
    >>> table.score_matrix()             # query x expert, NaN where missing

The readers for the file formats in use (RouterDC JSON, RouteLLM CSV, RouterBench wide CSV,
generic long CSV/JSONL) live in `composer.outcome_readers`; `read_outcomes` picks one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from composer.errors import OutcomeFormatError

if TYPE_CHECKING:
    from composer.config import Price

COLUMNS = ("query_id", "prompt", "task", "expert", "score", "cost", "response")
CHARS_PER_TOKEN = 4.0  # rough English average; used only when a table carries no costs
DEFAULT_COMPLETION_TOKENS = 128


def estimate_tokens(text: str | None) -> int:
    """A cheap token count estimate (~4 characters a token) for pricing tables without costs."""
    if not text:
        return 0
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


class OutcomeTable:
    """One long table of outcomes, backed by a pandas DataFrame (`.frame`).

    Build one with `OutcomeTable.from_frame` / `from_records` (which validate) or a reader;
    the constructor only stores an already validated frame.
    """

    def __init__(self, frame: pd.DataFrame, source: str = "<table>"):
        self.frame = frame
        self.source = source

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_frame(cls, df: pd.DataFrame, source: str = "<frame>") -> "OutcomeTable":
        """Validate and normalise a long frame. Missing optional columns are added empty."""
        for col in ("query_id", "prompt", "expert"):
            if col not in df.columns:
                raise OutcomeFormatError(f"{source}: column '{col}' is missing; a long outcome table "
                                         f"needs {', '.join(COLUMNS[:4])} and score")
        out = pd.DataFrame({
            "query_id": df["query_id"].astype(str),
            "prompt": df["prompt"].fillna("").astype(str),
            "task": df["task"].fillna("default").astype(str) if "task" in df else "default",
            "expert": df["expert"].astype(str),
            "score": _numeric(df, "score", source),
            "cost": _numeric(df, "cost", source),
            "response": (df["response"].astype(object).where(df["response"].notna(), None)
                         if "response" in df else None),
        })
        out = out.reset_index(drop=True)
        dup = out.duplicated(["query_id", "expert"])
        if dup.any():
            i = int(np.flatnonzero(dup.to_numpy())[0])
            raise OutcomeFormatError(
                f"{source}: row {i + 1}, column 'query_id': duplicate outcome for query "
                f"'{out.at[i, 'query_id']}' and expert '{out.at[i, 'expert']}'; each (query, expert) "
                "pair may appear once")
        return cls(out, source)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], source: str = "<records>") -> "OutcomeTable":
        return cls.from_frame(pd.DataFrame.from_records(list(records)), source)

    # -- shape ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (f"OutcomeTable({self.source!r}: {self.n_queries} queries x {len(self.experts)} experts, "
                f"{len(self.frame)} rows, tasks={self.tasks})")

    @property
    def experts(self) -> list[str]:
        """Expert names in order of first appearance."""
        return list(pd.unique(self.frame["expert"]))

    @property
    def tasks(self) -> list[str]:
        return list(pd.unique(self.frame["task"]))

    @property
    def query_ids(self) -> list[str]:
        return list(pd.unique(self.frame["query_id"]))

    @property
    def n_queries(self) -> int:
        return int(self.frame["query_id"].nunique())

    @property
    def has_costs(self) -> bool:
        return bool(self.frame["cost"].notna().any())

    # -- per query --------------------------------------------------------------------------
    def queries(self) -> pd.DataFrame:
        """One row per query (in first-appearance order): prompt and task, indexed by query_id."""
        q = self.frame.drop_duplicates("query_id")[["query_id", "prompt", "task"]]
        return q.set_index("query_id")

    def prompts(self) -> list[str]:
        return self.queries()["prompt"].tolist()

    def task_of(self) -> pd.Series:
        return self.queries()["task"]

    def _pivot(self, column: str, experts: Sequence[str] | None) -> pd.DataFrame:
        m = self.frame.pivot(index="query_id", columns="expert", values=column)
        m = m.reindex(index=self.query_ids, columns=list(experts) if experts is not None else self.experts)
        m.columns.name = None
        return m.astype(float)

    def score_matrix(self, experts: Sequence[str] | None = None) -> pd.DataFrame:
        """Queries x experts scores; NaN where a score is missing (or the pair was never run)."""
        return self._pivot("score", experts)

    def cost_matrix(self, experts: Sequence[str] | None = None) -> pd.DataFrame:
        """Queries x experts costs; NaN where unknown."""
        return self._pivot("cost", experts)

    # -- per expert -------------------------------------------------------------------------
    def mean_scores(self) -> pd.Series:
        """Mean score per expert over its recorded scores (missing ones left out)."""
        return self.frame.groupby("expert", sort=False)["score"].mean().reindex(self.experts)

    def missing_counts(self) -> pd.Series:
        return self.frame["score"].isna().groupby(self.frame["expert"], sort=False).sum().reindex(self.experts)

    def expert_summary(self) -> pd.DataFrame:
        """Per expert: rows, scored, missing, mean_score, total_cost, cost_missing."""
        g = self.frame.groupby("expert", sort=False)
        out = pd.DataFrame({
            "rows": g.size(),
            "scored": g["score"].count(),
            "missing": g["score"].apply(lambda s: int(s.isna().sum())),
            "mean_score": g["score"].mean(),
            "total_cost": g["cost"].sum(min_count=1),
            "cost_missing": g["cost"].apply(lambda s: int(s.isna().sum())),
        }).reindex(self.experts)
        out.index.name = "expert"
        return out

    def best_expert(self) -> str:
        """The expert with the highest mean recorded score."""
        means = self.mean_scores()
        if means.isna().all():
            raise OutcomeFormatError(f"{self.source}: no expert has any recorded score")
        return str(means.idxmax())

    def oracle_score(self) -> float:
        """Mean over queries of the best expert's score (queries with no score at all excluded)."""
        best = self.score_matrix().max(axis=1, skipna=True)
        return float(best.mean()) if best.notna().any() else float("nan")

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: per expert rows/mean/missing/cost, oracle, per-task counts."""
        s = self.expert_summary()
        experts = {e: {"rows": int(r.rows), "scored": int(r.scored), "missing": int(r.missing),
                       "mean_score": _f(r.mean_score), "total_cost": _f(r.total_cost),
                       "cost_missing": int(r.cost_missing)} for e, r in s.iterrows()}
        tasks = self.queries()["task"].value_counts(sort=False)
        unscored = int(self.score_matrix().isna().all(axis=1).sum())
        return {"source": self.source, "queries": self.n_queries, "rows": len(self.frame),
                "experts": experts, "tasks": {t: int(n) for t, n in tasks.items()},
                "oracle_score": _f(self.oracle_score()), "best_expert": self.best_expert(),
                "queries_without_any_score": unscored}

    # -- subsets ----------------------------------------------------------------------------
    def filter(self, *, tasks: Iterable[str] | None = None, experts: Iterable[str] | None = None,
               query_ids: Iterable[str] | None = None) -> "OutcomeTable":
        mask = pd.Series(True, index=self.frame.index)
        if tasks is not None:
            mask &= self.frame["task"].isin(list(tasks))
        if experts is not None:
            wanted = list(experts)
            unknown = sorted(set(wanted) - set(self.experts))
            if unknown:
                raise OutcomeFormatError(f"{self.source}: unknown expert(s) {unknown}; known: {self.experts}")
            mask &= self.frame["expert"].isin(wanted)
        if query_ids is not None:
            mask &= self.frame["query_id"].isin(list(query_ids))
        return OutcomeTable(self.frame[mask].reset_index(drop=True), self.source)

    def split(self, test_fraction: float = 0.3, seed: int = 0) -> tuple["OutcomeTable", "OutcomeTable"]:
        """Split by query (never by row), per task, so both halves keep every task."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rng = np.random.default_rng(seed)
        test_ids: list[str] = []
        for _, ids in self.task_of().groupby(self.task_of(), sort=False):
            ids = ids.index.to_numpy()
            n_test = int(round(len(ids) * test_fraction))
            if len(ids) > 1:
                n_test = min(max(n_test, 1), len(ids) - 1)
            test_ids.extend(rng.permutation(ids)[:n_test].tolist())
        test_set = set(test_ids)
        is_test = self.frame["query_id"].isin(test_set)
        return (OutcomeTable(self.frame[~is_test].reset_index(drop=True), f"{self.source}[train]"),
                OutcomeTable(self.frame[is_test].reset_index(drop=True), f"{self.source}[test]"))

    def sample(self, n_queries: int, seed: int = 0) -> "OutcomeTable":
        """A random subset of whole queries (all their experts)."""
        ids = np.array(self.query_ids)
        if n_queries >= len(ids):
            return self
        keep = np.random.default_rng(seed).choice(ids, size=n_queries, replace=False)
        return self.filter(query_ids=keep.tolist())

    # -- costs ------------------------------------------------------------------------------
    def with_price_costs(self, prices: Mapping[str, "Price"], *, completion_tokens: int | None = None,
                         overwrite: bool = False) -> "OutcomeTable":
        """Fill missing costs from per-token prices (experts.yaml `price`) and a token estimate.

        Prompt tokens are estimated from the prompt; completion tokens from the recorded response,
        else `completion_tokens` (default: the expert's mean recorded response length, else 128).
        Experts without a price keep their costs as they are.
        """
        df = self.frame.copy()
        resp_tokens = df["response"].map(lambda r: estimate_tokens(r) if isinstance(r, str) else np.nan)
        mean_resp = resp_tokens.groupby(df["expert"]).transform("mean")
        fallback = completion_tokens if completion_tokens is not None else DEFAULT_COMPLETION_TOKENS
        comp = resp_tokens.fillna(mean_resp).fillna(fallback)
        prompt_tokens = df["prompt"].map(estimate_tokens)
        for expert, price in prices.items():
            rows = df["expert"] == expert
            if not overwrite:
                rows &= df["cost"].isna()
            df.loc[rows, "cost"] = (prompt_tokens[rows] * price.input_per_1m
                                    + comp[rows] * price.output_per_1m) / 1e6
        return OutcomeTable(df, self.source)

    # -- output -----------------------------------------------------------------------------
    def to_csv(self, path: str | Path) -> None:
        self.frame.to_csv(path, index=False)

    def to_jsonl(self, path: str | Path) -> None:
        self.frame.to_json(path, orient="records", lines=True, force_ascii=False)


def concat(tables: Sequence[OutcomeTable]) -> OutcomeTable:
    """Stack several tables (e.g. one per file). Query ids must not collide."""
    if not tables:
        raise ValueError("concat needs at least one outcome table")
    if len(tables) == 1:
        return tables[0]
    frame = pd.concat([t.frame for t in tables], ignore_index=True)
    source = "+".join(t.source for t in tables) if len(tables) <= 3 else f"{tables[0].source}+{len(tables) - 1} more"
    dup = frame.duplicated(["query_id", "expert"])
    if dup.any():
        qid = frame.loc[dup.idxmax(), "query_id"]
        owners = [t.source for t in tables if (t.frame["query_id"] == qid).any()]
        raise OutcomeFormatError(f"query id '{qid}' appears in more than one table ({', '.join(owners)}); "
                                 "give the files distinct names or distinct query ids")
    return OutcomeTable(frame, source)


def read_outcomes(paths: str | Path | Sequence[str | Path], format: str = "auto") -> OutcomeTable:
    """Read one or many outcome files (or folders of them) into one table.

    format: "auto" (by extension and header), "routerdc", "routellm", "routerbench" or "long".
    A folder reads its *.json and *.csv files (not *.jsonl, which folders of questions also hold).
    """
    from composer.outcome_readers import read_file  # local: readers are only needed here

    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables: list[OutcomeTable] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(x for x in p.iterdir() if x.suffix in (".json", ".csv") and x.is_file())
            if not inside:
                raise OutcomeFormatError(f"{p}: folder holds no .json or .csv outcome files")
            folder = concat([read_file(f, format) for f in inside])
            tables.append(OutcomeTable(folder.frame, f"{p}/ ({len(inside)} files)"))
        elif p.exists():
            tables.append(read_file(p, format))
        else:
            raise OutcomeFormatError(f"{p}: file not found")
    return concat(tables)


def load_prices(path: str | Path) -> dict[str, "Price"]:
    """Prices per expert from an experts.yaml, or from a plain `{expert: {input_per_1m, output_per_1m}}` YAML.

    A replay expert's price also applies to the outcome-table expert it replays (`options.expert`).
    """
    import yaml

    from composer.config import Price, load_config

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutcomeFormatError(f"{p}: prices file not found") from None
    if isinstance(data, dict) and "experts" in data:
        cfg = load_config(p, check_files=False)
        out: dict[str, Price] = {}
        for e in cfg.experts:
            out[e.name] = e.price
            if e.backend == "replay" and e.options.get("expert"):
                out[str(e.options["expert"])] = e.price
        return out
    if not isinstance(data, dict):
        raise OutcomeFormatError(f"{p}: expected a mapping of expert name to "
                                 "{{input_per_1m, output_per_1m}}, or an experts.yaml")
    out = {}
    for name, spec in data.items():
        try:
            out[str(name)] = Price.model_validate(spec)
        except Exception as exc:  # pydantic's message names the bad field
            raise OutcomeFormatError(f"{p}: expert '{name}': {exc}") from None
    return out


def _numeric(df: pd.DataFrame, col: str, source: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    s = df[col]
    if s.dtype == bool:
        return s.astype(float)
    from composer.outcome_readers import parse_scores  # same value rules as the file readers

    return parse_scores(s, source=source, column=col)


def _f(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
