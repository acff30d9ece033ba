"""SCoRe-RL: short-horizon GRPO with the key-step reward, and its ablations and baseline.

Each step takes `items_per_step` key-step items. For each, `group_size` rollouts start at
the item's verified prefix (the rollout rebuilds the sandbox state by replaying the prefix's
code), the student writes the key step and goes on to the end within the turn budget
(prefix turns count). Rewards come from `train.rewards`, advantages are group-relative,
and the loss is the PPO-clipped objective on the tokens generated in this rollout only
(`render_trajectory` with `train_on` = steps at index >= len(prefix): not the prefix, not
the observations). The k3 estimate of KL(policy || reference) on the generated tokens is
measured and logged every step; its penalty (`kl_coef`) is off by default, as in the paper.

    from score_distill.train.rl import RLOptions, train_rl
    final = train_rl("runs/x/sft/final", items, tasks_by_id, teacher, ToolConfig(), "runs/x/rl",
                     RLOptions(steps=50))

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
interleave sandbox observations; they must be sampled by our engine (`LocalModel`, the one
rollout loop) and rendered by our one loss-mask renderer. TRL's hook is marked experimental,
wants prompt/completion token ids that we would have to re-derive from the renderer anyway,
and it only loads a reference model when the KL penalty is on, whereas we log the KL with
the penalty off. Ours is a few hundred lines, and `accelerate launch` runs it on several GPUs.

Design notes:
- Sampling uses the CURRENT weights: the engine is built around the very module being
  trained (`engine.model` is the policy), and its KV caches are cleared after every update.
- Default temperature 1.0, top-p 1.0: GRPO needs diverse groups, and then the sampling
  distribution is the policy itself, so ratios and the KL are exact. With another
  temperature the log-probs are taken from logits / T (top-p is not modelled).
- Old log-probs are recomputed by a forward pass on the rendered sequence before the update,
  not taken from the sampler: the renderer re-tokenises text, and the end-of-turn token that
  the renderer adds after a stop string was not sampled.
- The policy stays in eval mode (no dropout), so the first pass has ratio exactly 1.
- Loss = sum of per-token losses / tokens of the sequences trained this step (token-level
  mean, so long rollouts are not down-weighted per token). Groups whose rewards are all
  equal have zero advantage; on one process they are skipped (no compute), on several all
  sequences run so every process does the same number of backward passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from tqdm import tqdm

from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.config import option, save_config
from score_distill.devices import training_device
from score_distill.memory import release_memory
from score_distill.precision import Bf16, resolve_bf16
from score_distill.teachers.base import Teacher
from score_distill.tools.config import ToolConfig
from score_distill.train.rl_dir import RLDir, save_checkpoint
from score_distill.train.rl_items import items_for_step, select_pool
from score_distill.train.render import render_trajectory
from score_distill.train.rewards import (KeyStepJudge, RewardResult, group_advantages, reward_summary,
                                         rollout_reward)
from score_distill.types import KeyStepItem, Task, Trajectory, write_jsonl

if TYPE_CHECKING:  # grpo imports torch; this module stays light for the command line
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
    activation_checkpointing: bool = option(False, "recompute each layer's activations in the backward pass: "
                                                   "memory for one layer instead of all, for more compute")
    lr: float = option(2e-5, "AdamW learning rate, constant (docs/method.md: the paper's, for a 7B student)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient norm clip")
    clip_eps: float = option(0.2, "PPO ratio clip")
    kl_coef: float = option(0.0, "weight of the k3 KL penalty to the starting checkpoint (KL is logged either way)")
    keep_reference: bool = option(False, "hold the reference model in memory between steps; False: it is read "
                                         "from disk for each step's scoring and freed before the update, "
                                         "whose gradients then have its memory")
    kl_on_all: bool = option(True, "measure the logged KL on every rollout; False: only on those that carry a "
                                   "gradient, which saves a policy and a reference forward pass on the others")
    scale_advantages: bool = option(True, "divide advantages by the group's reward std")
    max_length: int = option(4096, "rendered sequences are cut to this many tokens")
    outcome_only_share: float = option(0.25, "share of the items WITHOUT an intervention that join the "
                                             "RL pool (from the question, outcome reward only)")
    use_key_step: bool = option(True, "the key-step reward (rewards.key_step_reward); False = ablation: outcome reward only")
    short_horizon: bool = option(True, "False = ablation: rollouts from the question instead of the prefix")
    bf16: Bf16 = option("auto", "bf16 autocast for rollouts and loss; auto: where the hardware computes bf16 "
                                "natively (precision.py). Sampling and scoring then differ by bf16 rounding")
    cpu_threads: int = option(0, "torch CPU threads; 0 = every core this process may use")
    save_every: int = option(25, "checkpoint every N steps (0 = only at the end)")
    samples_per_step: int = option(2, "trajectories per step written to samples.jsonl for reading")
    rollout: RolloutConfig = dataclasses.field(default_factory=rl_rollout_config, metadata={
        "help": "the RL rollouts: sampling (T=1.0, top-p 1.0: the samples are the policy's, ratios exact), "
                "token and turn budget, early stops; its seed also orders the items"})


def total_steps(opts: RLOptions, n_pool: int) -> int:
    """`opts.steps`, or enough steps for `opts.epochs` passes over the pool.

    >>> total_steps(RLOptions(epochs=2.0, items_per_step=4), 10)
    5
    """
    return opts.steps or max(1, math.ceil(opts.epochs * n_pool / opts.items_per_step))


@dataclass
class Sample:
    """One rollout of a step: its item, trajectory, first trained step index and reward."""

    item: KeyStepItem
    question: str
    traj: Trajectory
    start: int
    result: RewardResult
    advantage: float = 0.0


def collect(engine: Any, items: list[KeyStepItem], tasks_by_id: dict[str, Task], tools: ToolConfig,
            judge: KeyStepJudge | None, opts: RLOptions, step: int) -> list[Sample]:
    """Run `group_size` rollouts per item (consecutive samples form a group), score them and
    set their advantages. Sample indices are unique within the step, so no two live
    trajectories share a cache key, and the stage names the step, so every step draws new
    samples."""
    episodes = []
    for slot, item in enumerate(items):
        prefix = list(item.prefix) if opts.short_horizon else []
        episodes += [Episode(tasks_by_id[item.task_id], prefix=prefix, sample=slot * opts.group_size + k)
                     for k in range(opts.group_size)]
    config = dataclasses.replace(opts.rollout, stage=f"{opts.rollout.stage}-{step}")  # new samples every step
    trajs = rollout(engine, episodes, tools, config)
    samples = []
    for ep, traj in zip(episodes, trajs):
        item = items[ep.sample // opts.group_size]
        result = rollout_reward(traj, item, ep.task, judge, opts.use_key_step, key_index=len(item.prefix))
        samples.append(Sample(item, ep.task.question, traj, len(ep.prefix), result))
    advantages = group_advantages([s.result.reward for s in samples], opts.group_size, opts.scale_advantages)
    for s, a in zip(samples, advantages):
        s.advantage = a
    return samples


def render_samples(tokenizer: Any, samples: list[Sample], max_length: int) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) per sample with the loss on the steps generated in this rollout only."""
    out = []
    for s in samples:
        ids, mask = render_trajectory(tokenizer, s.question, s.traj.steps, train_on=lambda i, _, k=s.start: i >= k)
        out.append((ids[:max_length], mask[:max_length]))
    return out


