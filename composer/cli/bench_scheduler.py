"""`composer bench scheduler`: grouped plan vs naive order, stream policy vs Belady, overhead.

The benchmark itself is evals/bench_scheduler.py; this command parses options, prints the
tables and writes the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from composer.cli.main import bench_app


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@bench_app.command("scheduler")
def bench_scheduler(
    n: int = typer.Option(100, "--n", help="Queries in the routed trace."),
    k: int = typer.Option(2, "--k", help="Experts per query."),
    d: int = typer.Option(8, "--d", help="Distinct experts."),
    gen_s: float = typer.Option(0.005, help="Fake generation time g per call (seconds)."),
    ratios: str = typer.Option("1,10,30", help="Fake load/generation ratios L/g to run."),
    real: bool = typer.Option(True, help="Also run the real llama.cpp models (SmolLM2 + Gemma-3-270M)."),
    real_n: int = typer.Option(4, help="Queries for the in-process llama.cpp case (k = D = 2)."),
    server: bool = typer.Option(True, help="Also run the real llama.cpp servers (start = load)."),
    server_n: int = typer.Option(2, help="Queries for the server case."),
    overhead_n: int = typer.Option(10_000, help="Queries for the overhead measurement."),
    max_wait: float = typer.Option(0.5, help="Stream batcher max_wait_s."),
    seed: int = typer.Option(0, help="Trace seed."),
    quick: bool = typer.Option(False, help="A small smoke run (fake backends only, seconds)."),
    out: Path = typer.Option(Path("results/bench_scheduler.json"), "--out", help="JSON output file."),
):
    """Run the scheduler benchmark, print its tables and write JSON."""
    from composer.evals.bench_scheduler import format_tables, run_benchmark

    kw = dict(n=n, k=k, d=d, gen_s=gen_s, ratios=_floats(ratios), real=real, real_n=real_n,
              real_server=server, server_n=server_n, overhead_n=overhead_n, max_wait_s=max_wait, seed=seed)
    if quick:
        kw.update(n=30, d=5, gen_s=0.002, ratios=(1.0, 10.0), real=False, overhead_n=2000)
    log = lambda msg: typer.echo(msg, err=True)  # noqa: E731 - progress on stderr, tables on stdout
    res = run_benchmark(**kw, log=log)
    typer.echo(format_tables(res))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    typer.echo(f"\nwrote {out}")
