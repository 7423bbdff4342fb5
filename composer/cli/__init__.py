"""composer's command line (typer). `composer.cli.main:main` is the console script."""

from composer.cli.main import app, main, register_commands

__all__ = ["app", "main", "register_commands"]