def format_line(r: dict[str, Any], total: int) -> str:
    """The one readable log line of a step.

    >>> format_line({"step": 3, "reward": 0.41, "r1.0": 0.25, "r0.5": 0.125, "r0.1": 0.0, "r0": 0.625,
    ...              "signal": 0.75, "kl": 0.0012, "loss": -0.013, "gen_tok_s": 1234.0, "time_s": 12.3}, 50)
    'step 3/50 | reward 0.410 (1:25% .5:12% .1:0% 0:62%) | signal 75% | kl 0.0012 | loss -0.0130 | tok/s 1.2e+03 | 12.3s'
    """
    return (f"step {r['step']}/{total} | reward {r['reward']:.3f} (1:{r['r1.0']:.0%} .5:{r['r0.5']:.0%} "
            f".1:{r['r0.1']:.0%} 0:{r['r0']:.0%}) | signal {r['signal']:.0%} | kl {r['kl']:.4f} | "
            f"loss {r['loss']:.4f} | tok/s {r['gen_tok_s']:.2g} | {r['time_s']:.1f}s")


def train_rl(model_dir: str | Path, items: list[KeyStepItem], tasks_by_id: dict[str, Task],
             teacher: Teacher | None, tools: ToolConfig, out_dir: str | Path, opts: RLOptions,
             device: str = "auto") -> Path:
    """Train the model in `model_dir` with GRPO on `items` on `device` (devices.py); returns
    `<out_dir>/final`.

    Writes `rl_config.yaml`, `rl_log.jsonl` (one record per step), `samples.jsonl` (a few
    scored trajectories per step) and checkpoints; resumes from the latest checkpoint (and
    trims the log to it) when rerun, and returns at once when `final` exists. `teacher` judges
    key-step equivalence; it may be None when no item has an intervention or the key-step
    reward is off."""
    import torch
    from accelerate import Accelerator

    from score_distill.models.local import LocalConfig, LocalModel

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
    total = total_steps(opts, len(pool))
    resume = files.latest_checkpoint()
    start, start_dir = resume if resume is not None else (0, Path(model_dir))
    # The engine owns the policy: generation always runs on the weights being trained.
    engine = LocalModel(start_dir, LocalConfig(device=str(accelerator.device), autocast_bf16=opts.bf16, seed=opts.rollout.seed,
                                             num_threads=opts.cpu_threads))
    if opts.activation_checkpointing:  # takes effect in train mode; sampling switches to eval itself
        engine.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        engine.model.train()
    reference = _Reference(model_dir, torch.bfloat16 if opts.bf16 else torch.float32, accelerator.device,
                           opts.keep_reference)
    # The fused step updates each tensor in place: the default (foreach) step builds
    # temporaries the size of all the weights, on top of the states' 2 copies.
    optimizer = torch.optim.AdamW(engine.model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay,
                                  fused=accelerator.device.type in ("cpu", "cuda"))
    if resume is not None:
        optimizer.load_state_dict(torch.load(start_dir / "optimizer.pt", weights_only=True))
    model, optimizer = accelerator.prepare(engine.model, optimizer)
    judge = KeyStepJudge(teacher) if teacher is not None else None
    if accelerator.is_main_process:
        files.out.mkdir(parents=True, exist_ok=True)
        save_config(opts, files.out / "rl_config.yaml")
        files.trim(start)
        log.info("RL: %d items in the pool (%d with an intervention), %d steps, from %s", len(pool),
                 sum(i.chosen is not None for i in pool), total, start_dir)
    trainer = _Trainer(engine, model, reference, optimizer, accelerator, pool, tasks_by_id, tools, judge, opts)
    bar = tqdm(total=total, initial=start, desc="rl", unit="step", disable=not accelerator.is_main_process)
    for step in range(start, total):
        record = trainer.step(step)
        if accelerator.is_main_process:
            files.append_log(record)
            write_jsonl(files.samples_path, trainer.last_samples, append=True)
            log.info(format_line(record, total))
            bar.update(1)
        if opts.save_every and (step + 1) % opts.save_every == 0 and step + 1 < total:
            save_checkpoint(files, accelerator, model, engine.tokenizer, optimizer, step + 1)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files.save(files.final, accelerator.unwrap_model(model), engine.tokenizer)
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


