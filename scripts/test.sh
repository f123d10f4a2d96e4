#!/usr/bin/env bash
# The whole test suite (real-model tests included). Fast tier: scripts/test.sh -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
