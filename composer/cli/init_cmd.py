"""`composer init`: write the packaged default registry to a folder, to edit and own."""

from __future__ import annotations

from pathlib import Path

import typer

from composer.cli.core_cmds import EXIT_CONFIG, fail, print_json
from composer.cli.main import app


@app.command("init")
def init(
    folder: Path = typer.Argument(Path("."), help="Where to write experts.yaml (default: here)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing experts.yaml."),
    as_json: bool = typer.Option(False, "--json", help="Print the written path as JSON."),
):
    """Write the default registry as FOLDER/experts.yaml, to edit and own.

    The registry has the embedded local models and a routed default pipeline; commands run in
    FOLDER use it.
    """
    from composer.config import packaged_registry

    src = packaged_registry()
    if not src.is_file():
        fail(f"the packaged registry is missing at {src}; reinstall composer-moe")
    if folder.exists() and not folder.is_dir():
        fail(f"{folder} is not a folder", EXIT_CONFIG)
    target = folder / "experts.yaml"
    if target.exists() and not force:
        fail(f"{target} already exists; pass --force to overwrite it", EXIT_CONFIG)
    folder.mkdir(parents=True, exist_ok=True)
    target.write_bytes(src.read_bytes())
    if as_json:
        print_json({"path": str(target.resolve())})
        return
    typer.echo(f"wrote {target}; next: composer models prepare && composer ask \"What is the capital of France?\"")
