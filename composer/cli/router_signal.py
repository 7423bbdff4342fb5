"""`composer router signal`: is there anything to route on inside each task of an outcome table?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from composer.cli.main import router_app
from composer.cli.routers import (DUPLICATE_OPT, EXIT_USAGE, FORMAT_OPT, OUTCOMES_OPT, PARAM_OPT, SCORE_KIND_OPT,
                                  _check_kinds_named, _fail, _read, expand_paths, parse_params)
from composer.errors import ComposerError


@router_app.command("signal")
def signal_cmd(
    outcomes: List[str] = OUTCOMES_OPT,
    router: List[str] = typer.Option(None, "--router", "-r", help="Learned routers to test (default: knn, mlp)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Only these tasks (comma-separated)."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds within each task."),
    permutations: int = typer.Option(50, "--permutations", help="Shuffles of the outcome rows for the null; "
                                     "the smallest p-value is 1/(1+permutations)."),
    seed: int = typer.Option(0, help="Seed of the folds, the shuffles and the routers."),
    format: str = FORMAT_OPT,
    param: List[str] = PARAM_OPT,
    score_kind: List[str] = SCORE_KIND_OPT,
    on_duplicate: str = DUPLICATE_OPT,
    out: Optional[Path] = typer.Option(None, "--out", help="JSON file for the result."),
):
    """Per task: does a learned router's per-query pick beat the task's best expert in cross-validation,
    and do its predictions track which expert does better on which query, beyond what shuffled
    outcomes give? (A permutation test on the training table; see docs/routers.md.)"""
    from composer.evals.routing_signal import markdown, routing_signal
    from composer.routers import ROUTERS

    paths = expand_paths(outcomes)
    if not paths:
        _fail("give --outcomes (files, folders or a quoted glob)", EXIT_USAGE)
    names = [n for v in (router or ["knn,mlp"]) for n in v.split(",") if n]
    unknown = [n for n in names if n not in ROUTERS]
    if unknown:
        _fail(f"unknown router(s) {unknown}; known: {', '.join(ROUTERS)}", EXIT_USAGE)
    params = parse_params(param, names)
    try:
        table = _read(paths, format, None, [t for t in tasks.split(",") if t] if tasks else None,
                      score_kind, on_duplicate)
        _check_kinds_named(score_kind, table)
        res = routing_signal(table, names, folds=folds, permutations=permutations, seed=seed, params=params,
                             progress=lambda m: typer.echo(m, err=True))
    except ComposerError as exc:
        _fail(str(exc), EXIT_USAGE)
    typer.echo(markdown(res))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, ensure_ascii=False))
        typer.echo(f"wrote {out}")
