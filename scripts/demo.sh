#!/usr/bin/env bash
# The main job on the embedded default model and data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/relevance-lens demo "$@"
