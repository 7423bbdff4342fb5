"""The typer application. Command groups live in sibling modules that register on these apps.

Each area's commands are in their own module (listed in COMMAND_MODULES) so the CLI stays thin:
every command parses its arguments, calls the one core (composer.core.Composer) or an eval/bench
function, and prints. Heavy libraries are imported inside commands, never at module import.

Exit codes (every command): 0 success; 1 a runtime failure (a model, a backend, the network);
2 a usage or configuration problem (a bad option, an invalid experts.yaml, a missing file),
always with one line naming what and where.
"""

from __future__ import annotations

import importlib
from typing import Optional

import typer

EPILOG = ("Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error. "
          "Registry: --config, else $COMPOSER_CONFIG, else ./experts.yaml, else the packaged default.")
app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False,
                  help="composer: answer each request with the best mix of models you have.",
                  epilog=EPILOG)
experts_app = typer.Typer(no_args_is_help=True, help="Inspect the experts of a registry.")
outcomes_app = typer.Typer(no_args_is_help=True, help="Read recorded per-query outcome tables.")
router_app = typer.Typer(no_args_is_help=True, help="Train and inspect routers.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print measured numbers and write JSON.")
specialist_app = typer.Typer(no_args_is_help=True, help="Train, evaluate and query specialists (Mowst, FEAMOE).")
models_app = typer.Typer(no_args_is_help=True, help="Embedded model files.")
data_app = typer.Typer(no_args_is_help=True, help="The public data sets composer uses (opt-in download).")

app.add_typer(experts_app, name="experts")
app.add_typer(outcomes_app, name="outcomes")
app.add_typer(router_app, name="router")
app.add_typer(bench_app, name="bench")
app.add_typer(specialist_app, name="specialist")
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"composer {version('composer-moe')}")
        except PackageNotFoundError:  # running from a source tree that was never installed
            typer.echo("composer (not installed)")
        raise typer.Exit(0)


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@app.callback()
def _global(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
    log_format: str = typer.Option("text", "--log-format", help="Log lines as 'text' or 'json' (on stderr)."),
    log_level: str = typer.Option("WARNING", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    log_prompts: bool = typer.Option(False, "--log-prompts",
                                     help="Also log prompts and answers (never logged otherwise)."),
) -> None:
    """composer: answer each request with the best mix of models you have."""
    if log_format not in LOG_FORMATS:
        raise typer.BadParameter(f"'{log_format}' is not one of {', '.join(LOG_FORMATS)}",
                                 param_hint="--log-format")
    if log_level.upper() not in LOG_LEVELS:
        raise typer.BadParameter(f"'{log_level}' is not one of {', '.join(LOG_LEVELS)}",
                                 param_hint="--log-level")
    from composer.observability import configure_logging

    configure_logging(log_format, log_level.upper(), log_prompts)

# One module per area; each registers its commands on the apps above when imported.
COMMAND_MODULES = (
    "composer.cli.core_cmds",
    "composer.cli.init_cmd",
    "composer.cli.data",
    "composer.cli.aggregation",
    "composer.cli.outcomes",
    "composer.cli.routers",
    "composer.cli.router_signal",
    "composer.cli.serve",
    "composer.cli.bench_service",
    "composer.cli.bench_gateway",
    "composer.cli.bench_scheduler",
    "composer.cli.specialists",
    "composer.cli.collect",
)

_registered = False


def register_commands() -> typer.Typer:
    global _registered
    if not _registered:
        for mod in COMMAND_MODULES:
            importlib.import_module(mod)
        _registered = True
    return app


def main() -> None:
    from composer.offline import ensure_offline

    ensure_offline()  # at run time, not import time: composer never reaches the network
    register_commands()
    try:
        app()
    except ModuleNotFoundError as exc:  # an optional extra is not installed: one line, exit 2
        from composer.extras import missing_extra_message

        line = missing_extra_message(exc)
        if line is None:
            raise
        typer.echo(f"error: {line}", err=True)
        raise SystemExit(2) from None
