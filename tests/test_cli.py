"""The CLI through typer's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from composer.cli.main import app, register_commands

register_commands()
runner = CliRunner()


def test_validate_ok(default_config):
    r = runner.invoke(app, ["validate", str(default_config)])
    assert r.exit_code == 0, r.output
    assert "OK" in r.output


def test_validate_broken_names_file_line_field(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("version: 1\nexperts:\n  - name: a\n    backend: fake\n    model: m\n    temprature: 0.5\n")
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 2
    assert f"{p}:6" in r.output and "experts[0].temprature" in r.output and "unknown key" in r.output


def test_experts_list_json(default_config):
    r = runner.invoke(app, ["experts", "list", "--config", str(default_config), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    smol = next(x for x in rows if x["name"] == "smollm2")
    assert smol["backend"] == "llamacpp" and smol["footprint_bytes"] > 90e6 and smol["loaded"] is False


def test_experts_list_table(default_config):
    r = runner.invoke(app, ["experts", "list", "--config", str(default_config)])
    assert r.exit_code == 0 and "smollm2" in r.output and "llamacpp" in r.output


def test_ask_json_real_model(default_config):
    r = runner.invoke(app, ["ask", "What is the capital of France?", "--config", str(default_config),
                            "--json", "--max-tokens", "16"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert "paris" in d["text"].lower()
    assert d["experts"] == ["smollm2"]
    assert d["usage"]["completion_tokens"] > 0 and d["latency_s"] > 0
    assert d["stages"][0]["events"][0]["event"] == "load"


def test_ask_config_error_exit_2(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("version: 1\nexperts: []\n")
    r = runner.invoke(app, ["ask", "hi", "--config", str(p)])
    assert r.exit_code == 2 and "experts" in r.output


def test_ask_unknown_expert(default_config):
    r = runner.invoke(app, ["ask", "hi", "--config", str(default_config), "--expert", "nope"])
    assert r.exit_code == 1 and "unknown expert 'nope'" in r.output


def test_real_subprocess(default_config, tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "composer")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LITELLM_"))}
    r = subprocess.run([exe, "ask", "What is the capital of France?", "--max-tokens", "16"],
                       capture_output=True, text=True, timeout=300, cwd=default_config.parent, env=env)
    assert r.returncode == 0, r.stderr
    assert "paris" in r.stdout.lower()
