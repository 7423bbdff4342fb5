"""Specialists: classical mixture-of-experts models reached by routing on a request's task type.

Two kinds, both scikit-learn style classifiers (fit -> self, fitted attributes end in `_`,
NotFittedError before fit, predict / predict_proba, save / load of one artifact file):

- `mowst`  (composer.specialists.mowst.Mowst): node classification on a registered graph; a weak
  MLP answers confident nodes, a GNN (GCN / GraphSAGE) the rest.
- `feamoe` (composer.specialists.feamoe.FEAMOE): fair mixture of logistic experts on a feature
  record, with drift adaptation and exact Shapley explanations.

The interface the core uses (three calls, no other state):

    spec = SpecialistSpec(name="mowst-cora", kind="mowst", task="node_classification",
                          artifact="runs/mowst-cora.pt", dataset="cora")
    sp = load_specialist(spec)                          # reads the artifact once; keep it
    out = predict_request(sp, {"nodes": [0, 5, 42]})    # validated, JSON-ready dict

Payloads (anything else is a BadRequestError whose message starts with the offending field):
- mowst:  {"nodes": [int, ...]}  node ids of the artifact's graph (0 .. n-1).
  -> {"specialist", "kind", "task", "predictions": [{"node", "label", "probability", "expert",
      "confidence"}], "gnn_share"}
- feamoe: {"records": [{feature: value, ...}, ...]} (or "record": {...}); every schema feature
  exactly once, numbers for numeric features, a known category string for categorical ones;
  optional "explain": true adds exact Shapley values per feature and "baseline": {record}.
  -> {"specialist", "kind", "task", "predictions": [{"label", "probability", "gate",
      ["explanation", "base_value"]}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from composer.errors import BadRequestError, ComposerError
from composer.specialists.feamoe import FEAMOE
from composer.specialists.mowst import Mowst

SPECIALISTS: dict[str, type] = {"mowst": Mowst, "feamoe": FEAMOE}
MAX_ITEMS = 10_000  # per request


@dataclass(frozen=True)
class LoadedSpecialist:
    """A trained specialist with the registry entry it was loaded for."""

    name: str
    kind: str
    task: str
    model: Any

    def predict(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return predict_request(self, payload)


def load_specialist(spec, base_dir: str | Path | None = None) -> LoadedSpecialist:
    """Load the artifact named by a `composer.config.SpecialistSpec` (relative to base_dir)."""
    if spec.kind not in SPECIALISTS:
        raise ComposerError(f"specialist '{spec.name}': unknown kind '{spec.kind}'; "
                            f"known: {', '.join(SPECIALISTS)}")
    if not spec.artifact:
        raise ComposerError(f"specialist '{spec.name}' has no artifact; train one with `composer "
                            f"specialist train --kind {spec.kind} --out PATH` and set artifact: PATH")
    path = Path(spec.artifact)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.exists():
        raise ComposerError(f"specialist '{spec.name}': artifact {path} not found; train it with "
                            f"`composer specialist train --kind {spec.kind} --out {path}`")
    model = SPECIALISTS[spec.kind].load(path)
    if spec.kind == "mowst" and spec.dataset and spec.dataset.lower() != model.graph.name:
        raise ComposerError(f"specialist '{spec.name}': artifact {path} was trained on graph "
                            f"'{model.graph.name}', but the registry says dataset '{spec.dataset}'")
    return LoadedSpecialist(name=spec.name, kind=spec.kind, task=spec.task, model=model)


def _fields(payload: Any, allowed: set[str], required: tuple[str, ...]) -> None:
    if not isinstance(payload, Mapping):
        raise BadRequestError(f"payload: expected a JSON object, got {type(payload).__name__}")
    for key in payload:
        if key not in allowed:
            raise BadRequestError(f"payload.{key}: unknown field; expected: {', '.join(sorted(allowed))}")
    for key in required:
        if key not in payload:
            raise BadRequestError(f"payload.{key}: missing field")


def _items(value: Any, field: str) -> list:
    if not isinstance(value, list) or not value:
        raise BadRequestError(f"payload.{field}: expected a non-empty list")
    if len(value) > MAX_ITEMS:
        raise BadRequestError(f"payload.{field}: at most {MAX_ITEMS} items per request, got {len(value)}")
    return value


def _predict_mowst(model: Mowst, payload: Mapping[str, Any]) -> dict[str, Any]:
    _fields(payload, {"nodes"}, ("nodes",))
    nodes = _items(payload["nodes"], "nodes")
    n = model.graph.num_nodes
    for i, v in enumerate(nodes):
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadRequestError(f"payload.nodes[{i}]: expected an integer node id, got {v!r}")
        if not 0 <= v < n:
            raise BadRequestError(f"payload.nodes[{i}]: unknown node id {v}; graph "
                                  f"'{model.graph.name}' has nodes 0..{n - 1}")
    proba, expert, conf = model._answer(nodes)
    labels = proba.argmax(1)
    preds = [{"node": int(v), "label": int(labels[i]), "probability": float(proba[i, labels[i]]),
              "expert": str(expert[i]), "confidence": float(conf[i])} for i, v in enumerate(nodes)]
    return {"predictions": preds, "gnn_share": float((expert == "gnn").mean())}


def _predict_feamoe(model: FEAMOE, payload: Mapping[str, Any]) -> dict[str, Any]:
    _fields(payload, {"records", "record", "explain", "baseline"}, ())
    if ("records" in payload) == ("record" in payload):
        raise BadRequestError("payload.records: give either 'records' (a list) or 'record' (one object)")
    records = _items(payload["records"], "records") if "records" in payload else [payload["record"]]
    where = "payload.records" if "records" in payload else "payload.record"
    explain = payload.get("explain", False)
    if not isinstance(explain, bool):
        raise BadRequestError(f"payload.explain: expected true or false, got {explain!r}")
    if model.schema is None:
        raise BadRequestError("this FEAMOE artifact has no feature schema; it cannot read records")
    for i, r in enumerate(records):
        model.schema.validate_record(r, f"{where}[{i}]" if "records" in payload else where)
    baseline = payload.get("baseline")
    if baseline is not None:
        model.schema.validate_record(baseline, "payload.baseline")
    X = model.schema.encode_records(records, where)
    proba, gate = model.predict_proba(X)[:, 1], model.gate_weights(X)
    preds = [{"label": int(p >= 0.5), "probability": float(p), "gate": [float(g) for g in gate[i]]}
             for i, p in enumerate(proba)]
    if explain:
        phi = model.explain(X, baseline=baseline)
        base = model.expected_value(baseline)
        for i, pred in enumerate(preds):
            pred["explanation"] = {name: float(phi[i, j]) for j, name in enumerate(model.schema.names)}
            pred["base_value"] = base
    return {"predictions": preds}


def predict_request(specialist, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a request payload and answer it (see the module docstring for the formats)."""
    model = specialist.model if isinstance(specialist, LoadedSpecialist) else specialist
    if isinstance(model, Mowst):
        out = _predict_mowst(model, payload)
        kind = "mowst"
    elif isinstance(model, FEAMOE):
        out = _predict_feamoe(model, payload)
        kind = "feamoe"
    else:
        raise ComposerError(f"not a specialist: {type(model).__name__}")
    head = {"kind": kind}
    if isinstance(specialist, LoadedSpecialist):
        head = {"specialist": specialist.name, "kind": kind, "task": specialist.task}
    return {**head, **out}


__all__ = ["SPECIALISTS", "LoadedSpecialist", "load_specialist", "predict_request", "Mowst", "FEAMOE"]
