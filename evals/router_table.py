"""RouterDC's own split and metric, as one table: composer's routers next to the paper's rows.

Train on RouterDC's five `*_train` files (MMLU, CMMLU, GSM8K, ARC-C, HumanEval), test on their
five test files (in distribution) and on PreAlgebra, MBPP and C-EVAL (out of distribution),
counting accuracy RouterDC's way (the score kinds the RouterDC reader sets: a multiple-choice
query is right when the chosen model's score is > 0; GSM8K and code score the share of right
samples). Rows: the best single model (by the in-distribution average), the best model per task
(an upper bound that needs the task label), RouterDC's published numbers, and each router.

    >>> res = routerdc_table(Path("../shared/data/outcomes/routerdc-7b"), ["mlp", "stack"])
    >>> print(markdown(res))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from composer.errors import OutcomeFormatError
from composer.evals.bootstrap import task_average_intervals

TRAIN_FILES = ["mmlu_train.json", "cmmlu_train.json", "gsm8k-train.json", "arc_challenge_train.json",
               "humaneval_train.json"]
ID_FILES = {"mmlu": "mmlu_test.json", "cmmlu": "cmmlu_test.json", "gsm8k": "gsm8k-test.json",
            "arc_challenge": "arc_challenge_test.json", "humaneval": "humaneval_test.json"}
OOD_FILES = {"MATH_prealgebra": "MATH_prealgebra.json", "mbpp": "mbpp.json", "ceval": "ceval.json"}
LABELS = {"mmlu": "MMLU", "cmmlu": "CMMLU", "gsm8k": "GSM8K", "arc_challenge": "ARC-C", "humaneval": "HumanEval",
          "MATH_prealgebra": "PreAlgebra", "mbpp": "MBPP", "ceval": "C-EVAL"}
# RouterDC (NeurIPS 2024), Table 1 and its radar figure (values read from the figure: +-1, marked ~).
PUBLISHED = {"mmlu": 61.07, "cmmlu": "~52", "gsm8k": 70.32, "arc_challenge": 58.52, "humaneval": 51.02,
             "id_avg": "~58.6", "MATH_prealgebra": "~40", "mbpp": "~47", "ceval": "~52", "ood_avg": "~46.3"}


def read_split(folder: Path):
    """(train, test) tables of RouterDC's split; test holds the ID and OOD files."""
    from composer.outcomes import read_outcomes

    missing = [f for f in [*TRAIN_FILES, *ID_FILES.values(), *OOD_FILES.values()] if not (folder / f).exists()]
    if missing:
        raise OutcomeFormatError(f"{folder}: RouterDC's files {missing} are missing (expected RouterDC's "
                                 "datasets/split2_model7 outcomes)")
    train = read_outcomes([folder / f for f in TRAIN_FILES])
    test = read_outcomes([folder / f for f in [*ID_FILES.values(), *OOD_FILES.values()]])
    return train, test


TASK_BEST = "best model per task (needs the task label)"
INTERVAL_NOTE = ("95 % bootstrap intervals (1,000 resamples of the test queries within each task, the same "
                 "resample for every row); 'vs best per task' is the paired difference [observed, low, high]")


def routerdc_table(folder: Path, routers: list[str], *, params: dict[str, dict] | None = None, embedder=None,
                   progress=print) -> dict[str, Any]:
    """Fit each router on the train files, replay on the test files; rows in percent."""
    from composer.evals.router_eval import evaluate

    train, test = read_split(folder)
    res = evaluate(train, test, routers, params=params, sweep=False, embedder=embedder, progress=progress,
                   keep_choices=True)
    rows: dict[str, dict[str, float]] = {}
    singles = {e: _row(p["task_accuracy"]) for e, p in res["singles"].items()}
    best = max(singles, key=lambda e: singles[e]["id_avg"])
    rows[f"best single model ({_short(best)})"] = singles[best]
    per_task = {t: b["expert"] for t, b in res["best_single_per_task"].items()}
    rows[TASK_BEST] = _row({t: b["accuracy"] for t, b in res["best_single_per_task"].items()})
    rows["RouterDC, published"] = dict(PUBLISHED)
    for name in routers:
        rows[f"composer `{name}`"] = _row(res["routers"][name]["default"]["task_accuracy"])
    rows["oracle"] = _row(res["oracle"]["task_accuracy"])
    # the same queries' choices, for paired bootstrap intervals (the oracle's are not a router's)
    tasks = np.asarray(test.task_of().tolist())
    experts = list(res["experts"])
    picks = {f"best single model ({_short(best)})": np.full(len(tasks), experts.index(best)),
             TASK_BEST: np.array([experts.index(per_task[t]) for t in tasks])}
    for name in routers:
        picks[f"composer `{name}`"] = np.array(res["routers"][name].pop("choices"))
    intervals = task_average_intervals(test.credit_matrix(experts).to_numpy(dtype=float), tasks, picks,
                                       groups={"id_avg": list(ID_FILES), "ood_avg": list(OOD_FILES)},
                                       reference=TASK_BEST)
    return {"rows": rows, "columns": [*ID_FILES, "id_avg", *OOD_FILES, "ood_avg"], "intervals": intervals,
            "interval_note": INTERVAL_NOTE,
            "score_kinds": res["score_kinds"]["test"], "train": res["train"], "test": res["test"],
            "n_train_queries": res["n_train_queries"], "task_sizes": res["task_sizes"],
            "singles": singles, "routers": {n: {k: res["routers"][n][k] for k in ("params", "fit_s", "predict_s")}
                                            for n in routers}}


def _row(task_acc: dict[str, float]) -> dict[str, float]:
    row = {t: round(100 * task_acc[t], 2) for t in [*ID_FILES, *OOD_FILES]}
    row["id_avg"] = round(float(np.mean([100 * task_acc[t] for t in ID_FILES])), 2)
    row["ood_avg"] = round(float(np.mean([100 * task_acc[t] for t in OOD_FILES])), 2)
    return row


def _short(expert: str) -> str:
    return expert.split("/")[-1]


def markdown(res: dict[str, Any]) -> str:
    cols = res["columns"]
    head = "| | " + " | ".join("ID avg" if c == "id_avg" else "OOD avg" if c == "ood_avg" else LABELS[c]
                                for c in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for name, row in res["rows"].items():
        cells = [row.get(c, "") for c in cols]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in cells) + " |")
    if res.get("intervals"):
        lines += ["", res["interval_note"] + ":", "",
                  "| | ID avg | ID avg vs best per task | OOD avg | OOD avg vs best per task |", "|---|---|---|---|---|"]
        for name, iv in res["intervals"].items():
            def diff(key):
                d = iv.get(key)
                return "" if d is None else f"{d[0]:+.2f} [{d[1]:+.2f}, {d[2]:+.2f}]"
            lines.append(f"| {name} | [{iv['id_avg'][0]:.2f}, {iv['id_avg'][1]:.2f}] | {diff('id_avg_vs_reference')} | "
                         f"[{iv['ood_avg'][0]:.2f}, {iv['ood_avg'][1]:.2f}] | {diff('ood_avg_vs_reference')} |")
    return "\n".join(lines)


def write(res: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1), encoding="utf-8")
