"""`composer data`: where the data folder is, the public sources, pull from a mirror, verify."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from composer.cli.core_cmds import EXIT_CONFIG, fail, print_json
from composer.cli.main import data_app

DEST_OPT = typer.Option(None, "--data-dir", help=(
    "Data folder (default: $COMPOSER_DATA, else ../shared/data beside a source checkout, "
    "else the platformdirs user data folder)."))
ONLY_OPT = typer.Option(None, "--only", help="Only files under this path prefix (repeatable), e.g. graphs/planetoid.")


@data_app.command("where")
def where(data_dir: Optional[Path] = DEST_OPT,
          as_json: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """The data folder composer reads, and which rule chose it."""
    from composer.data import resolution

    path, rule = resolution(data_dir)
    if as_json:
        print_json({"path": str(path), "rule": rule, "exists": path.is_dir()})
        return
    typer.echo(f"{path}  ({rule}{'' if path.is_dir() else '; does not exist yet'})")


@data_app.command("sources")
def sources(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")):
    """The public sources of every group of files in the data folder, with their licences."""
    from composer.data import load_manifest

    m = load_manifest()
    rows = [{**s, "files": len(m.select([s["prefix"]])),
             "bytes": sum(f.size for f in m.select([s["prefix"]]))} for s in m.sources]
    if as_json:
        print_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['prefix']:<26} {r['files']:>4} files {r['bytes'] / 1e6:8.1f} MB  {r['name']} "
                   f"({r['licence']}) {r['url'] or ''}")


@data_app.command("pull")
def pull_cmd(
    source: str = typer.Option(..., "--source", envvar="COMPOSER_DATA_SOURCE", help=(
        "Base URL of a mirror laid out like ../shared/data ($COMPOSER_DATA_SOURCE).")),
    data_dir: Optional[Path] = DEST_OPT,
    only: Optional[List[str]] = ONLY_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print what was fetched as JSON."),
):
    """Fetch the data files (opt-in network): resumable, each checked against the sha256 shipped
    in the package, the same layout byte for byte."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from composer.data import PullError, load_manifest, pull, resolution
    from composer.data.pull import PullUsageError

    dest, rule = resolution(data_dir)
    m = load_manifest()
    total = sum(f.size for f in m.select(only))
    if total == 0:
        fail(f"no manifest file under {', '.join(only or [])}", EXIT_CONFIG)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  transient=True, disable=as_json) as bar:
        task = bar.add_task(f"pull -> {dest}", total=total)

        def step(entry, n):
            bar.update(task, advance=n if n else entry.size)

        try:
            report = pull(source, dest, prefixes=only, manifest=m, progress=step)
        except PullError as exc:
            fail(str(exc), EXIT_CONFIG if isinstance(exc, PullUsageError) else 1)
    d = {"dest": str(dest), "rule": rule, **report.to_dict()}
    if as_json:
        print_json(d)
        return
    typer.echo(f"{dest}: {d['fetched']} fetched, {d['resumed']} resumed, {d['present']} already present "
               f"({d['bytes'] / 1e6:.1f} MB transferred); every file matches its sha256")


@data_app.command("verify")
def verify_cmd(data_dir: Optional[Path] = DEST_OPT, only: Optional[List[str]] = ONLY_OPT,
               as_json: bool = typer.Option(False, "--json", help="Print problems as JSON.")):
    """Check the data folder against the shipped manifest (exit 1 when a file is missing or differs)."""
    from composer.data import load_manifest, resolution
    from composer.data.manifest import verify

    dest, _ = resolution(data_dir)
    entries = load_manifest().select(only)
    bad = verify(dest, entries)
    if as_json:
        print_json({"path": str(dest), "files": len(entries), "problems": bad})
    else:
        for b in bad:
            typer.echo(b, err=True)
        typer.echo(f"{dest}: {len(entries) - len(bad)}/{len(entries)} files match the manifest")
    if bad:
        raise typer.Exit(1)
