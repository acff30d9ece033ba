#!/usr/bin/env bash
# SCoRe-RL through verl (configs/verl/score_rl.yaml); extra arguments are Hydra overrides.
#   scripts/verl_train.sh                                   # this node, trainer.n_gpus_per_node GPUs
#   scripts/verl_train.sh trainer.n_gpus_per_node=1         # one GPU
#   RAY_ADDRESS=http://HEAD:8265 scripts/verl_train.sh trainer.nnodes=4
#       # a Ray cluster (`ray start --head` on one node, `ray start --address=HEAD:6379` on the
#       # others): this script is submitted as a Ray job whose working directory is this
#       # repository, so every worker imports our agent loop from it
# Needs verl 0.9.1 with vLLM where it runs (README, "From one GPU to a cluster").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${RAY_ADDRESS:-}" ] && [ -z "${SCORE_DISTILL_RAY_JOB:-}" ]; then
  cd "$root"
  exec ray job submit --address "$RAY_ADDRESS" \
    --runtime-env-json '{"working_dir": ".", "env_vars": {"SCORE_DISTILL_RAY_JOB": "1", "PYTHONPATH": "."}}' \
    -- bash scripts/verl_train.sh "$@"
fi
exec python -m verl.trainer.main_ppo --config-path "$root/configs/verl" --config-name score_rl \
  actor_rollout_ref.rollout.agent.agent_loop_config_path="$root/configs/verl/agent_loops.yaml" "$@"
