"""`composer specialist train|predict|eval` through typer's CliRunner, and once as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from composer.cli.main import register_commands

runner = CliRunner()


def invoke(*args):
    return runner.invoke(register_commands(), list(args))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    r = invoke("specialist", "train", "--kind", "feamoe", "--dataset", "compas", "--out", str(d / "f.json"))
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    r2 = invoke("specialist", "train", "--kind", "mowst", "--dataset", "cora", "--out", str(d / "m.pt"),
                "--pretrain-epochs", "20", "--epochs", "3")
    assert r2.exit_code == 0, r2.output
    (d / "experts.yaml").write_text(
        "experts:\n  - name: stub\n    backend: fake\n    model: stub\n"
        "specialists:\n"
        "  - {name: recid, kind: feamoe, task: recidivism, artifact: f.json, dataset: compas}\n"
        "  - {name: cora-nodes, kind: mowst, task: node_classification, artifact: m.pt, dataset: cora}\n")
    return d, summary, json.loads(r2.stdout)


RECORD = {"age": 30, "priors_count": 2, "juv_fel_count": 0, "juv_misd_count": 0, "juv_other_count": 0,
          "c_charge_degree": "F", "sex": "Male"}


def test_train_writes_artifacts_and_a_summary(trained):
    d, feamoe, mowst = trained
    assert Path(feamoe["artifact"]).exists() and set(feamoe["test"]) == {"accuracy", "dp", "eo", "eopp"}
    assert Path(mowst["artifact"]).exists() and 0 <= mowst["test_gnn_share"] <= 1


def test_predict_routes_by_task_through_the_registry(trained):
    d, _, _ = trained
    cfg = str(d / "experts.yaml")
    r = invoke("specialist", "predict", "-c", cfg, "--task", "recidivism",
               "--payload", json.dumps({"record": RECORD, "explain": True}))
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["specialist"] == "recid" and set(out["predictions"][0]["explanation"]) == set(RECORD)
    r = invoke("specialist", "predict", "-c", cfg, "--name", "cora-nodes", "--payload", '{"nodes": [1, 2]}')
    assert r.exit_code == 0 and json.loads(r.stdout)["predictions"][1]["node"] == 2
    payload = d / "p.json"
    payload.write_text('{"nodes": [7]}')
    r = invoke("specialist", "predict", "--artifact", str(d / "m.pt"), "--kind", "mowst", "--payload", f"@{payload}")
    assert r.exit_code == 0 and json.loads(r.stdout)["predictions"][0]["node"] == 7


def test_predict_errors_are_clear(trained):
    d, _, _ = trained
    cfg = str(d / "experts.yaml")
    r = invoke("specialist", "predict", "-c", cfg, "--task", "recidivism",
               "--payload", json.dumps({"record": {**RECORD, "sex": "robot"}}))
    assert r.exit_code == 1 and "payload.record.sex: unseen category 'robot'" in r.output
    r = invoke("specialist", "predict", "-c", cfg, "--task", "node_classification", "--payload", '{"nodes": [99999]}')
    assert r.exit_code == 1 and "payload.nodes[0]: unknown node id 99999" in r.output
    r = invoke("specialist", "predict", "-c", cfg, "--task", "weather", "--payload", "{}")
    assert r.exit_code == 1 and "no specialist" in r.output and "recid (task recidivism)" in r.output
    r = invoke("specialist", "predict", "-c", cfg, "--task", "recidivism", "--payload", "{nope")
    assert r.exit_code == 1 and "invalid JSON" in r.output
    r = invoke("specialist", "predict", "-c", str(d / "missing.yaml"), "--task", "x", "--payload", "{}")
    assert r.exit_code == 2


def test_eval_quick_writes_json(tmp_path):
    out = tmp_path / "spec.json"
    r = invoke("specialist", "eval", "--parts", "shapley", "--quick", "--out", str(out))
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["shapley"]["exact_max_abs_err_vs_bruteforce"] <= 1e-6
    assert "KernelExplainer" in r.output


def test_predict_as_a_real_subprocess(trained):
    d, _, _ = trained
    exe = Path(sys.executable).parent / "composer"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from composer.cli.main import main; main()"]
    proc = subprocess.run(cmd + ["specialist", "predict", "-c", str(d / "experts.yaml"), "--task",
                                 "recidivism", "--payload", json.dumps({"records": [RECORD]})],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["predictions"][0]["label"] in (0, 1)
