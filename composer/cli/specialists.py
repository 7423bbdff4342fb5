"""`composer specialist train|eval|predict`: the specialists (Mowst, FEAMOE) from the command line.

train   fits a specialist on a shared dataset and writes one artifact file (plus a JSON summary).
eval    runs evals/specialists.py (the measured targets) and writes its JSON.
predict answers one JSON payload with a specialist from the registry (by --name and/or --task),
        or straight from an artifact (--artifact with --kind).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from composer.cli.main import specialist_app

EXIT_CONFIG = 2


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@specialist_app.command("train")
def train(
    kind: str = typer.Option(..., "--kind", help="mowst or feamoe."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="cora/citeseer (mowst); adult/compas/german (feamoe)."),
    out: Path = typer.Option(..., "--out", "-o", help="Artifact path (.pt for mowst, .json for feamoe)."),
    gnn: str = typer.Option("gcn", help="mowst: strong expert, gcn, sage, gat or gin."),
    gate: str = typer.Option("learned", help="mowst: confidence gate, learned, power or mlp."),
    confidence: str = typer.Option("variance", help="mowst: dispersion, variance or entropy."),
    epochs: int = typer.Option(100, help="mowst: max epochs per alternating turn."),
    pretrain_epochs: int = typer.Option(200, help="mowst: epochs of the experts' pre-training."),
    weak: str = typer.Option("distilled", help="mowst: weak expert, distilled (from the GNN) or plain (labels only)."),
    rounds: int = typer.Option(3, help="mowst: alternating weak/strong rounds on the Mowst loss."),
    penalty: str = typer.Option("dp", help="feamoe: fairness penalty, dp, eo or eopp."),
    weight: float = typer.Option(1.0, "--weight", help="feamoe: fairness penalty weight."),
    experts: int = typer.Option(2, "--experts", help="feamoe: initial number of experts."),
    sensitive: Optional[str] = typer.Option(None, help="feamoe: sensitive attribute (default: the dataset's)."),
    seed: int = typer.Option(0, help="Random seed."),
    data: Optional[Path] = typer.Option(None, "--data", help="Shared data folder (default: $COMPOSER_DATA)."),
):
    """Train a specialist and write its artifact."""
    from composer.errors import ComposerError
    from composer.specialists import data as D

    try:
        if kind == "mowst":
            from composer.specialists.mowst import Mowst

            g = D.load_planetoid(dataset, data)
            m = Mowst(graph=g, gnn=gnn, gate=gate, confidence=confidence, epochs=epochs,
                      pretrain_epochs=pretrain_epochs, weak=weak, rounds=rounds, seed=seed).fit(g.train_idx, X_val=g.val_idx)
            _, expert, _ = m.predict(g.test_idx, return_details=True)
            summary = {"val_acc": m.best_val_acc_, "test_acc": m.score(g.test_idx),
                       "test_gnn_share": float((expert == "gnn").mean()), "threshold": m.threshold_}
        elif kind == "feamoe":
            from composer.specialists.feamoe import FEAMOE

            t = D.load_tabular(dataset, data, **({"sensitive": sensitive} if sensitive else {}))
            m = FEAMOE(schema=t.schema, n_experts=experts, penalty=penalty, fairness_weight=weight,
                       max_experts=max(6, experts), seed=seed).fit(t.X_train, t.y_train, t.s_train)
            summary = {"sensitive": t.sensitive,
                       "test": m.fairness_report(t.X_test, t.y_test, t.s_test)}
        else:
            _fail(f"unknown kind '{kind}'; use mowst or feamoe")
        path = m.save(out)
    except (ComposerError, ValueError) as exc:
        _fail(str(exc))
    _echo_json({"kind": kind, "dataset": dataset, "artifact": str(path), **summary})


@specialist_app.command("eval")
def eval_(
    seeds: int = typer.Option(10, help="Mowst seeds per dataset and GNN."),
    gnns: str = typer.Option("gcn", help="Comma-separated strong experts for Mowst (gcn,sage,gat,gin)."),
    parts: str = typer.Option("mowst,fairness,drift,shapley", help="Which parts to run."),
    quick: bool = typer.Option(False, "--quick", help="Small settings for a smoke run (numbers not comparable)."),
    out: Path = typer.Option(Path("runs/specialists.json"), "--out", "-o", help="JSON result file."),
):
    """Run the specialists eval (prints tables, writes JSON)."""
    from composer.evals.specialists import main as run_eval

    argv = ["--seeds", str(seeds), "--gnns", gnns, "--parts", parts, "--out", str(out)]
    run_eval(argv + (["--quick"] if quick else []))


def _read_payload(payload: str) -> dict:
    text = payload
    if payload.startswith("@"):
        try:
            text = Path(payload[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"--payload {payload}: cannot read file ({exc.strerror})")
    elif payload == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"--payload: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")


@specialist_app.command("predict")
def predict(
    payload: str = typer.Option(..., "--payload", help="JSON payload, @file.json, or - for stdin."),
    task: Optional[str] = typer.Option(None, "--task", help="Task type of the request."),
    name: Optional[str] = typer.Option(None, "--name", help="Specialist name in the registry."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Registry file (default: ./experts.yaml)."),
    artifact: Optional[Path] = typer.Option(None, "--artifact", help="Use this artifact instead of the registry."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Kind of --artifact (mowst or feamoe)."),
):
    """Answer one payload with a specialist (routed by --task / --name)."""
    from composer.config import SpecialistSpec, load_config
    from composer.errors import BadRequestError, ComposerError, ConfigError
    from composer.specialists import load_specialist, predict_request

    body = _read_payload(payload)
    base_dir = None
    if artifact is not None:
        if kind is None:
            _fail("--artifact needs --kind mowst or --kind feamoe")
        spec = SpecialistSpec(name=name or artifact.stem, kind=kind, task=task or kind, artifact=str(artifact))
    else:
        if task is None and name is None:
            _fail("say which specialist: --task and/or --name (or --artifact with --kind)")
        path = config or Path("experts.yaml")
        try:
            cfg = load_config(path, check_files=False)
        except ConfigError as exc:
            _fail(str(exc), EXIT_CONFIG)
        found = [s for s in cfg.specialists if (name is None or s.name == name)
                 and (task is None or s.task == task)]
        if not found:
            known = ", ".join(f"{s.name} (task {s.task})" for s in cfg.specialists) or "none"
            _fail(f"no specialist in {path} matches --name {name} --task {task}; known: {known}")
        if len(found) > 1:
            _fail(f"{len(found)} specialists serve task '{task}': "
                  f"{', '.join(s.name for s in found)}; pick one with --name")
        spec, base_dir = found[0], path.resolve().parent
    try:
        sp = load_specialist(spec, base_dir=base_dir)
        _echo_json(predict_request(sp, body))
    except BadRequestError as exc:
        _fail(f"bad request: {exc}")
    except ComposerError as exc:
        _fail(str(exc))
