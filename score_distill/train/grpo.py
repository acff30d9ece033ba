"""The tensor maths of GRPO: the KL estimate, the importance weights that correct for the
sampler, the clipped policy-gradient loss, and the update that applies them to micro-batches
(`batches.micro_batches`) scored by `logprobs.token_logprobs`. Used by `train.rl`; no I/O,
no state.

    logp = token_logprobs(model, batch)
    loss, stats = clipped_loss(logp, old_logp, advantages, batch.loss_mask, clip_eps=0.2)

`reference_logprobs` measures the reference log-probs of a step's micro-batches (only with
a KL penalty); `update` runs the optimiser passes, taking the pre-update log-probs from its
own first forward pass, before any weight has moved, and from them the truncated importance
weights against the sampler's log-probs (`truncated_is_weights`). Micro-batches with a
shared prefix run it once per group (`logprobs.PrefixPass`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from score_distill.train.batches import Batch
from score_distill.train.diverged import NonFiniteUpdate
from score_distill.train.logprobs import PrefixPass, token_logprobs, token_logprobs_and_untempered


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) on tokens sampled from the policy:
    exp(r) - r - 1 with r = ref_logp - logp. Non-negative, zero where they agree.

    >>> kl_k3(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0])).tolist()[0]
    0.0
    >>> bool(kl_k3(torch.tensor([-2.0]), torch.tensor([-1.0])) > 0)
    True
    """
    r = ref_logp - logp
    return torch.exp(r) - r - 1.0


@dataclass
class ISStats:
    """Sums over the masked tokens that have a sampler log-prob (divide by `tokens`)."""

    tokens: float = 0.0
    abs_diff: float = 0.0  # |logp_trainer - logp_sampler|
    truncated: float = 0.0  # tokens whose weight hit the cap
    weight: float = 0.0

    def __iadd__(self, other: ISStats) -> ISStats:
        self.tokens += other.tokens
        self.abs_diff += other.abs_diff
        self.truncated += other.truncated
        self.weight += other.weight
        return self


def truncated_is_weights(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> tuple[torch.Tensor, ISStats]:
    """Truncated importance weights (TIS) per token: w = min(exp(old_logp - sampler_logp), cap),
    with `old_logp` the trainer's log-prob of the sampled token before the update and
    `sampler_logp` the one the sampling engine reported. The engine and the trainer compute
    the same distribution with different kernels (and, with vLLM, from their own copy of the
    weights), so the rollouts are slightly off-policy for the trainer; the weight corrects the
    policy gradient for it, and the cap bounds its variance. 1 where there is no sampler
    log-prob (and everywhere when `cap` is 0: no correction, the statistics still measured).

    Following the note "Your efficient RL framework secretly brings you off-policy RL
    training" (Yao, Liu et al., 2025, fengyao.notion.site) as verl applies it (token level,
    `algorithm.rollout_correction.rollout_is="token"`, `rollout_is_threshold` 2.0, weights
    detached and multiplied into the policy loss; verl 0.8.0.dev,
    `verl/trainer/ppo/rollout_corr_helper.py`) and TRL's
    `vllm_importance_sampling_correction` with `vllm_importance_sampling_mode="token_truncate"`
    (TRL 1.10.0.dev0, `trl/trainer/grpo_trainer.py`, its cap default 3.0).

    >>> w, st = truncated_is_weights(torch.tensor([[-1.0, -1.0, -1.0, -2.0]]),
    ...                              torch.tensor([[-1.0, -2.0, float("nan"), -1.0]]), torch.ones(1, 4), 2.0)
    >>> [round(x, 4) for x in w[0].tolist()], (st.tokens, st.abs_diff, st.truncated)
    ([1.0, 2.0, 1.0, 0.3679], (3.0, 2.0, 1.0))
    """
    have = (mask > 0) & ~torch.isnan(sampler_logp)
    diff = torch.where(have, old_logp - sampler_logp, torch.zeros_like(old_logp))
    if cap > 0:  # exp of the log ratio capped at log(cap): min(exp(d), cap) without overflow
        weights = torch.where(have, torch.exp(diff.clamp(max=math.log(cap))), torch.ones_like(diff))
        truncated = float((have & (diff > math.log(cap))).sum())
    else:
        weights, truncated = torch.ones_like(diff), 0.0
    stats = ISStats(tokens=float(have.sum()), abs_diff=float(diff.abs().sum()), truncated=truncated,
                    weight=float(weights[have].sum()))
    return weights.detach(), stats


@dataclass
class LossStats:
    """Sums over the tokens of one micro-batch (divide by `tokens` for means)."""

    tokens: float
    clipped: float


def clipped_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                 clip_eps: float, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0,
                 is_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, LossStats]:
    """The PPO-clipped GRPO objective, SUMMED over masked tokens (the caller divides by the
    step's token count, so micro-batches of any size weigh each token equally).

    Per token: -w * min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + kl_coef * k3, with
    ratio = exp(logp - old_logp), A the sequence's advantage and w the token's truncated
    importance weight against the sampler (`truncated_is_weights`; 1 without one; the KL term
    is not weighted, as in TRL). At the first pass over a batch the ratio is 1 and the
    gradient is the plain policy gradient -w * A * grad(logp).

    >>> lp = torch.zeros(1, 2, requires_grad=True)
    >>> loss, st = clipped_loss(lp, torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([[1.0, 0.0]]), 0.2)
    >>> loss.item(), st.tokens
    (-2.0, 1.0)
    >>> loss.backward(); lp.grad[0, 0].item(), lp.grad[0, 1].item() == 0
    (-2.0, True)
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]  # (B, 1) broadcast over tokens
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    per_token = -surrogate if is_weight is None else -surrogate * is_weight
    if ref_logp is not None and kl_coef:
        per_token = per_token + kl_coef * kl_k3(logp, ref_logp)
    loss = (per_token * mask).sum()
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip_eps).float()
        stats = LossStats(tokens=float(mask.sum()), clipped=float((clipped * mask).sum()))
    return loss, stats


@dataclass
class Scored:
    """A micro-batch ready for the update: inputs, advantages (B,), the reference's log-probs
    (B, keep) when a KL penalty needs them, and the policy's log-probs before the update and
    the importance weights (None until `update` fills them in at its first pass)."""

    batch: Batch
    advantages: torch.Tensor
    ref_logp: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    is_weight: torch.Tensor | None = None


@torch.no_grad()
def reference_logprobs(ref: torch.nn.Module, mbs: list[tuple[Batch, torch.Tensor]], device: torch.device,
                       temperature: float, bf16: bool) -> list[Scored]:
    """Every micro-batch on `device` with the reference model's log-probs, for the KL penalty.
    The policy's own log-probs, and so the KL, come from `update`'s first forward pass."""
    scored = []
    for batch, adv in mbs:
        b = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            ref_lp = token_logprobs(ref, b, temperature)
        scored.append(Scored(b, adv.to(device), ref_lp))
    return scored


@dataclass
class UpdateStats:
    """Sums over the update's passes (tokens counted once per pass)."""

    loss: float = 0.0
    tokens: float = 0.0
    clipped: float = 0.0
    grad_norm: float = 0.0
    passes: int = 0
    kl: float = 0.0  # summed k3 KL of the pre-update policy (first pass), and its token count
    kl_tokens: float = 0.0
    sampler: ISStats = field(default_factory=ISStats)  # the pre-update policy against the sampler


