"""`composer outcomes ...`: read recorded outcome tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from composer.cli.main import outcomes_app
from composer.errors import ComposerError

EXIT_FORMAT = 2


def _fmt(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


@outcomes_app.command("summary")
def summary(
    paths: List[Path] = typer.Argument(..., help="Outcome files or folders (RouterDC JSON, RouteLLM CSV, "
                                                 "RouterBench CSV, long CSV/JSONL)."),
    format: str = typer.Option("auto", "--format", "-f", help="auto, routerdc, routellm, routerbench, mt_bench or long."),
    prices: Optional[Path] = typer.Option(None, "--prices", help="experts.yaml or a {expert: price} YAML; "
                                          "fills costs the table lacks from a token estimate."),
    by_task: bool = typer.Option(False, "--by-task", help="Also print each task's summary."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    score_kind: List[str] = typer.Option(None, "--score-kind", help="TASK=KIND: how TASK's scores count as accuracy "
                                         "(correct_if_positive, fraction, binary, graded); repeatable."),
    on_duplicate: str = typer.Option("error", "--on-duplicate", help="When a file gives one (query, expert) two "
                                     "different values: error, first or mean (complementary rows always merge)."),
):
    """Per expert: rows, mean score, accuracy (by score kind), missing scores, total cost; plus the oracle."""
    from composer.outcomes import load_prices, parse_score_kinds, read_outcomes

    try:
        table = read_outcomes(paths, format=format, on_duplicate=on_duplicate)
        if score_kind:
            table = table.with_score_kinds(parse_score_kinds(score_kind))
        for line in table.report_lines():
            typer.echo(f"note: {line}", err=True)
        if prices is not None:
            table = table.with_price_costs(load_prices(prices))
    except ComposerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FORMAT) from None
    s = table.summary()
    if by_task:
        s["by_task"] = {t: table.filter(tasks=[t]).summary() for t in table.tasks}
    if as_json:
        typer.echo(json.dumps(s, indent=2, ensure_ascii=False))
        return
    _print_summary(s)
    for t, ts in s.get("by_task", {}).items():
        typer.echo(f"\n== task {t}")
        _print_summary(ts)


def _print_summary(s: dict) -> None:
    tasks = ", ".join(f"{t} ({n})" for t, n in s["tasks"].items())
    typer.echo(f"{s['source']}: {s['queries']} queries, {s['rows']} rows; tasks: {tasks}")
    typer.echo("score kinds: " + ", ".join(f"{t} {k}" for t, k in s["score_kinds"].items()))
    width = max([len("expert")] + [len(e) for e in s["experts"]])
    typer.echo(f"{'expert':<{width}}  {'rows':>7}  {'mean':>7}  {'accuracy':>8}  {'missing':>7}  {'total_cost':>12}")
    for e, r in s["experts"].items():
        typer.echo(f"{e:<{width}}  {r['rows']:>7}  {_fmt(r['mean_score']):>7}  {_fmt(r['accuracy']):>8}  "
                   f"{r['missing']:>7}  {_fmt(r['total_cost'], 6):>12}")
    typer.echo(f"{'oracle (accuracy)':<{width}}  {s['queries']:>7}  {'':>7}  {_fmt(s['oracle_score']):>8}")
    typer.echo(f"best single expert: {s['best_expert']}")
    if s["queries_without_any_score"]:
        typer.echo(f"queries without any score (excluded from the oracle): {s['queries_without_any_score']}")
