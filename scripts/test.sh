#!/usr/bin/env bash
# Install from scratch (if needed) and run the whole test suite: lint, format check, tests, doctests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
echo "[test] ruff check + format check"
LINT_PATHS=$(ls -d lightning_reuse tests benchmarks recipes conftest.py 2>/dev/null || true)
.venv/bin/ruff check $LINT_PATHS
.venv/bin/ruff format --check $LINT_PATHS
echo "[test] pytest (all tests, slow ones included)"
.venv/bin/python -m pytest -q --durations=15 "$@"