class _Reference:
    """The starting checkpoint, which gives the reference log-probs (for the logged KL and
    the optional penalty). It is only needed while a step's rollouts are scored, before the
    update, so by default it is read from disk for that and freed before the backward pass,
    which is the step's memory peak: the policy's gradients take its place. `keep` holds it
    in memory instead (no load per step). Under bf16 autocast it is held in bf16, since its
    matmuls run in bf16 there anyway (its log-probs then differ from the policy's at the start
    by the rounding of the weights: a logged KL of ~1e-7, not 0)."""

    def __init__(self, model_dir: str | Path, dtype: Any, device: Any, keep: bool) -> None:
        self.model_dir, self.dtype, self.device = model_dir, dtype, device
        self._model = self._load() if keep else None

    def _load(self) -> Any:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one bar per step would flood the log
        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        return model.to(self.device).eval().requires_grad_(False)

    @contextlib.contextmanager
    def loaded(self) -> Iterator[Any]:
        if self._model is not None:
            yield self._model
            return
        model = self._load()
        try:
            yield model
        finally:
            del model
            release_memory()


class _Trainer:
    """What one training step needs, so `step` reads as the algorithm."""

    def __init__(self, engine: Any, model: Any, ref: _Reference, optimizer: Any, accelerator: Any,
                 pool: list[KeyStepItem], tasks_by_id: dict[str, Task], tools: ToolConfig,
                 judge: KeyStepJudge | None, opts: RLOptions) -> None:
        self.engine, self.model, self.ref, self.optimizer = engine, model, ref, optimizer
        self.acc, self.pool, self.tasks_by_id, self.tools, self.judge, self.opts = (
            accelerator, pool, tasks_by_id, tools, judge, opts)
        tok = engine.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.last_samples: list[Trajectory] = []

    def step(self, step: int) -> dict[str, Any]:
        """Roll out, score, update; returns the step's log record (reduced over processes)."""
        from score_distill.train.grpo import micro_batches, reference_logprobs, update

        opts, acc = self.opts, self.acc
        t0 = time.perf_counter()
        mine = items_for_step(len(self.pool), step, opts.items_per_step, opts.rollout.seed)
        items = [self.pool[i] for i in mine[acc.process_index :: acc.num_processes]]
        samples = collect(self.engine, items, self.tasks_by_id, self.tools, self.judge, opts, step)
        rollout_s = time.perf_counter() - t0
        self.engine.training_layout()  # the decoding layout is for sampling only
        seqs = render_samples(self.engine.tokenizer, samples, opts.max_length)
        alone = acc.num_processes == 1
        usable = [i for i, (_, m) in enumerate(seqs) if 1 in m]
        trained = [i for i in usable if samples[i].advantage != 0 or opts.kl_coef or not alone]
        others = [i for i in usable if i not in trained]

        def mbs(idx: list[int]) -> list:
            return micro_batches([seqs[i] for i in idx], [samples[i].advantage for i in idx],
                                 opts.micro_batch_size, self.pad_id) if idx else []

        train_mbs = mbs(trained)
        measured = mbs(others) if opts.kl_on_all else []
        release_memory()  # the rollout's KV caches, before the reference is read
        with self.ref.loaded() as ref:
            scored, kl, kl_tokens = reference_logprobs(self.model, ref, train_mbs + measured, acc.device,
                                                       opts.rollout.temperature, opts.bf16, trained=len(train_mbs))
            del ref  # else this frame keeps it alive through the update
        stats = update(self.model, self.optimizer, acc.backward,
                       lambda n: acc.clip_grad_norm_(self.model.parameters(), n), scored[: len(train_mbs)],
                       clip_eps=opts.clip_eps, kl_coef=opts.kl_coef, ppo_epochs=opts.ppo_epochs,
                       max_grad_norm=opts.max_grad_norm, temperature=opts.rollout.temperature, bf16=opts.bf16)
        # The rollout already released each trajectory's cache as it ended; clearing here
        # guarantees that no key/value computed by the old weights survives the update.
        self.engine.clear_cache()
        release_memory()
        self.last_samples = [_annotate(s, step + 1) for s in samples[: opts.samples_per_step]]
        return self._record(step, samples, len(trained), kl + stats.kl, kl_tokens + stats.kl_tokens, stats,
                            rollout_s, t0)

    def _record(self, step: int, samples: list[Sample], n_trained: int, kl: float, kl_tokens: float,
                stats: UpdateStats, rollout_s: float, t0: float) -> dict[str, Any]:
        """The step's log record, with sums and rewards taken over every process."""
        import torch

        acc = self.acc
        local = [kl, kl_tokens, stats.loss, stats.tokens, stats.clipped, n_trained,
                 sum(s.traj.generated_tokens for s in samples), sum(s.traj.n_turns - s.start for s in samples),
                 sum(s.traj.finished for s in samples)]
        (kl, kl_tokens, loss, tokens, clipped, n_trained, gen_tokens, turns, finished) = acc.reduce(
            torch.tensor(local, dtype=torch.float64, device=acc.device), "sum").tolist()
        rewards = acc.gather(torch.tensor([s.result.reward for s in samples], dtype=torch.float64,
                                          device=acc.device)).tolist()
        n = max(1, len(rewards))
        return {"step": step + 1, **reward_summary(rewards, self.opts.group_size),
                "kl": kl / max(1.0, kl_tokens), "loss": loss / max(1.0, tokens), "clip_frac": clipped / max(1.0, tokens),
                "grad_norm": stats.grad_norm / max(1, stats.passes), "trained_seqs": int(n_trained),
                "gen_tokens": int(gen_tokens), "gen_tok_s": gen_tokens / max(rollout_s, 1e-9),
                "turns": turns / n, "finished": finished / n,
                "judge_calls": self.judge.calls if self.judge is not None else 0,
                "rollout_s": round(rollout_s, 3), "time_s": round(time.perf_counter() - t0, 3)}


def _annotate(s: Sample, step: int) -> Trajectory:
    """A trajectory with its RL context in `meta`, for samples.jsonl."""
    s.traj.meta.update({"rl_step": step, "reward": s.result.reward, "reward_kind": s.result.kind,
                        "advantage": s.advantage, "prefix_len": s.start, "key_index": s.item.step_index})
    return s.traj
