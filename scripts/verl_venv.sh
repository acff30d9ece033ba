#!/usr/bin/env bash
# The verl environment, ./.venv-verl: verl 0.9.1 pins transformers below 5.11, so it cannot
# share ./.venv. Installs the project with its verl extra and runs the adapter's tests that
# need verl itself (tests/verl/); tests/test_verl_adapter.py runs in the main suite.
#   bash scripts/verl_venv.sh                # CPU: the tests
#   bash scripts/verl_venv.sh vllm           # on a GPU machine: with vLLM, to train (scripts/verl_train.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-verl"
[ -x "$venv/bin/python" ] || python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
if [ "${1:-}" = "vllm" ]; then
  "$venv/bin/python" -m pip install -q -e "$root[verl]" "verl[vllm]==0.9.1"
else
  "$venv/bin/python" -m pip install -q "torch==2.13.0"   # the CPU wheel first, as scripts/_venv.sh
  "$venv/bin/python" -m pip install -q -e "$root[verl]" "pytest>=8" "hypothesis>=6.100"
  cd "$root" && "$venv/bin/python" -m pytest -q tests/verl tests/test_verl_adapter.py -p no:cacheprovider
fi
