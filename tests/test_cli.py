"""The CLI through typer's CliRunner, and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


# -- CLI polish: version, completion, flags, exit codes, registry resolution, init --------------

def _all_commands(group=None, prefix=()):
    """(path, click command) for every command of the CLI."""
    import typer.main

    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_version():
    from importlib.metadata import version

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"composer {version('composer-moe')}"


def test_shell_completion_is_on():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "--install-completion" in r.output and "--show-completion" in r.output
    assert "Exit codes: 0 success, 1 runtime failure, 2 usage" in r.output


def test_each_short_flag_has_one_meaning():
    meaning: dict[str, tuple[str, tuple]] = {}
    for path, cmd in _all_commands():
        for p in cmd.params:
            for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", []):
                if opt.startswith("-") and not opt.startswith("--"):
                    long = next((o for o in p.opts if o.startswith("--")), p.name)
                    seen = meaning.setdefault(opt, (long, path))
                    assert seen[0] == long, f"{opt} is {seen[0]} in {' '.join(seen[1])} but {long} in {' '.join(path)}"
    assert meaning["-c"][0] == "--config"


def test_commands_that_print_data_have_json():
    need = {("experts", "list"), ("models", "prepare"), ("ask",), ("init",), ("data", "where"),
            ("data", "sources"), ("data", "pull"), ("data", "verify"), ("validate",)}
    have = {path for path, cmd in _all_commands() if any("--json" in getattr(p, "opts", []) for p in cmd.params)}
    assert need <= have, sorted(need - have)


def test_bad_global_option_is_exit_2():
    r = runner.invoke(app, ["--log-format", "xml", "validate", "experts.yaml"])
    assert r.exit_code == 2 and "--log-format" in r.output and "xml" in r.output
    r = runner.invoke(app, ["--log-level", "LOUD", "validate", "experts.yaml"])
    assert r.exit_code == 2 and "--log-level" in r.output


def test_global_log_options_configure_the_composer_logger(default_config):
    import logging

    r = runner.invoke(app, ["--log-level", "DEBUG", "--log-format", "json", "validate", str(default_config)])
    assert r.exit_code == 0, r.output
    assert logging.getLogger("composer").level == logging.DEBUG


def test_config_resolution_order(tmp_path, monkeypatch, default_config):
    from composer.config import packaged_registry, resolve_config_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMPOSER_CONFIG", raising=False)
    assert resolve_config_path(None) == (packaged_registry(), "packaged default")
    assert packaged_registry().read_bytes() == default_config.read_bytes()
    (tmp_path / "experts.yaml").write_text("x")
    assert resolve_config_path(None)[1] == "./experts.yaml"
    env = tmp_path / "env.yaml"
    env.write_text("version: 1\nexperts:\n  - {name: f, backend: fake, model: m}\n")
    monkeypatch.setenv("COMPOSER_CONFIG", str(env))
    assert resolve_config_path(None) == (env, "$COMPOSER_CONFIG")
    assert resolve_config_path("given.yaml") == (Path("given.yaml"), "--config")
    r = runner.invoke(app, ["experts", "list", "--json"])            # $COMPOSER_CONFIG wins over ./
    assert r.exit_code == 0, r.output
    assert [x["name"] for x in json.loads(r.output)] == ["f"]
    monkeypatch.setenv("COMPOSER_CONFIG", str(tmp_path / "missing.yaml"))
    r = runner.invoke(app, ["experts", "list"])
    assert r.exit_code == 2 and "missing.yaml" in r.output and "COMPOSER_CONFIG" in r.output


def test_init_writes_the_default_registry_once(tmp_path, default_config):
    r = runner.invoke(app, ["init", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "experts.yaml").read_bytes() == default_config.read_bytes()
    r = runner.invoke(app, ["init", str(tmp_path)])
    assert r.exit_code == 2 and "already exists" in r.output and "--force" in r.output
    assert runner.invoke(app, ["init", str(tmp_path), "--force"]).exit_code == 0
    (tmp_path / "file").write_text("")
    assert runner.invoke(app, ["init", str(tmp_path / "file")]).exit_code == 2


def test_usage_errors_are_exit_2(default_config):
    assert runner.invoke(app, ["ask", "  ", "--config", str(default_config)]).exit_code == 2
    r = runner.invoke(app, ["ask", "hi", "--config", str(default_config), "--expert", "smollm2", "--pipeline", "moa"])
    assert r.exit_code == 2 and "not both" in r.output
    assert runner.invoke(app, ["ask", "hi", "--no-such-option"]).exit_code == 2


def _without(module: str, argv: list[str], cwd, **env):
    """Run the CLI in a real subprocess with `module` unimportable (as if its extra were missing)."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from composer.cli.main import main\n"
            f"sys.argv = ['composer', *{argv!r}]\n"
            "main()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, **env})


def test_missing_extra_is_one_line_naming_the_pip_install(tmp_path, default_config):
    r = _without("ray", ["serve", "--port", "0", "--config", str(default_config)], tmp_path, COMPOSER_API_KEYS="k")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == ["error: ray is not installed; run: pip install 'composer-moe[serve]'"]
    # a backend that needs the extra fails the answer (exit 1) with the same advice, in one line
    r = _without("llama_cpp", ["ask", "hi", "--expert", "smollm2", "--config", str(default_config)], tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    (line,) = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]  # (log lines aside)
    assert "pip install 'composer-moe[local]'" in line
