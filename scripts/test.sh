#!/usr/bin/env bash
# Install into ./.venv (created if missing) with the test extras and run the whole test suite
# (offline, CPU). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/_venv.sh" test
cd "$root"
exec python -m pytest "$@"
