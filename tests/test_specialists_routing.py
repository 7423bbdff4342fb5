"""Registry entry -> load_specialist -> predict_request, including every bad-input path."""

from __future__ import annotations

import numpy as np
import pytest

from composer.config import SpecialistSpec
from composer.errors import BadRequestError, ComposerError
from composer.specialists import SPECIALISTS, FEAMOE, Mowst, load_specialist, predict_request
from composer.specialists.data import load_compas, load_planetoid


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifacts")
    g = load_planetoid("cora")
    Mowst(graph=g, pretrain_epochs=20, epochs=3, rounds=1).fit(g.train_idx, X_val=g.val_idx).save(d / "mowst.pt")
    t = load_compas()
    FEAMOE(schema=t.schema, max_iter=40).fit(t.X_train, t.y_train, t.s_train).save(d / "feamoe.json")
    return d, t


@pytest.fixture(scope="module")
def mowst_sp(artifacts):
    d, _ = artifacts
    return load_specialist(SpecialistSpec(name="mowst-cora", kind="mowst", task="node_classification",
                                          artifact="mowst.pt", dataset="cora"), base_dir=d)


@pytest.fixture(scope="module")
def feamoe_sp(artifacts):
    d, _ = artifacts
    return load_specialist(SpecialistSpec(name="recid", kind="feamoe", task="recidivism",
                                          artifact=str(d / "feamoe.json"), dataset="compas"))


@pytest.fixture(scope="module")
def record(artifacts):
    _, t = artifacts
    r = t.X_test.iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}


def test_registry_names_both_kinds():
    assert SPECIALISTS == {"mowst": Mowst, "feamoe": FEAMOE}


def test_mowst_request(mowst_sp):
    out = predict_request(mowst_sp, {"nodes": [0, 1, 2707]})
    assert out["specialist"] == "mowst-cora" and out["kind"] == "mowst" and out["task"] == "node_classification"
    assert [p["node"] for p in out["predictions"]] == [0, 1, 2707]
    for p in out["predictions"]:
        assert p["expert"] in ("mlp", "gnn") and 0 <= p["confidence"] <= 1 and 0 <= p["label"] < 7
    assert 0 <= out["gnn_share"] <= 1
    assert mowst_sp.predict({"nodes": [5]})["predictions"][0]["node"] == 5


@pytest.mark.parametrize("payload, message", [
    ([1, 2], "payload: expected a JSON object"),
    ({}, "payload.nodes: missing field"),
    ({"nodes": [1], "k": 3}, "payload.k: unknown field"),
    ({"nodes": []}, "payload.nodes: expected a non-empty list"),
    ({"nodes": "1,2"}, "payload.nodes: expected a non-empty list"),
    ({"nodes": [1, 2708]}, r"payload.nodes\[1\]: unknown node id 2708; graph 'cora' has nodes 0..2707"),
    ({"nodes": [-3]}, r"payload.nodes\[0\]: unknown node id -3"),
    ({"nodes": [1, True]}, r"payload.nodes\[1\]: expected an integer node id"),
    ({"nodes": [1.5]}, r"payload.nodes\[0\]: expected an integer node id"),
])
def test_mowst_bad_requests(mowst_sp, payload, message):
    with pytest.raises(BadRequestError, match=message):
        predict_request(mowst_sp, payload)


def test_feamoe_request_with_explanation(feamoe_sp, record):
    out = predict_request(feamoe_sp, {"records": [record, record], "explain": True})
    assert out["kind"] == "feamoe" and len(out["predictions"]) == 2
    p = out["predictions"][0]
    assert set(p["explanation"]) == set(feamoe_sp.model.schema.names)
    assert p["label"] == int(p["probability"] >= 0.5) and abs(sum(p["gate"]) - 1) < 1e-9
    assert abs(sum(p["explanation"].values()) - (p["probability"] - p["base_value"])) < 1e-9
    one = predict_request(feamoe_sp, {"record": record})
    assert one["predictions"][0]["probability"] == pytest.approx(p["probability"])
    assert "explanation" not in one["predictions"][0]


def _bad(record, **change):
    r = dict(record)
    for k, v in change.items():
        if v is ...:
            r.pop(k)
        else:
            r[k] = v
    return r


@pytest.mark.parametrize("change, message", [
    (dict(age=...), r"payload.records\[0\].age: missing feature"),
    (dict(income=1000), r"payload.records\[0\].income: unknown feature"),
    (dict(age="31"), r"payload.records\[0\].age: expected a finite number"),
    (dict(priors_count=None), r"payload.records\[0\].priors_count: expected a finite number"),
    (dict(c_charge_degree=1), r"payload.records\[0\].c_charge_degree: expected a category string"),
    (dict(c_charge_degree="X"), r"payload.records\[0\].c_charge_degree: unseen category 'X'"),
])
def test_feamoe_bad_records_name_the_field(feamoe_sp, record, change, message):
    with pytest.raises(BadRequestError, match=message):
        predict_request(feamoe_sp, {"records": [_bad(record, **change)]})


def test_feamoe_bad_payload_shapes(feamoe_sp, record):
    with pytest.raises(BadRequestError, match="either 'records'"):
        predict_request(feamoe_sp, {"records": [record], "record": record})
    with pytest.raises(BadRequestError, match="payload.explain: expected true or false"):
        predict_request(feamoe_sp, {"record": record, "explain": "yes"})
    with pytest.raises(BadRequestError, match=r"payload.record: expected an object"):
        predict_request(feamoe_sp, {"record": [1, 2]})
    with pytest.raises(BadRequestError, match=r"payload.baseline.sex: unseen category"):
        predict_request(feamoe_sp, {"record": record, "explain": True, "baseline": _bad(record, sex="?")})


def test_load_specialist_errors(artifacts, tmp_path):
    d, _ = artifacts
    with pytest.raises(ComposerError, match="has no artifact; train one"):
        load_specialist(SpecialistSpec(name="x", kind="mowst", task="t"))
    with pytest.raises(ComposerError, match="not found"):
        load_specialist(SpecialistSpec(name="x", kind="feamoe", task="t", artifact=str(tmp_path / "no.json")))
    with pytest.raises(ComposerError, match="trained on graph 'cora'"):
        load_specialist(SpecialistSpec(name="x", kind="mowst", task="t", artifact=str(d / "mowst.pt"),
                                       dataset="citeseer"))
    with pytest.raises(ComposerError, match="not a Mowst artifact"):
        load_specialist(SpecialistSpec(name="x", kind="mowst", task="t", artifact=str(d / "feamoe.json")))
    assert np.isfinite(load_specialist(SpecialistSpec(name="x", kind="feamoe", task="t",
                                                      artifact=str(d / "feamoe.json"))).model.W_).all()
