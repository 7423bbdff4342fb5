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


def routerdc_table(folder: Path, routers: list[str], *, params: dict[str, dict] | None = None, embedder=None,
                   progress=print) -> dict[str, Any]:
    """Fit each router on the train files, replay on the test files; rows in percent."""
    from composer.evals.router_eval import evaluate

    train, test = read_split(folder)
    res = evaluate(train, test, routers, params=params, sweep=False, embedder=embedder, progress=progress)
    rows: dict[str, dict[str, float]] = {}
    singles = {e: _row(p["task_accuracy"]) for e, p in res["singles"].items()}
    best = max(singles, key=lambda e: singles[e]["id_avg"])
    rows[f"best single model ({_short(best)})"] = singles[best]
    rows["best model per task (needs the task label)"] = _row(
        {t: max(res["singles"][e]["task_accuracy"][t] for e in singles) for t in [*ID_FILES, *OOD_FILES]})
    rows["RouterDC, published"] = dict(PUBLISHED)
    for name in routers:
        rows[f"composer `{name}`"] = _row(res["routers"][name]["default"]["task_accuracy"])
    rows["oracle"] = _row(res["oracle"]["task_accuracy"])
    return {"rows": rows, "columns": [*ID_FILES, "id_avg", *OOD_FILES, "ood_avg"],
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
    return "\n".join(lines)


def write(res: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1), encoding="utf-8")
