"""`composer bench gateway`: composer serve vs the LiteLLM proxy on one fake upstream.

The benchmark is evals/bench_gateway.py; this command parses options, prints and writes JSON.
The LiteLLM proxy comes from the `bench` extra (pip install 'composer-moe[bench]').
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import typer

from composer.cli.main import bench_app


@bench_app.command("gateway")
def bench_gateway(
    levels: str = typer.Option("1,8,32,64", help="Closed-loop client counts, comma-separated."),
    seconds: float = typer.Option(8.0, help="Seconds per level (bounded by --max-requests)."),
    delay: float = typer.Option(0.2, help="The fake upstream's seconds per answer."),
    first_token: float = typer.Option(0.05, help="The fake upstream's seconds to the first streamed token."),
    max_requests: int = typer.Option(4000, help="At most this many requests per level."),
    proxy: bool = typer.Option(True, help="Also measure the LiteLLM proxy (needs the `bench` extra)."),
    out: Path = typer.Option(Path("results/bench_gateway.json"), "--out", help="JSON output file."),
):
    """Throughput, latency overhead and time to first token: composer vs the LiteLLM proxy."""
    from composer.evals.bench_gateway import format_report, run_benchmark

    try:
        lv = [int(x) for x in levels.split(",") if x.strip()]
    except ValueError:
        typer.echo(f"error: --levels must be integers separated by commas, got {levels!r}", err=True)
        raise typer.Exit(2) from None
    if proxy and shutil.which("litellm", path=str(Path(sys.executable).parent)) is None:
        typer.echo("error: the LiteLLM proxy is not installed; pip install 'composer-moe[bench]' "
                   "(or pass --no-proxy)", err=True)
        raise typer.Exit(2)
    res = run_benchmark(levels=lv, seconds=seconds, delay=delay, first_token=first_token,
                        max_requests=max_requests, proxy=proxy, log=lambda m: typer.echo(m, err=True))
    typer.echo(format_report(res))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    typer.echo(f"\nwrote {out}")


@bench_app.command("stream")
def bench_stream(
    runs: int = typer.Option(7, help="Runs per measurement (the median is reported)."),
    first_token: float = typer.Option(0.2, help="The fake upstream's seconds to its first token."),
    ray: bool = typer.Option(True, "--ray/--no-ray", help="Also time SmolLM2 in a Ray actor (executor: ray)."),
    out: Path = typer.Option(Path("results/bench_stream.json"), "--out", help="JSON output file."),
):
    """Time to first token (SmolLM2 and a fake upstream) and disconnect, composer vs on its own."""
    from composer.evals.bench_stream import format_report, run_benchmark

    res = run_benchmark(runs=runs, first_token=first_token, ray=ray, log=lambda m: typer.echo(m, err=True))
    typer.echo(format_report(res))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    typer.echo(f"\nwrote {out}")
