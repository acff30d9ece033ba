"""SCoRe-RL: short-horizon GRPO with the key-step reward, and its ablations and baseline.

Each step takes `items_per_step` key-step items. For each, `group_size` rollouts start at
the item's verified prefix (the rollout rebuilds the sandbox state by replaying the prefix's
code), the student writes the key step and goes on to the end within the turn budget
(prefix turns count). Rewards come from `train.rewards`, advantages are group-relative,
and the loss is the PPO-clipped objective on the tokens generated in this rollout only
(`render_sampled` with `train_on` = steps at index >= len(prefix): not the prefix, not the
observations), on the token ids the engine sampled, each weighted by its truncated importance
weight against the sampler's log-prob. A KL penalty to the starting checkpoint (`kl_coef`)
is off by default, as in the paper; only with it is the reference model loaded and the k3
KL logged.

    from score_distill.train.rl import RLOptions, train_rl
    final = train_rl("runs/x/sft/final", items, tasks_by_id, teacher, ToolConfig(), "runs/x/rl",
                     RLOptions(steps=50))                # engine="vllm" on a GPU

Ablations and baseline, through the same code:
- without the key-step reward: `use_key_step=False` (outcome reward only, 1.0 / 0.0);
- without the short horizon: `short_horizon=False`: rollouts start from the question; the
  key step is the step at index `len(item.prefix)` of the fresh rollout (when it gets that
  far), judged against chosen/rejected with the item's prefix as the judge's context; the
  loss covers every generated step;
- GRPO from the question with outcome reward only: `train_rl(..., rl_items.outcome_items(tasks), ...,
  RLOptions(use_key_step=False, outcome_only_share=1.0))`.

Why a compact trainer of our own (on `accelerate`) and not TRL's `GRPOTrainer` with a
`rollout_func`: our episodes are multi-turn CodeAct rollouts that start from a prefix and
interleave sandbox observations; they must go through the one rollout loop and be rendered
by our one loss-mask renderer. TRL's hook is marked experimental and wants prompt/completion
token ids that we would have to re-derive from the renderer anyway. Ours is a few hundred
lines, and `accelerate launch` runs it on several processes (the local engine only).

Design notes:
- Sampling uses the CURRENT weights, through `PolicySampler.sync_weights` after every
  update. The local engine (`engine="local"`) is built around the very module being trained
  and only drops its KV caches; vLLM (`engine="vllm"`, one CUDA GPU, colocated in this
  process as TRL's `vllm_mode="colocate"`) gets the weights loaded into its own model.
- Token-in/token-out: each generated turn is trained on the ids the engine sampled, with
  the renderer's masks (`render.render_sampled`); the turns whose ids or context differ from
  the re-tokenised text are counted and logged (`token_mismatch`), never silently dropped.
- Default temperature 1.0, top-p 1.0: GRPO needs diverse groups, and then the sampling
  distribution is the policy itself, so ratios and importance weights are exact. With
  another temperature the ratios use logits / T and the importance weights compare
  untempered log-probs, as the engines report them (top-p is not modelled).
- Old log-probs come from the trainer's forward pass before the update, and the sampler's
  log-probs only enter through the truncated importance weight
  w = min(exp(logp_old - logp_sampler), is_cap) on each sampled token (TIS; `grpo.
  truncated_is_weights` says whose method): the engine's kernels, precision and, for vLLM,
  its own copy of the weights make its distribution differ slightly from the trainer's.
  Logged per step: mean |logp_old - logp_sampler|, the share of tokens capped, mean weight.
- The policy stays in eval mode (no dropout), so the first pass has ratio exactly 1.
- Precision: on a CUDA device with bf16, the policy is held in bf16 and the optimiser keeps
  fp32 master weights and moments (`master_adamw.MasterAdamW`, `bf16_policy`); elsewhere
  the weights are fp32 (bf16 autocast where `bf16` says). No reference model at all when
  `kl_coef` is 0: the KL to the start is then not logged (`kl` is null).
- Loss = sum of per-token losses / tokens of the sequences trained this step (token-level
  mean, so long rollouts are not down-weighted per token). Groups whose rewards are all
  equal have zero advantage and are skipped (no compute) unless a KL penalty applies.
- Several processes (`accelerate launch`, DDP; the local engine): each rolls out its share
  of the step's items (items i, i + P, ...), with the sample indices, so the seeds, they
  have in a one-process run; the token count is summed over the processes and normalises
  every process's loss; every process runs as many micro-batches as the busiest one
  (`batches.idle_batch` weighs nothing), with the gradient all-reduce at the last one only
  (`no_sync`); only the main process writes the log, samples and checkpoints. The result is
  the update one process makes from the same global batch, up to float rounding (a test).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from score_distill.agent.rollout import RolloutConfig
from score_distill.config import UsageError, option, save_config
from score_distill.devices import training_device
from score_distill.memory import release_memory
from score_distill.precision import Bf16, resolve_bf16
from score_distill.teachers.base import Teacher
from score_distill.tools.config import ToolConfig
from score_distill.train.rl_dir import RLDir, save_checkpoint
from score_distill.train.rl_models import Reference, build_optimizer, build_sampler
from score_distill.train.rl_items import items_for_step, select_pool
from score_distill.train.render import SampledRender
from score_distill.train.rewards import KeyStepJudge, reward_summary
from score_distill.train.rl_rollouts import Sample, collect, item_groups, render_samples
from score_distill.types import KeyStepItem, Task, Trajectory, write_jsonl

if TYPE_CHECKING:  # grpo imports torch; this module stays light for the command line
    from score_distill.models.base import PolicySampler
    from score_distill.train.grpo import UpdateStats

log = logging.getLogger(__name__)


def rl_rollout_config() -> RolloutConfig:
    """The RL rollout defaults: the policy's own distribution, a step's rollouts side by side,
    and an end to rollouts that stop writing the format (2 unparseable turns) or loop (2
    repeated actions): reward 0 either way."""
    return RolloutConfig(temperature=1.0, top_p=1.0, max_new_tokens=256, batch_size=64, stage="rl",
                         max_format_errors=2, max_repeats=2)


@dataclass
class RLOptions:
    steps: int = option(0, "optimiser steps; 0 = derived from epochs")
    epochs: float = option(1.0, "passes over the RL items (used when steps is 0)")
    items_per_step: int = option(8, "items (prompts) per step, split across processes")
    group_size: int = option(4, "rollouts per item; their rewards are compared with each other (docs/method.md)")
    ppo_epochs: int = option(1, "optimisation passes over each step's rollouts")
    micro_batch_size: int = option(4, "sequences per forward pass")
    share_prefix: bool = option(True, "the tokens an item's samples share (prompt and verified prefix) go through "
                                      "the model once per update pass, their micro-batches on top of them: the same "
                                      "log-probs and gradient for less compute (logprobs.py). One process only, and not "
                                      "with activation_checkpointing, which keeps no keys/values to share")
    activation_checkpointing: bool = option(False, "recompute each layer's activations in the backward pass: "
                                                   "memory for one layer instead of all, for more compute")
    lr: float = option(2e-5, "AdamW learning rate, constant (docs/method.md: the paper's, for a 7B student)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient norm clip")
    clip_eps: float = option(0.2, "PPO ratio clip")
    kl_coef: float = option(0.0, "weight of the k3 KL penalty to the starting checkpoint; 0 (the paper's): no "
                                 "reference model is loaded and no KL is logged")
    keep_reference: bool = option(False, "with a KL penalty: hold the reference model in memory between steps; "
                                         "False: it is read from disk for each step's scoring and freed before "
                                         "the update, whose gradients then have its memory")
    is_cap: float = option(2.0, "cap C of the truncated importance weight min(exp(logp_trainer - logp_sampler), C) "
                                "on each sampled token, which corrects for the sampling engine (grpo.py); "
                                "0 = no correction (the mismatch is logged either way)")
    bf16_policy: bool = option(True, "on a CUDA device with bf16 on: hold the policy in bf16 with fp32 master "
                                     "weights and AdamW moments in the optimiser (master_adamw.py); on a CPU "
                                     "the weights stay fp32 (bf16 autocast as `bf16` says)")
    scale_advantages: bool = option(True, "divide advantages by the group's reward std")
    max_length: int = option(4096, "rendered sequences are cut to this many tokens")
    outcome_only_share: float = option(0.25, "share of the items WITHOUT an intervention that join the "
                                             "RL pool (from the question, outcome reward only)")
    use_key_step: bool = option(True, "the key-step reward (rewards.key_step_reward); False = ablation: outcome reward only")
    short_horizon: bool = option(True, "False = ablation: rollouts from the question instead of the prefix")
    bf16: Bf16 = option("auto", "bf16 autocast for rollouts and loss; auto: where the hardware computes bf16 "
                                "natively (precision.py). Sampling and scoring then differ by bf16 rounding")
    cpu_threads: int = option(0, "torch CPU threads; 0 = every core this process may use")
    judge_concurrency: int = option(8, "rollouts of a step whose rewards are scored at once (each may ask the "
                                       "teacher whether a key step is equivalent to the teacher's)")
    save_every: int = option(25, "checkpoint every N steps (0 = only at the end)")
    samples_per_step: int = option(2, "trajectories per step written to samples.jsonl for reading")
    rollout: RolloutConfig = dataclasses.field(default_factory=rl_rollout_config, metadata={
        "help": "the RL rollouts: sampling (T=1.0, top-p 1.0: the samples are the policy's, ratios exact), "
                "token and turn budget, early stops; its seed also orders the items"})

    def __post_init__(self) -> None:
        if not self.rollout.temperature > 0:
            raise ValueError(f"rl.rollout.temperature must be above 0 (got {self.rollout.temperature}): RL compares "
                             "samples of the policy and scores log-probs of logits / temperature; greedy rollouts "
                             "give a group one answer and those log-probs no value")


def total_steps(opts: RLOptions, n_pool: int) -> int:
    """`opts.steps`, or enough steps for `opts.epochs` passes over the pool.

    >>> total_steps(RLOptions(epochs=2.0, items_per_step=4), 10)
    5
    """
    return opts.steps or max(1, math.ceil(opts.epochs * n_pool / opts.items_per_step))


def format_line(r: dict[str, Any], total: int) -> str:
    """The one readable log line of a step (`-` for what was not measured).

    >>> format_line({"step": 3, "reward": 0.41, "r1.0": 0.25, "r0.5": 0.125, "r0.1": 0.0, "r0": 0.625,
    ...              "signal": 0.75, "kl": None, "loss": -0.013, "sampler_logp_diff": 0.0012, "is_weight": 0.998,
    ...              "is_truncated": 0.0, "token_mismatch": 0.05, "gen_tok_s": 1234.0, "time_s": 12.3}, 50)
    'step 3/50 | reward 0.410 (1:25% .5:12% .1:0% 0:62%) | signal 75% | kl - | loss -0.0130 | sampler dlogp 1.2e-03 w 0.998 capped 0% | ids off 5% | tok/s 1.2e+03 | 12.3s'
    """
    def shown(key: str, fmt: str) -> str:
        return "-" if r.get(key) is None else format(r[key], fmt)

    return (f"step {r['step']}/{total} | reward {r['reward']:.3f} (1:{r['r1.0']:.0%} .5:{r['r0.5']:.0%} "
            f".1:{r['r0.1']:.0%} 0:{r['r0']:.0%}) | signal {r['signal']:.0%} | kl {shown('kl', '.4f')} | "
            f"loss {r['loss']:.4f} | sampler dlogp {shown('sampler_logp_diff', '.1e')} w {shown('is_weight', '.3f')} "
            f"capped {shown('is_truncated', '.0%')} | ids off {shown('token_mismatch', '.0%')} | "
            f"tok/s {r['gen_tok_s']:.2g} | {r['time_s']:.1f}s")


def train_rl(model_dir: str | Path, items: list[KeyStepItem], tasks_by_id: dict[str, Task],
             teacher: Teacher | None, tools: ToolConfig, out_dir: str | Path, opts: RLOptions,
             device: str = "auto", engine: str = "local") -> Path:
    """Train the model in `model_dir` with GRPO on `items` on `device` (devices.py), its
    rollouts sampled by `engine` ("local" or "vllm", `build_sampler`); returns
    `<out_dir>/final`.

    Writes `rl_config.yaml`, `rl_log.jsonl` (one record per step), `samples.jsonl` (a few
    scored trajectories per step) and checkpoints; resumes from the latest checkpoint (and
    trims the log to it) when rerun, and returns at once when `final` exists. `teacher` judges
    key-step equivalence; it may be None when no item has an intervention or the key-step
    reward is off."""
    import torch
    from accelerate import Accelerator

    files = RLDir(out_dir)
    if (files.final / "config.json").is_file():
        return files.final
    pool = select_pool(items, opts.outcome_only_share, opts.rollout.seed)
    if opts.short_horizon:  # a prefix that fills the turn budget leaves nothing to generate
        pool = [i for i in pool if len(i.prefix) < opts.rollout.turn_budget]
    _check_inputs(pool, tasks_by_id, teacher, opts)
    accelerator = Accelerator(cpu=training_device(device) == "cpu")
    opts = dataclasses.replace(opts, bf16=resolve_bf16(opts.bf16, accelerator.device.type))  # saved as used
    if opts.items_per_step % accelerator.num_processes:
        raise ValueError(f"items_per_step={opts.items_per_step} does not split over {accelerator.num_processes} processes")
    if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise UsageError(f"RL runs under DDP (configs/accelerate/ddp.yaml), not {accelerator.distributed_type.value}: "
                         "each process samples its rollouts with the very module it trains, and sharded weights "
                         "would make the processes gather them in lockstep while decoding different rollouts; "
                         "for a student too large to hold whole on one GPU use the verl adapter (configs/verl/)")
    if engine == "vllm" and accelerator.num_processes > 1:
        raise UsageError("RL with the vllm engine runs in one process on one GPU (use --engine local for several)")
    total = total_steps(opts, len(pool))
    resume = files.latest_checkpoint()
    start, start_dir = resume if resume is not None else (0, Path(model_dir))
    sampler, policy = build_sampler(engine, start_dir, accelerator.device, opts)
    if opts.activation_checkpointing:  # takes effect in train mode; sampling switches to eval itself
        policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        policy.train()
    reference = Reference(model_dir, torch.bfloat16 if opts.bf16 else torch.float32, accelerator.device,
                           opts.keep_reference) if opts.kl_coef else None
    optimizer = build_optimizer(policy, opts)
    if resume is not None:
        optimizer.load_state_dict(torch.load(start_dir / "optimizer.pt", weights_only=True))
    model, optimizer = accelerator.prepare(policy, optimizer)
    judge = KeyStepJudge(teacher) if teacher is not None else None
    if accelerator.is_main_process:
        files.out.mkdir(parents=True, exist_ok=True)
        save_config(opts, files.out / "rl_config.yaml")
        files.trim(start)
        log.info("RL: %d items in the pool (%d with an intervention), %d steps, from %s", len(pool),
                 sum(i.chosen is not None for i in pool), total, start_dir)
        if opts.share_prefix and (opts.activation_checkpointing or accelerator.num_processes > 1):
            log.info("RL: each sequence is scored whole (share_prefix needs one process and no activation "
                     "checkpointing)")
    trainer = _Trainer(sampler, model, reference, optimizer, accelerator, pool, tasks_by_id, tools, judge, opts)
    bar = tqdm(total=total, initial=start, desc="rl", unit="step", disable=not accelerator.is_main_process)
    for step in range(start, total):
        record = trainer.step(step)
        if accelerator.is_main_process:
            files.append_log(record)
            write_jsonl(files.samples_path, trainer.last_samples, append=True)
            log.info(format_line(record, total))
            bar.update(1)
        if opts.save_every and (step + 1) % opts.save_every == 0 and step + 1 < total:
            save_checkpoint(files, accelerator, model, sampler.tokenizer, optimizer, step + 1)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files.save(files.final, accelerator.unwrap_model(model), sampler.tokenizer)
        shutil.rmtree(files.checkpoints, ignore_errors=True)
    accelerator.wait_for_everyone()
    return files.final


def _check_inputs(pool: list[KeyStepItem], tasks_by_id: dict[str, Task], teacher: Teacher | None,
                  opts: RLOptions) -> None:
    if not pool:
        raise ValueError("no RL items: the pool is empty (no interventions and outcome_only_share=0?)")
    missing = sorted({i.task_id for i in pool} - set(tasks_by_id))
    if missing:
        raise KeyError(f"RL items refer to unknown tasks: {missing[:5]}")
    if teacher is None and opts.use_key_step and any(i.chosen is not None for i in pool):
        raise ValueError("items with interventions need a teacher to judge key-step equivalence "
                         "(or use_key_step=False)")


class _Trainer:
    """What one training step needs, so `step` reads as the algorithm."""

    def __init__(self, sampler: PolicySampler, model: Any, ref: Reference | None, optimizer: Any, accelerator: Any,
                 pool: list[KeyStepItem], tasks_by_id: dict[str, Task], tools: ToolConfig,
                 judge: KeyStepJudge | None, opts: RLOptions) -> None:
        self.sampler, self.model, self.ref, self.optimizer = sampler, model, ref, optimizer
        self.acc, self.pool, self.tasks_by_id, self.tools, self.judge, self.opts = (
            accelerator, pool, tasks_by_id, tools, judge, opts)
        tok = sampler.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.last_samples: list[Trajectory] = []

    def step(self, step: int) -> dict[str, Any]:
        """Roll out, score, update, sync the sampler; returns the step's log record (reduced
        over processes)."""
        import torch

        from score_distill.train.batches import idle_batch, micro_batches
        from score_distill.train.grpo import Scored, reference_logprobs, update

        opts, acc = self.opts, self.acc
        t0 = time.perf_counter()
        mine = items_for_step(len(self.pool), step, opts.items_per_step, opts.rollout.seed)
        slots = list(range(acc.process_index, len(mine), acc.num_processes))  # this process's share
        samples = collect(self.sampler, [self.pool[mine[i]] for i in slots], self.tasks_by_id, self.tools, self.judge,
                          opts, step, slots)
        rollout_s = time.perf_counter() - t0
        self.sampler.pause_sampling()
        seqs = render_samples(self.sampler.tokenizer, samples, opts.max_length)
        trained = [i for i, r in enumerate(seqs) if 1 in r.mask and (samples[i].advantage != 0 or opts.kl_coef)]
        groups = None
        if opts.share_prefix and not opts.activation_checkpointing and acc.num_processes == 1:
            groups = item_groups(trained, opts.group_size)
        mbs = micro_batches([(seqs[i].ids, seqs[i].mask) for i in trained], [samples[i].advantage for i in trained],
                            opts.micro_batch_size, self.pad_id,
                            [seqs[i].sampler_logprobs for i in trained], groups) if trained else []
        tokens = sum(float(b.loss_mask.sum()) for b, _ in mbs)
        if acc.num_processes > 1:  # the same number of passes everywhere, the loss over every process's tokens
            counts = acc.gather(torch.tensor([len(mbs)], device=acc.device)).tolist()
            tokens = float(acc.reduce(torch.tensor([tokens], dtype=torch.float64, device=acc.device), "sum").item())
            like = mbs[-1][0] if mbs else None
            mbs += [(idle_batch(like, self.pad_id), torch.zeros(like.input_ids.shape[0] if like is not None else 1))
                    for _ in range(max(counts) - len(mbs))]
        release_memory()  # the rollout's KV caches, before the reference is read
        if self.ref is None:
            scored = [Scored(b.to(acc.device), a.to(acc.device)) for b, a in mbs]
        else:
            with self.ref.loaded() as ref:
                scored = reference_logprobs(ref, mbs, acc.device, opts.rollout.temperature, opts.bf16)
                del ref  # else this frame keeps it alive through the update
        stats = update(self.model, self.optimizer, acc.backward,
                       lambda n: acc.clip_grad_norm_(self.model.parameters(), n), scored,
                       clip_eps=opts.clip_eps, kl_coef=opts.kl_coef, ppo_epochs=opts.ppo_epochs,
                       max_grad_norm=opts.max_grad_norm, temperature=opts.rollout.temperature, bf16=opts.bf16,
                       is_cap=opts.is_cap, total_tokens=tokens, processes=acc.num_processes,
                       no_sync=(lambda: acc.no_sync(self.model)) if acc.num_processes > 1 else None)
        # The next rollouts sample from the new weights, with no key/value of the old ones.
        self.sampler.sync_weights(acc.unwrap_model(self.model))
        release_memory()
        self.last_samples = [_annotate(s, step + 1) for s in samples[: opts.samples_per_step]]
        return self._record(step, samples, seqs, len(trained), stats, rollout_s, t0)

    def _record(self, step: int, samples: list[Sample], seqs: list[SampledRender], n_trained: int,
                stats: UpdateStats, rollout_s: float, t0: float) -> dict[str, Any]:
        """The step's log record, with sums and rewards taken over every process."""
        import torch

        acc, st = self.acc, stats.sampler
        local = [stats.kl, stats.kl_tokens, stats.loss, stats.tokens, stats.clipped, n_trained,
                 sum(s.traj.generated_tokens for s in samples), sum(s.traj.n_turns - s.start for s in samples),
                 sum(s.traj.finished for s in samples), st.tokens, st.abs_diff, st.truncated, st.weight,
                 sum(r.turns for r in seqs), sum(r.mismatched for r in seqs),
                 self.judge.calls if self.judge is not None else 0]
        (kl, kl_tokens, loss, tokens, clipped, n_trained, gen_tokens, turns, finished, is_tokens, abs_diff,
         truncated, weight, sampled_turns, mismatched, judge_calls) = acc.reduce(
            torch.tensor(local, dtype=torch.float64, device=acc.device), "sum").tolist()
        rewards = acc.gather(torch.tensor([s.result.reward for s in samples], dtype=torch.float64,
                                          device=acc.device)).tolist()
        n = max(1, len(rewards))

        def per(total: float, count: float) -> float | None:
            return total / count if count else None

        return {"step": step + 1, **reward_summary(rewards, self.opts.group_size),
                "kl": per(kl, kl_tokens) if self.opts.kl_coef else None,
                "loss": loss / max(1.0, tokens), "clip_frac": clipped / max(1.0, tokens),
                "sampler_logp_diff": per(abs_diff, is_tokens), "is_weight": per(weight, is_tokens),
                "is_truncated": per(truncated, is_tokens), "token_mismatch": per(mismatched, sampled_turns),
                "grad_norm": stats.grad_norm / max(1, stats.passes), "trained_seqs": int(n_trained),
                "gen_tokens": int(gen_tokens), "gen_tok_s": gen_tokens / max(rollout_s, 1e-9),
                "turns": turns / n, "finished": finished / n,
                "judge_calls": int(judge_calls),
                "rollout_s": round(rollout_s, 3), "time_s": round(time.perf_counter() - t0, 3)}


def _annotate(s: Sample, step: int) -> Trajectory:
    """A trajectory with its RL context in `meta`, for samples.jsonl (read by people: the
    sampled ids are left out)."""
    for st in s.traj.steps:
        st.sampled_ids = st.sampled_logprobs = None
    s.traj.meta.update({"rl_step": step, "reward": s.result.reward, "reward_kind": s.result.kind,
                        "advantage": s.advantage, "prefix_len": s.start, "key_index": s.item.step_index})
    return s.traj
