"""`composer pipeline add`: write a routed pipeline into experts.yaml, keeping every other byte
of the file (comments, order, line breaks inside flow lists), after checking it would work.

The new entry is spliced into the text where PyYAML's node marks put the `pipelines` list (after
its last item, or over the replaced item's lines). A ruamel.yaml round trip was tried first: it
kept the comments but re-flowed multi-line flow lists (experts.yaml's `skills: [...]`) onto one
line, so the text splice is used instead.

    add_pipeline("experts.yaml", "routed", "runs/router-knn", k=1)

Checks, each failing with BadRequestError naming what and where (exit 2 at the CLI) before the
file is touched: the registry is valid now; the router folder holds a saved router; every expert
the router was trained on (or the `experts` pool given) is an expert of the registry; the name is
free (or `replace`); k fits the pool; k > 1 has an aggregator; the aggregator's expert exists.
The edited text is validated by the same parser `composer validate` uses and must hold the old
pipelines plus the new one; it is written to a temporary file and renamed into place (a crash
never leaves half a registry).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from composer.errors import BadRequestError, ComposerError, ConfigError

AGGREGATORS = ("none", "moa", "self_moa", "self_moa_seq", "vote")


def _router_info(path: Path) -> tuple[str, list[str]]:
    from composer.routers.base import Router  # noqa: PLC0415 - routers import numpy; only when adding

    if not (path / "router.json").is_file():
        raise BadRequestError(f"--router {path}: no saved router there (router.json missing); "
                              "train one with `composer router train --outcomes ... --router NAME --out DIR`")
    try:
        r = Router.load(path)
    except ComposerError as exc:
        raise BadRequestError(f"--router {path}: {exc}") from None
    return r.name, [str(e) for e in getattr(r, "experts_", [])]


def _relative(path: Path, base: Path) -> str:
    path = path.resolve()
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)


def add_pipeline(config: str | Path, name: str, router: str | Path, *, k: int = 1,
                 aggregator: str = "none", aggregator_expert: str | None = None,
                 experts: list[str] | None = None, params: dict | None = None,
                 replace: bool = False) -> dict:
    """Add (or with `replace`, overwrite) pipeline `name` routed by the saved router at `router`.
    Returns the pipeline entry as written."""
    from composer.config import load_config, parse_config  # noqa: PLC0415

    config = Path(config)
    cfg = load_config(config)  # ConfigError (file:line field) when the registry is invalid now
    known = [e.name for e in cfg.experts]
    router = Path(router)
    kind, trained = _router_info(router)
    if not trained:
        raise BadRequestError(f"--router {router}: the saved router lists no experts")
    missing = [e for e in trained if e not in known]
    pool = list(experts or [])
    if pool:
        bad = [e for e in pool if e not in known]
        if bad:
            raise BadRequestError(f"--experts: {bad} not in {config} (experts there: {', '.join(known)})")
        untrained = [e for e in pool if e not in trained]
        if untrained:
            raise BadRequestError(f"--experts: the router at {router} was not trained on {untrained} "
                                  f"(it knows {', '.join(trained)})")
    elif missing:
        raise BadRequestError(
            f"the router at {router} was trained on expert(s) {missing} that are not in {config} "
            f"(experts there: {', '.join(known)}); add them, or restrict the pipeline with --experts")
    size = len(pool or trained)
    if not 1 <= k <= size:
        raise BadRequestError(f"--k {k}: must be between 1 and the {size} experts the pipeline routes to")
    if aggregator not in AGGREGATORS:
        raise BadRequestError(f"--aggregator '{aggregator}': use one of {', '.join(AGGREGATORS)}")
    if k > 1 and aggregator == "none":
        raise BadRequestError(f"--k {k} sends each query to {k} experts: choose how their answers combine "
                              "with --aggregator moa|vote")
    if aggregator_expert is not None and aggregator_expert not in known:
        raise BadRequestError(f"--aggregator-expert '{aggregator_expert}' is not in {config} "
                              f"(experts there: {', '.join(known)})")
    taken = {e: "an expert" for e in known} | {s.name: "a specialist" for s in cfg.specialists}
    pipes = {p.name: "a pipeline" for p in cfg.pipelines}
    if name in taken or (name in pipes and not replace):
        what = taken.get(name) or pipes[name]
        hint = "" if name in taken else "; pass --replace to overwrite it"
        raise BadRequestError(f"pipeline name '{name}' is already {what} in {config}{hint}")

    entry: dict = {"name": name, "router": kind, "router_path": _relative(router, config.resolve().parent)}
    if pool:
        entry["experts"] = pool
    entry["k"] = k
    entry["aggregator"] = {"kind": aggregator, **({"expert": aggregator_expert} if aggregator_expert else {})}
    if params:
        entry["params"] = dict(params)
    text = config.read_text(encoding="utf-8")
    new = splice(text, entry, replace=name in pipes)
    try:
        edited = parse_config(new, source=str(config), base_dir=config.resolve().parent)
    except ConfigError as exc:  # pragma: no cover - the checks above should make this unreachable
        raise BadRequestError(f"the edited registry would not validate: {exc}") from None
    want = [p.name for p in cfg.pipelines if p.name != name] + [name]
    got = [p.name for p in edited.pipelines]
    if sorted(got) != sorted(want):  # pragma: no cover - a layout the splice does not understand
        raise BadRequestError(f"{config}: could not place the pipeline in this file's layout (would give "
                              f"pipelines {got}); add it by hand: {entry}")
    tmp = config.with_name(f".{config.name}.{os.getpid()}.tmp")
    tmp.write_text(new, encoding="utf-8")
    try:
        os.chmod(tmp, config.stat().st_mode & 0o777)
        os.replace(tmp, config)
    finally:
        tmp.unlink(missing_ok=True)
    return entry


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./:-]*$")
_RESERVED = {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}


def _scalar(v) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    v = str(v)
    return v if _PLAIN.match(v) and v.lower() not in _RESERVED else json.dumps(v)


def _flow(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_flow(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def _entry_lines(entry: dict, indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}- name: {_scalar(entry['name'])}\n"] + [
        f"{pad}  {k}: {_flow(v)}\n" for k, v in entry.items() if k != "name"]


def _last_line(node) -> int:
    """0-based line of a node's last character (a block collection's own end mark can sit past
    trailing comments, so it is the last of its children's)."""
    if isinstance(node, yaml.ScalarNode) or getattr(node, "flow_style", False):
        end = node.end_mark
        return end.line - 1 if end.column == 0 and end.line > node.start_mark.line else end.line
    kids = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
    return max((_last_line(k) for k in kids), default=node.start_mark.line)


