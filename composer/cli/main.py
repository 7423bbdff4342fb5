"""The typer application. Command groups live in sibling modules that register on these apps.

Each area's commands are in their own module (listed in COMMAND_MODULES) so the CLI stays thin:
every command parses its arguments, calls the one core (composer.core.Composer) or an eval/bench
function, and prints. Heavy libraries are imported inside commands, never at module import.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="composer: answer each request with the best mix of models you have.")
experts_app = typer.Typer(no_args_is_help=True, help="Inspect the experts of a registry.")
outcomes_app = typer.Typer(no_args_is_help=True, help="Read recorded per-query outcome tables.")
router_app = typer.Typer(no_args_is_help=True, help="Train and inspect routers.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print measured numbers and write JSON.")
specialist_app = typer.Typer(no_args_is_help=True, help="Train, evaluate and query specialists (Mowst, FEAMOE).")
models_app = typer.Typer(no_args_is_help=True, help="Embedded model files.")

app.add_typer(experts_app, name="experts")
app.add_typer(outcomes_app, name="outcomes")
app.add_typer(router_app, name="router")
app.add_typer(bench_app, name="bench")
app.add_typer(specialist_app, name="specialist")
app.add_typer(models_app, name="models")

# One module per area; each registers its commands on the apps above when imported.
COMMAND_MODULES = (
    "composer.cli.core_cmds",
    "composer.cli.aggregation",
    "composer.cli.outcomes",
    "composer.cli.routers",
    "composer.cli.serve",
    "composer.cli.bench_service",
    "composer.cli.bench_scheduler",
    "composer.cli.specialists",
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
    app()
