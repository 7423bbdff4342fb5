"""Aggregation commands: `composer leaderboard` and `composer bench aggregation`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from composer.cli.main import app, bench_app

EXIT_USAGE = 2


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command("leaderboard")
def leaderboard(
    results: List[str] = typer.Argument(..., help=(
        "Result files: live .jsonl stores (composer eval --benchmark), router results.json "
        "(composer eval), comparison/generic JSON; folders and glob patterns are expanded.")),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for leaderboard.md/.html/.json and the PNG plots."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
):
    """A Markdown table, a static HTML page and accuracy-vs-cost/latency plots over results."""
    from composer.evals.leaderboard import write_leaderboard

    try:
        res = write_leaderboard(results, out)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc), EXIT_USAGE)
    if as_json:
        typer.echo(json.dumps(res["rows"], indent=2))
        return
    from composer.evals.leaderboard import markdown

    typer.echo(markdown(res["rows"]))
    typer.echo("wrote " + ", ".join(res["files"]))


@bench_app.command("aggregation")
def bench_aggregation(
    k: int = typer.Option(3, help="Proposers per query."),
    queries: int = typer.Option(5, help="Queries timed (one at a time)."),
    agg_delay: float = typer.Option(0.25, help="Aggregator delay per call, seconds."),
    delays: Optional[str] = typer.Option(None, help="Proposer delays, comma-separated seconds (default 0.2, 0.35, ...)."),
    out: Path = typer.Option(Path("runs/bench/aggregation.json"), "--out", help="JSON result file."),
):
    """Stage parallelism on fake experts with set delays: calls per query and wall time vs
    slowest proposer + aggregator (remote experts concurrent; local for contrast)."""
    from composer.evals.bench_aggregation import run_bench

    try:
        ds = [float(x) for x in delays.split(",")] if delays else None
        res = run_bench(k=k, queries=queries, agg_s=agg_delay, delays=ds, out=out, echo=typer.echo)
    except ValueError as exc:
        _fail(str(exc), EXIT_USAGE)
    if not all(res["targets"].values()):
        raise typer.Exit(1)
