"""Recorded per-query outcomes of experts, in one long table.

An `OutcomeTable` has one row per (query, expert) with the columns

    query_id, prompt, task, expert, score, cost, response

`score`, `cost` and `response` may be missing (NaN / None). A missing score means "not
recorded": it is excluded from means and counted, never read as 0. Routers train on it,
`composer eval` replays it, and the replay backend answers from it.

Every task has a score kind (`SCORE_KINDS`, column `score_kind`) saying how a score counts as
accuracy: `correct_if_positive` (RouterDC's multiple choice: the answer's probability when right,
0 when wrong, so right means > 0), `fraction` (share of right samples), `binary`, `graded`
(any scale; accuracy is the plain mean). `credit_matrix()` is the per-query accuracy that routers
learn and `composer eval` reports; `with_score_kinds({task: kind})` overrides a task's kind.
A reader sets it (RouterDC: per file, RouterDC's way); otherwise it is inferred from the values.

    >>> table = read_outcomes("../shared/data/outcomes/routerdc-7b/mmlu_test.json")
    >>> table.expert_summary()           # rows, mean score, missing, total cost per expert
    >>> table.score_matrix()             # query x expert, NaN where missing
    >>> table.credit_matrix()            # the same as accuracy credit, by the task's score kind

The readers for the file formats in use (RouterDC JSON, RouteLLM CSV, RouterBench wide CSV,
generic long CSV/JSONL) live in `composer.outcome_readers` (which does not import this module);
`read_outcomes` picks one. Rows recording the same (query, expert) twice merge by the policy in
`composer.outcome_merge` (`on_duplicate="error" | "first" | "mean"`); `table.report` says what
each file's reading merged or dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from composer.errors import OutcomeFormatError
from composer.outcome_merge import check_policy, merge_duplicates, report_line
from composer.outcome_readers import detect_format, is_mt_bench, parse_scores, read_frame

if TYPE_CHECKING:
    from composer.config import Price

COLUMNS = ("query_id", "prompt", "task", "expert", "score", "cost", "response", "score_kind")
SCORE_KINDS = {
    "correct_if_positive": "right when the score is > 0 (RouterDC's multiple choice: the answer's "
                           "probability when right, 0 when wrong)",
    "fraction": "the share of right samples, in [0, 1]; accuracy is its mean",
    "binary": "1 right, 0 wrong",
    "graded": "a grade on any scale (a judge's 1-10, a reward); accuracy is its mean",
}
CHARS_PER_TOKEN = 4.0  # rough English average; used only when a table carries no costs
DEFAULT_COMPLETION_TOKENS = 128


def credit(scores: np.ndarray, kind: str) -> np.ndarray:
    """Accuracy credit of scores of one kind: 1/0 for correct_if_positive, the score otherwise."""
    s = np.asarray(scores, dtype=float)
    if kind == "correct_if_positive":
        return np.where(np.isnan(s), np.nan, (s > 0).astype(float))
    return s


def infer_score_kind(scores: np.ndarray) -> str:
    """binary when every recorded score is 0 or 1, fraction when in [0, 1], else graded."""
    v = np.asarray(scores, dtype=float)
    v = v[np.isfinite(v)]
    if v.size and np.isin(v, (0.0, 1.0)).all():
        return "binary"
    if v.size and v.min() >= 0.0 and v.max() <= 1.0:
        return "fraction"
    return "graded" if v.size else "binary"


def parse_score_kinds(items: Iterable[str]) -> dict[str, str]:
    """`TASK=KIND` strings (comma-separated allowed) -> {task: kind}; bad ones raise naming the item."""
    out: dict[str, str] = {}
    for item in items:
        for part in (x.strip() for x in item.split(",")):
            if not part:
                continue
            task, sep, kind = part.partition("=")
            if not sep or not task.strip() or kind.strip() not in SCORE_KINDS:
                raise OutcomeFormatError(f"--score-kind '{part}': expected TASK=KIND with KIND one of "
                                         f"{', '.join(SCORE_KINDS)}")
            out[task.strip()] = kind.strip()
    return out


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

    def __init__(self, frame: pd.DataFrame, source: str = "<table>", report: list[dict] | None = None):
        if "score_kind" not in frame.columns:  # a frame built elsewhere: infer each task's kind
            frame = frame.assign(score_kind=_task_kinds(frame, None, source))
        self.frame = frame
        self.source = source
        self.report = list(report or [])

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_frame(cls, df: pd.DataFrame, source: str = "<frame>", on_duplicate: str = "error") -> "OutcomeTable":
        """Validate and normalise a long frame. Missing optional columns are added empty; a missing
        `score_kind` is inferred per task; rows repeating a (query, expert) pair merge by
        `on_duplicate` (see `composer.outcome_merge`)."""
        check_policy(on_duplicate)
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
            "score_kind": (df["score_kind"].astype(object).where(df["score_kind"].notna(), None)
                           if "score_kind" in df else None),
            "_row": df["_row"].to_numpy() if "_row" in df else np.arange(1, len(df) + 1),
        })
        out = out.reset_index(drop=True)
        out, report = merge_duplicates(out, source, on_duplicate)
        out["score_kind"] = _task_kinds(out, out["score_kind"], source)
        return cls(out.drop(columns="_row"), source, [report])

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

    @property
    def score_kinds(self) -> dict[str, str]:
        """{task: score kind}, in task order."""
        kinds = self.frame.drop_duplicates("task").set_index("task")["score_kind"]
        return {str(t): str(k) for t, k in kinds.items()}

    def with_score_kinds(self, kinds: Mapping[str, str]) -> "OutcomeTable":
        """The same table with these tasks' score kinds replaced (checked against their scores)."""
        unknown = sorted(set(kinds) - set(self.tasks))
        if unknown:
            raise OutcomeFormatError(f"{self.source}: --score-kind names task(s) {unknown} that the table does not "
                                     f"have; its tasks: {', '.join(self.tasks)}")
        df = self.frame.copy()
        for task, kind in kinds.items():
            if kind not in SCORE_KINDS:
                raise OutcomeFormatError(f"score kind '{kind}' for task '{task}' is not one of {', '.join(SCORE_KINDS)}")
            df.loc[df["task"] == task, "score_kind"] = kind
        df["score_kind"] = _task_kinds(df, df["score_kind"], self.source)
        return OutcomeTable(df, self.source, self.report)

    def report_lines(self) -> list[str]:
        """What reading merged or dropped, one line per file that needed it."""
        return [line for r in self.report if (line := report_line(r))]

    # -- per query --------------------------------------------------------------------------
    def queries(self) -> pd.DataFrame:
        """One row per query (in first-appearance order): prompt and task, indexed by query_id."""
        q = self.frame.drop_duplicates("query_id")[["query_id", "prompt", "task", "score_kind"]]
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

    def credit_matrix(self, experts: Sequence[str] | None = None) -> pd.DataFrame:
        """Queries x experts accuracy credit (by each task's score kind); NaN where missing."""
        m = self._pivot("score", experts)
        kinds = self.queries()["score_kind"].reindex(m.index).to_numpy()
        right = kinds == "correct_if_positive"
        if right.any():
            m.loc[right] = credit(m.loc[right].to_numpy(), "correct_if_positive")
        return m

    def cost_matrix(self, experts: Sequence[str] | None = None) -> pd.DataFrame:
        """Queries x experts costs; NaN where unknown."""
        return self._pivot("cost", experts)

    # -- per expert -------------------------------------------------------------------------
    def mean_scores(self) -> pd.Series:
        """Mean score per expert over its recorded scores (missing ones left out)."""
        return self.frame.groupby("expert", sort=False)["score"].mean().reindex(self.experts)

    def accuracies(self) -> pd.Series:
        """Mean accuracy credit per expert (by the score kinds), missing scores left out."""
        return self.credit_matrix().mean(axis=0, skipna=True).reindex(self.experts)

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
            "accuracy": self.accuracies(),
            "total_cost": g["cost"].sum(min_count=1),
            "cost_missing": g["cost"].apply(lambda s: int(s.isna().sum())),
        }).reindex(self.experts)
        out.index.name = "expert"
        return out

    def best_expert(self) -> str:
        """The expert with the highest accuracy (mean credit by the score kinds)."""
        means = self.accuracies()
        if means.isna().all():
            raise OutcomeFormatError(f"{self.source}: no expert has any recorded score")
        return str(means.idxmax())

    def oracle_score(self) -> float:
        """Mean over queries of the best expert's credit (queries with no score at all excluded)."""
        best = self.credit_matrix().max(axis=1, skipna=True)
        return float(best.mean()) if best.notna().any() else float("nan")

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary: per expert rows/mean/missing/cost, oracle, per-task counts."""
        s = self.expert_summary()
        experts = {e: {"rows": int(r.rows), "scored": int(r.scored), "missing": int(r.missing),
                       "mean_score": _f(r.mean_score), "accuracy": _f(r.accuracy), "total_cost": _f(r.total_cost),
                       "cost_missing": int(r.cost_missing)} for e, r in s.iterrows()}
        tasks = self.queries()["task"].value_counts(sort=False)
        unscored = int(self.score_matrix().isna().all(axis=1).sum())
        return {"source": self.source, "queries": self.n_queries, "rows": len(self.frame),
                "experts": experts, "tasks": {t: int(n) for t, n in tasks.items()},
                "score_kinds": self.score_kinds, "read_report": self.report_lines(),
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
        return OutcomeTable(self.frame[mask].reset_index(drop=True), self.source, self.report)

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
        return (OutcomeTable(self.frame[~is_test].reset_index(drop=True), f"{self.source}[train]", self.report),
                OutcomeTable(self.frame[is_test].reset_index(drop=True), f"{self.source}[test]", self.report))

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
        return OutcomeTable(df, self.source, self.report)

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
    kinds = frame.drop_duplicates(["task", "score_kind"])
    clash = kinds["task"].duplicated()
    if clash.any():
        task = kinds.loc[clash.idxmax(), "task"]
        found = kinds.loc[kinds["task"] == task, "score_kind"].tolist()
        raise OutcomeFormatError(f"task '{task}' has score kinds {found} in different tables; set one with "
                                 f"--score-kind {task}=KIND")
    return OutcomeTable(frame, source, [r for t in tables for r in t.report])


def read_file(path: str | Path, format: str = "auto", on_duplicate: str = "error") -> OutcomeTable:
    """One outcome file as a table (see `composer.outcome_readers` for the formats)."""
    fmt = detect_format(Path(path)) if format == "auto" else format
    if fmt == "feedback":  # the endpoint's feedback store (composer/feedback.py) builds its own table
        from composer.feedback import read_feedback

        return read_feedback(path)
    return OutcomeTable.from_frame(read_frame(path, fmt), str(path), on_duplicate)


def read_outcomes(paths: str | Path | Sequence[str | Path], format: str = "auto",
                  on_duplicate: str = "error") -> OutcomeTable:
    """Read one or many outcome files (or folders of them) into one table.

    format: "auto" (by extension and header), "routerdc", "routellm", "routerbench", "mt_bench" or "long".
    A folder reads its *.json and *.csv files (not *.jsonl, which folders of questions also hold),
    except RouteLLM's MT-Bench folder (question.jsonl + judgements.jsonl), which is one table.
    on_duplicate: what to do when a file gives one (query, expert) two different values
    ("error", "first" or "mean"); rows that complement each other always merge.
    """
    check_policy(on_duplicate)
    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables: list[OutcomeTable] = []
    for p in map(Path, paths):
        if p.is_dir() and (format == "mt_bench" or (format == "auto" and is_mt_bench(p))):
            tables.append(read_file(p, "mt_bench", on_duplicate))  # a folder that is one table
        elif p.is_dir():
            inside = sorted(x for x in p.iterdir() if x.suffix in (".json", ".csv") and x.is_file())
            if not inside:
                raise OutcomeFormatError(f"{p}: folder holds no .json or .csv outcome files")
            folder = concat([read_file(f, format, on_duplicate) for f in inside])
            tables.append(OutcomeTable(folder.frame, f"{p}/ ({len(inside)} files)", folder.report))
        elif p.exists():
            tables.append(read_file(p, format, on_duplicate))
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
    return parse_scores(s, source=source, column=col)  # same value rules as the file readers


def _task_kinds(frame: pd.DataFrame, given: pd.Series | None, source: str) -> pd.Series:
    """One score kind per task: the given one (checked against the scores), else inferred."""
    out = pd.Series(index=frame.index, dtype=object)
    for task, idx in frame.groupby("task", sort=False).groups.items():
        scores = frame.loc[idx, "score"].to_numpy(dtype=float)
        kinds = set() if given is None else {str(k) for k in given.loc[idx].dropna()} - {"", "nan", "None"}
        if len(kinds) > 1:
            raise OutcomeFormatError(f"{source}: task '{task}' has several score kinds {sorted(kinds)}; one per task")
        kind = kinds.pop() if kinds else infer_score_kind(scores)
        _check_kind(kind, task, scores, frame.loc[idx], source)
        out.loc[idx] = kind
    return out


def _check_kind(kind: str, task: str, scores: np.ndarray, rows: pd.DataFrame, source: str) -> None:
    if kind not in SCORE_KINDS:
        raise OutcomeFormatError(f"{source}: task '{task}', column 'score_kind': '{kind}' is not one of "
                                 f"{', '.join(SCORE_KINDS)}")
    bad = {"binary": lambda v: ~np.isin(v, (0.0, 1.0)), "fraction": lambda v: (v < 0) | (v > 1),
           "correct_if_positive": lambda v: v < 0}.get(kind)
    if bad is None:
        return
    ok = np.isfinite(scores)
    wrong = np.zeros(len(scores), dtype=bool)
    wrong[ok] = bad(scores[ok])
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        r = rows.iloc[i]
        where = f"row {r['_row']}, " if "_row" in rows else ""
        raise OutcomeFormatError(f"{source}: {where}query '{r['query_id']}', expert '{r['expert']}': score {float(scores[i]):g} "
                                 f"does not fit task '{task}''s score kind {kind} ({SCORE_KINDS[kind]})")


def _f(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
