"""Bootstrap intervals for task-averaged accuracy: how far a table's differences are from noise.

Queries are resampled with replacement within each task (the task sizes stay fixed), the same
resample for every row, so a difference between two rows is paired over the same queries. A
row is one expert choice per query; its credit per query comes from the test table.

    >>> iv = task_average_intervals(Y, tasks, {"stack": picks, "best per task": picks2},
    ...                             groups={"id_avg": ["mmlu", "gsm8k"]}, reference="best per task")
    >>> iv["stack"]["id_avg"]            # [low, high] in percent (95 %)
    >>> iv["stack"]["id_avg_vs_reference"]  # [difference, low, high]
"""

from __future__ import annotations

from typing import Any

import numpy as np


def task_average_intervals(Y: np.ndarray, tasks: np.ndarray, rows: dict[str, np.ndarray], *,
                           groups: dict[str, list[str]], reference: str | None = None, n_boot: int = 1000,
                           level: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Percentile intervals (in %) of each group's task-averaged accuracy for every row; with
    `reference`, also each row's paired difference to that row: [observed, low, high]."""
    if reference is not None and reference not in rows:
        raise ValueError(f"reference row {reference!r} is not among {list(rows)}")
    rng = np.random.default_rng(seed)
    n = len(tasks)
    credit = {name: Y[np.arange(n), np.asarray(pick, dtype=int)] for name, pick in rows.items()}
    wanted = sorted({t for ts in groups.values() for t in ts})
    # per task: (n_boot, ) mean credit of every row over one shared resample of that task's queries
    boot: dict[str, dict[str, np.ndarray]] = {name: {} for name in rows}
    observed: dict[str, dict[str, float]] = {name: {} for name in rows}
    for t in wanted:
        idx = np.flatnonzero(tasks == t)
        if not len(idx):
            raise ValueError(f"task {t!r} has no queries in the test table")
        draw = idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))]
        for name, c in credit.items():
            boot[name][t] = np.nanmean(c[draw], axis=1)
            observed[name][t] = float(np.nanmean(c[idx]))
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, dict[str, Any]] = {}
    for name in rows:
        out[name] = {}
        for g, ts in groups.items():
            dist = 100 * np.mean([boot[name][t] for t in ts], axis=0)
            out[name][g] = [round(float(np.percentile(dist, lo_q)), 2), round(float(np.percentile(dist, hi_q)), 2)]
            if reference is not None and name != reference:
                ref = 100 * np.mean([boot[reference][t] for t in ts], axis=0)
                diff = dist - ref
                obs = 100 * (np.mean([observed[name][t] for t in ts]) - np.mean([observed[reference][t] for t in ts]))
                out[name][f"{g}_vs_reference"] = [round(float(obs), 2), round(float(np.percentile(diff, lo_q)), 2),
                                                  round(float(np.percentile(diff, hi_q)), 2)]
    return out
