"""`composer pipeline add`: write a routed pipeline into experts.yaml, keeping its comments,
key order and layout (ruamel.yaml round-trip), after checking it would work.

    add_pipeline("experts.yaml", "routed", "runs/router-knn", k=1)

Checks, each failing with BadRequestError naming what and where (exit 2 at the CLI) before the
file is touched: the registry is valid now; the router folder holds a saved router; every expert
the router was trained on (or the `experts` pool given) is an expert of the registry; the name is
free (or `replace`); k fits the pool; k > 1 has an aggregator; the aggregator's expert exists.
The edited text is validated by the same parser `composer validate` uses, then written to a
temporary file and renamed into place (a crash never leaves half a registry).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from composer.errors import BadRequestError, ComposerError, ConfigError

AGGREGATORS = ("none", "moa", "self_moa", "self_moa_seq", "vote")


def _router_info(path: Path) -> tuple[str, list[str]]:
    from routers.base import Router  # noqa: PLC0415 - routers import numpy; only when adding

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
    from ruamel.yaml import YAML  # noqa: PLC0415
    from ruamel.yaml.comments import CommentedMap, CommentedSeq  # noqa: PLC0415

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

    yaml = YAML()  # round-trip: comments, order and flow styles survive
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    text = config.read_text(encoding="utf-8")
    doc = yaml.load(text)
    entry = CommentedMap()
    entry["name"] = name
    entry["router"] = kind
    entry["router_path"] = _relative(router, config.resolve().parent)
    if pool:
        entry["experts"] = CommentedSeq(pool)
        entry["experts"].fa.set_flow_style()
    entry["k"] = k
    agg = CommentedMap([("kind", aggregator)])
    if aggregator_expert is not None:
        agg["expert"] = aggregator_expert
    agg.fa.set_flow_style()
    entry["aggregator"] = agg
    if params:
        entry["params"] = CommentedMap(params)
        entry["params"].fa.set_flow_style()
    seq = doc.get("pipelines")
    if seq is None or len(seq) == 0:
        seq = CommentedSeq()
        doc["pipelines"] = seq
    seq.fa.set_block_style()
    names = [p.get("name") for p in seq]
    if name in names:
        seq[names.index(name)] = entry
    else:
        seq.append(entry)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    new = buf.getvalue()
    try:
        parse_config(new, source=str(config), base_dir=config.resolve().parent)
    except ConfigError as exc:  # pragma: no cover - the checks above should make this unreachable
        raise BadRequestError(f"the edited registry would not validate: {exc}") from None
    tmp = config.with_name(f".{config.name}.{os.getpid()}.tmp")
    tmp.write_text(new, encoding="utf-8")
    try:
        os.chmod(tmp, config.stat().st_mode & 0o777)
        os.replace(tmp, config)
    finally:
        tmp.unlink(missing_ok=True)
    return {k2: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
            for k2, v in entry.items()}
