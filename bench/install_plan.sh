#!/usr/bin/env bash
# What pip would install for `score-distill[vllm]`, without installing anything:
#   1. into an empty environment: one torch, the build vLLM pins, and nothing it conflicts with;
#   2. beside a torch that is already installed and satisfies vLLM's pin: that torch is kept.
# Writes bench/install_plan.txt. Needs the package index; downloads wheel metadata only.
#   bash bench/install_plan.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/bench/install_plan.txt"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
plan() {  # plan NAME VENV ARGS...: the resolver's report, summarised
  local name="$1" venv="$2"; shift 2
  "$venv/bin/pip" install -q --dry-run --report "$work/$name.json" "$@" > /dev/null 2>&1
  "$venv/bin/python" - "$work/$name.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
chosen = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
for name in ("torch", "vllm", "transformers", "trl", "accelerate", "peft", "datasets", "score-distill"):
    print(f"  {name:14} {chosen.get(name, '(kept as installed)')}")
PY
}
{
  echo "# pip's plan for score-distill[vllm] (pip install --dry-run --report), $(date -u +%Y-%m-%d)"
  echo "# command: bash bench/install_plan.sh"
  python3.11 -m venv "$work/empty" && "$work/empty/bin/pip" install -q --upgrade pip > /dev/null 2>&1
  echo; echo "## 1. empty environment: pip install -e '.[vllm]'"
  plan empty "$work/empty" --ignore-installed -e "$root[vllm]"
  python3.11 -m venv "$work/beside" && "$work/beside/bin/pip" install -q --upgrade pip > /dev/null 2>&1
  "$work/beside/bin/pip" install -q "torch==2.13.0" > /dev/null 2>&1
  echo; echo "## 2. beside an installed torch ($("$work/beside/bin/python" -c 'import torch; print(torch.__version__)')): pip install -e '.[vllm]' 'vllm==0.32.0' (vLLM 0.32.0 pins torch==2.13.0)"
  plan beside "$work/beside" -e "$root[vllm]" "vllm==0.32.0"
} > "$out"
cat "$out"