def splice(text: str, entry: dict, *, replace: bool = False) -> str:
    """`text` with pipeline `entry` appended to (or, with `replace`, put over its namesake in)
    the top-level `pipelines` list; every other line is kept byte for byte."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    found = [(k, v) for k, v in root.value if k.value == "pipelines"]
    if not found:  # no pipelines key yet: one at the end
        return "".join(lines) + "pipelines:\n" + "".join(_entry_lines(entry, 2))
    key, val = found[0]
    items = val.value if isinstance(val, yaml.SequenceNode) else []
    if not items:  # `pipelines:`, `pipelines: []` or `pipelines: null`: a block list starts here
        row = key.start_mark.line
        rest = lines[row][key.end_mark.column:]
        comment = rest[rest.index("#"):].rstrip("\n") if "#" in rest else ""
        lines[row] = lines[row][: key.end_mark.column] + ":" + (f"  {comment}" if comment else "") + "\n"
        return "".join(lines[: row + 1] + _entry_lines(entry, key.start_mark.column + 2) + lines[row + 1:])
    names = [next((v.value for k, v in it.value if k.value == "name"), None)
             if isinstance(it, yaml.MappingNode) else None for it in items]
    if val.flow_style:  # pipelines: [{...}, {...}]: stay in flow style
        if replace and entry["name"] in names:
            it = items[names.index(entry["name"])]
            return text[: it.start_mark.index] + _flow(entry) + text[it.end_mark.index:]
        at = val.end_mark.index - 1  # the closing bracket
        return text[:at] + ", " + _flow(entry) + text[at:]
    dash_row = items[0].start_mark.line
    indent = len(lines[dash_row]) - len(lines[dash_row].lstrip(" "))
    if replace and entry["name"] in names:
        it = items[names.index(entry["name"])]
        start, stop = it.start_mark.line, _last_line(it) + 1
    else:
        start = stop = _last_line(items[-1]) + 1
    return "".join(lines[:start] + _entry_lines(entry, indent) + lines[stop:])