def update(model: torch.nn.Module, optimizer: Any, backward: Callable[[torch.Tensor], None],
           clip_grad: Callable[[float], torch.Tensor], scored: list[Scored], *, clip_eps: float,
           kl_coef: float, ppo_epochs: int, max_grad_norm: float, temperature: float, bf16: bool,
           is_cap: float = 0.0, total_tokens: float | None = None, processes: int = 1,
           no_sync: Callable[[], Any] | None = None) -> UpdateStats:
    """`ppo_epochs` optimiser steps over `scored`, each a pass over all its micro-batches
    with gradients accumulated and the loss normalised by the pass's token count.
    The first pass runs before any optimiser step, so its log-probs are the old policy's:
    they become `old_logp` (the ratio there is exactly 1), and their untempered values
    against the sampler's give the importance weights, capped at `is_cap`, of every pass.
    `backward` and `clip_grad` come from the accelerator (they handle DDP and scaling).

    On several processes: `total_tokens` is the step's loss-token count summed over all of
    them, `processes` their number, and every process passes the same number of micro-batches
    (`idle_batch` fills the gap). Each loss is scaled by processes / total_tokens, so the
    gradient DDP averages over the processes is the token mean over every process's tokens:
    the same update one process would make from the same sequences. `no_sync` (the
    accelerator's, bound to the model) skips the gradient all-reduce of every micro-batch but
    the last of a pass."""
    import contextlib

    stats = UpdateStats()
    n_tokens = sum(float(s.batch.loss_mask.sum()) for s in scored) if total_tokens is None else total_tokens
    if not scored or n_tokens == 0:  # the same on every process: total_tokens is global
        return stats
    if processes > 1 and any(s.batch.prefix is not None for s in scored):
        raise ValueError("micro-batches with a shared prefix need one process: DDP reduces the gradients in the "
                         "last micro-batch's backward, before the prefix pass has sent its own")
    for _ in range(ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        prefix = PrefixPass()
        for j, s in enumerate(scored):
            last = j == len(scored) - 1
            with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
                device_type = s.batch.input_ids.device.type
                kv = prefix.kv_for(model, s.batch, bf16)
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                    if s.old_logp is None:
                        logp, untempered = token_logprobs_and_untempered(model, s.batch, temperature, kv)
                    else:
                        logp = token_logprobs(model, s.batch, temperature, kv)
                if s.old_logp is None:
                    s.old_logp = logp.detach()
                    s.is_weight, st_is = truncated_is_weights(untempered, s.batch.sampler_logp, s.batch.loss_mask,
                                                              is_cap)
                    stats.sampler += st_is
                    if s.ref_logp is not None:
                        stats.kl += float((kl_k3(s.old_logp, s.ref_logp) * s.batch.loss_mask).sum())
                        stats.kl_tokens += float(s.batch.loss_mask.sum())
                loss, st = clipped_loss(logp, s.old_logp, s.advantages, s.batch.loss_mask, clip_eps,
                                        s.ref_logp, kl_coef, s.is_weight)
                backward(loss * (processes / n_tokens))
            stats.loss += float(loss.detach())
            stats.tokens += st.tokens
            stats.clipped += st.clipped
        prefix.flush()
        norm = float(clip_grad(max_grad_norm))
        if not math.isfinite(norm):  # the same on every process: the gradients are all-reduced
            raise NonFiniteUpdate(f"the update's gradient norm is {norm} (loss {stats.loss:.4g} over "
                                  f"{stats.tokens:.0f} tokens): the run stops before the optimiser step, so "
                                  "no checkpoint holds non-finite weights; a rerun resumes from the last one")
        stats.grad_norm += norm
        optimizer.step()
        stats.passes += 1
    return stats
