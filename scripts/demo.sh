#!/usr/bin/env bash
# Install into ./.venv (created if missing) and run the main job: score-distill run --preset demo.
# Extra arguments are passed to `score-distill run` (e.g. --preset smoke --out runs/smoke).
set -euo pipefail
source "$(dirname "$0")/_venv.sh"
cd "$root"
if [ "$#" -eq 0 ]; then set -- --preset demo; fi
exec score-distill run "$@"
