#!/usr/bin/env bash
# Install from scratch (if needed) and run the end-to-end "reuse or retrain?" demo on the embedded data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# exec: Ctrl-C and SIGTERM reach the demo itself, which saves the finished stages (see docs/demo.md)
exec .venv/bin/lightning-reuse demo "$@"
