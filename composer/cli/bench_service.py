"""`composer bench service`: endpoint overhead (HTTP vs in-process) and a fault soak.

The benchmark is evals/bench_service.py; this command parses options, prints and writes JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from composer.cli.main import bench_app


@bench_app.command("service")
def bench_service(
    n: int = typer.Option(200, "--n", help="Requests per overhead phase (sequential, then concurrent)."),
    clients: int = typer.Option(8, help="Concurrent clients."),
    soak_n: int = typer.Option(2000, help="Requests in the fault soak."),
    kill_at: int = typer.Option(600, help="Request index at which the server expert is killed."),
    overhead: bool = typer.Option(True, help="Run the overhead benchmark."),
    soak: bool = typer.Option(True, help="Run the fault soak."),
    out: Path = typer.Option(Path("results/bench_service.json"), "--out", help="JSON output file."),
):
    """Measure endpoint overhead and survive a fault soak against a real `composer serve`."""
    from composer.evals.bench_service import format_report, run_benchmark

    res = run_benchmark(overhead=overhead, soak=soak, n=n, clients=clients, soak_n=soak_n, kill_at=kill_at,
                        log=lambda m: typer.echo(m, err=True))
    typer.echo(format_report(res))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    typer.echo(f"\nwrote {out}")
