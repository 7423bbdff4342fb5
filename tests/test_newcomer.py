"""The README's two quick-start commands: `make run` answers through the routed default pipeline
and prints the route; `make test` runs the suite; both install on first use and re-check fast."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
HASHED = ("pyproject.toml", "setup.py", "constraints.txt", "install.sh")


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def test_readme_quick_start_is_exactly_two_commands_and_ci_runs_the_second():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quick, re.S)
    assert [b.strip() for b in blocks[:2]] == ["make run", "make test"]
    ci = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    make_test = subprocess.run(["make", "--no-print-directory", "-n", "test", "VENV=.venv"], cwd=REPO,
                               capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()
    # .ci/run spells out exactly the steps of `make test` (so the pytest run is visible in it)
    assert ci[-len(make_test):] == [ln.strip() for ln in make_test]


def test_make_targets_install_on_first_use():
    for target, job in (("run", "composer ask"), ("test", "pytest")):
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        out = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=REPO, capture_output=True,
                             text=True, check=True, env=env).stdout  # (the suite itself may run under make)
        lines = out.strip().splitlines()
        assert lines[0].startswith("./install.sh --if-needed") and job in lines[1], out


def test_recheck_on_an_installed_venv_is_under_two_seconds():
    stamp = VENV / ".composer-install-stamp"
    assert stamp.exists(), f"{stamp} missing: this venv was not set up by ./install.sh (run `make test`)"
    t0 = time.perf_counter()
    r = subprocess.run(["./install.sh", "--if-needed", str(VENV)], cwd=REPO, capture_output=True, text=True)
    took = time.perf_counter() - t0
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stderr
    assert took < 2.0, f"re-check took {took:.2f} s"


def test_a_changed_input_triggers_the_install(tmp_path):
    """A copy of the set-up files with a stamp: up to date -> nothing; constraints edited -> set-up."""
    for f in HASHED:
        shutil.copy(REPO / f, tmp_path / f)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin/composer").write_text("#!/bin/sh\n")
    (venv / "bin/composer").chmod(0o755)
    digest = subprocess.run(f"cat {' '.join(HASHED)} | sha256sum | cut -d' ' -f1", shell=True, cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.strip()
    (venv / ".composer-install-stamp").write_text(digest + "\n")
    env = {**os.environ, "PYTHON": "false"}  # a set-up attempt fails at once instead of installing
    r = subprocess.run(["./install.sh", "--if-needed", "venv"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stderr == ""
    with open(tmp_path / "constraints.txt", "a") as f:
        f.write("# changed\n")
    r = subprocess.run(["./install.sh", "--if-needed", "venv"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "setting up venv" in r.stderr
    assert not (venv / ".composer-install-stamp").exists()  # a half-done set-up is never stamped


def test_the_default_route_is_by_declared_skills(default_config):
    """Routing only (no generation): a question goes to the chat model, a text to continue to the
    base model, and the reason names the skills it matched."""
    from composer.core import Composer

    with Composer.from_yaml(default_config) as c:
        assert c.config.settings.default_pipeline == "routed"
        fact, story = c.route(["What is the capital of France?",
                               "Continue this story: Once upon a time, a dragon lived in a cave and"],
                              pipeline="routed")
    assert fact.experts == ["smollm2"] and story.experts == ["gemma3-270m"]
    assert fact.router == "symbolic"
    assert "geography and capitals" in fact.reason and "declared in experts.yaml" in fact.reason
    assert "story writing" in story.reason or "continuing a text" in story.reason


def test_composer_ask_answers_routed_and_prints_the_route(tmp_path, default_config):
    """What `make run` runs after set-up: the real command, in a subprocess, on the real models."""
    exe = VENV / "bin" / "composer"
    t0 = time.perf_counter()
    r = subprocess.run([str(exe), "ask", "What is the capital of France?", "--config", str(default_config)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "paris" in r.stdout.lower()
    route = r.stderr
    assert "route: pipeline 'routed' -> smollm2" in route
    assert "why: symbolic: smollm2 predicted" in route and "geography and capitals" in route
    assert re.search(r"loads: smollm2 \d+\.\d\d s", route)
    assert re.search(r"tokens: [1-9]\d* in, [1-9]\d* out; cost \$[0-9.e+-]+; time \d+\.\d\d s", route)
    print(f"composer ask (routed) took {time.perf_counter() - t0:.1f} s")


def test_expert_still_bypasses_routing(default_config):
    from typer.testing import CliRunner

    from composer.cli.main import app, register_commands

    register_commands()
    r = CliRunner().invoke(app, ["ask", "The capital of France is", "--config", str(default_config),
                                 "--expert", "gemma3-270m", "--max-tokens", "8"])
    assert r.exit_code == 0, r.output
    assert "route: no pipeline -> gemma3-270m" in r.output and "why: requested expert" in r.output


@pytest.mark.parametrize("bad, msg", [
    ("default_pipeline: nope", "unknown pipeline 'nope'"),
])
def test_default_pipeline_must_exist(tmp_path, bad, msg):
    from composer.config import load_config
    from composer.errors import ConfigError

    p = tmp_path / "e.yaml"
    p.write_text(f"version: 1\nsettings:\n  {bad}\nexperts:\n  - {{name: f, backend: fake, model: m}}\n")
    with pytest.raises(ConfigError, match=msg) as ei:
        load_config(p)
    assert ei.value.line == 3 and ei.value.field == "settings.default_pipeline"


def test_declared_skills_pipeline_is_checked(tmp_path):
    from composer.config import load_config
    from composer.errors import ConfigError

    p = tmp_path / "e.yaml"
    p.write_text("version: 1\nexperts:\n  - {name: a, backend: fake, model: m, skills: [x]}\n"
                 "  - {name: b, backend: fake, model: m}\n"
                 "pipelines:\n  - {name: r, router: symbolic, profile: declared_skills, experts: [a, b]}\n")
    with pytest.raises(ConfigError, match="expert 'b' declares no skills"):
        load_config(p)
