"""Rows that record the same (query, expert) twice: merge them, or refuse, by a stated policy.

Real outcome files list a sample more than once: a RouterBench-format CSV may give one row with
some models' scores and another with the rest (NaN where absent). Such rows *complement* each
other (at most one value per column) and always merge into one. Rows that give the same pair two
different scores or costs *conflict*; the policy decides:

- ``error`` (default): refuse, naming both rows of the file and their values;
- ``first``: keep the first recorded value (file order), drop the later ones;
- ``mean``: average the recorded scores (and costs).

Rows of one query id with different prompts or tasks are two queries sharing an id: always an
error, whatever the policy. `merge_duplicates` returns the merged frame and a report of what it
merged or dropped.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from composer.errors import OutcomeFormatError

DUPLICATE_POLICIES = ("error", "first", "mean")
_KEY = ["query_id", "expert"]


def check_policy(policy: str) -> str:
    if policy not in DUPLICATE_POLICIES:
        raise OutcomeFormatError(f"unknown duplicate policy '{policy}'; use one of {', '.join(DUPLICATE_POLICIES)}")
    return policy


def empty_report(source: str, rows: int, policy: str) -> dict[str, Any]:
    return {"source": source, "rows": int(rows), "policy": policy, "duplicate_rows": 0, "pairs_merged": 0,
            "complementary": 0, "identical": 0, "conflicts": 0, "rows_dropped": 0}


def merge_duplicates(frame: pd.DataFrame, source: str, policy: str = "error") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Merge rows of the same (query_id, expert). `frame` has the long columns and `_row` (the
    record number in the file). Returns (frame with one row per pair, report)."""
    check_policy(policy)
    report = empty_report(source, len(frame), policy)
    dup = frame.duplicated(_KEY, keep=False)
    if not dup.any():
        return frame, report
    d = frame[dup]
    g = d.groupby(_KEY, sort=False)
    for col in ("prompt", "task"):
        differs = g[col].nunique() > 1
        if differs.any():
            rows = _rows_of(d, differs.idxmax())
            raise OutcomeFormatError(
                f"{source}: rows {rows[0]} and {rows[1]}, column '{col}': query id '{differs.idxmax()[0]}' is "
                f"used for two different {col}s; give each query its own id")
    n_score, n_cost = g["score"].nunique(), g["cost"].nunique()
    single = (g["score"].count() <= 1) & (g["cost"].count() <= 1)  # at most one value per column
    conflict = (n_score > 1) | (n_cost > 1)
    if conflict.any() and policy == "error":
        key = conflict.idxmax()
        col = "score" if n_score[key] > 1 else "cost"
        part = d.set_index(_KEY).loc[[key]]
        vals = part[col].dropna()
        rows = part.loc[part[col].notna(), "_row"].tolist()
        raise OutcomeFormatError(
            f"{source}: rows {rows[0]} and {rows[1]}, column '{col}': query '{key[0]}' and expert '{key[1]}' "
            f"have two different {col}s ({vals.iloc[0]!r} and {vals.iloc[1]!r}); fix the file or choose a "
            "policy: --on-duplicate first (keep the first) or mean (average them)")
    merged = g.first()  # first non-missing value of every column, in file order
    if policy == "mean":
        merged["score"] = g["score"].mean()
        merged["cost"] = g["cost"].mean()
    merged = merged.reset_index()
    merged.index = d.index[~d.duplicated(_KEY, keep="first")]
    merged = merged[list(frame.columns)]
    out = pd.concat([frame[~dup], merged]).sort_index().reset_index(drop=True)
    report.update({
        "duplicate_rows": int(len(d)), "pairs_merged": int(g.ngroups), "complementary": int(single.sum()),
        "identical": int((~single & ~conflict).sum()),
        "conflicts": int(conflict.sum()), "rows_dropped": int(len(d) - g.ngroups),
    })
    return out, report


def report_line(r: dict[str, Any]) -> str | None:
    """A one-line account of a merge report (None when nothing was merged or dropped)."""
    if not r.get("duplicate_rows"):
        return None
    how = {"error": "", "first": "kept the first value", "mean": "averaged the values"}[r["policy"]]
    line = (f"{r['source']}: {r['duplicate_rows']} rows recorded {r['pairs_merged']} (query, expert) pairs more than "
            f"once; merged them into one row each ({r['complementary']} complementary, {r['identical']} identical")
    if r["conflicts"]:
        line += f", {r['conflicts']} conflicting: {how}"
    return line + f"); {r['rows_dropped']} rows folded away"


def _rows_of(d: pd.DataFrame, key) -> list[int]:
    rows = d.set_index(_KEY).loc[[key], "_row"].tolist()
    return rows + rows[-1:] if len(rows) < 2 else rows
