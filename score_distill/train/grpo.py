"""The tensor maths of GRPO: batching rendered sequences, token log-probabilities, the KL
estimate and the clipped policy-gradient loss. Used by `train.rl`; no I/O, no state.

Sequences are LEFT-padded, so every row's generated tokens sit at the end of the batch and
the model only has to project the last `keep` positions onto the vocabulary
(`logits_to_keep`): a short-horizon rollout has a long prompt + prefix and a short generated
part, and the (B, T, V) logits of the prefix would be most of the memory.

    batch = pad_left([ids_a, ids_b], [mask_a, mask_b], pad_id=0)
    logp = token_logprobs(model, batch)          # (B, keep) log-probs of batch.targets
    loss, stats = clipped_loss(logp, old_logp, advantages, batch.loss_mask, clip_eps=0.2)

`reference_logprobs` measures the reference log-probs of a step's micro-batches (and, for
those that are only measured, the policy's and the KL); `update` runs the optimiser passes, taking the
pre-update log-probs from its own first forward pass, before any weight has moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Batch:
    """Left-padded sequences. `input_ids`/`attention_mask`/`position_ids` are (B, T);
    `targets` and `loss_mask` are (B, keep): the last `keep` tokens of each row and whether
    each is a generated token the loss applies to."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor

    @property
    def keep(self) -> int:
        return self.targets.shape[1]

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                              self.targets, self.loss_mask)))


def pad_left(ids: list[list[int]], masks: list[list[int]], pad_id: int) -> Batch:
    """Left-pad sequences into a `Batch`; `keep` covers every row's first masked token.

    >>> b = pad_left([[5, 6, 7, 8], [9, 10]], [[0, 0, 1, 1], [0, 1]], pad_id=0)
    >>> b.input_ids.tolist(), b.position_ids.tolist()
    ([[5, 6, 7, 8], [0, 0, 9, 10]], [[0, 1, 2, 3], [0, 0, 0, 1]])
    >>> b.targets.tolist(), b.loss_mask.int().tolist()
    ([[7, 8], [9, 10]], [[1, 1], [0, 1]])
    """
    if len(ids) != len(masks) or any(len(i) != len(m) for i, m in zip(ids, masks)):
        raise ValueError("ids and masks must have the same shapes")
    width = max(len(i) for i in ids)
    # The first target is predicted from the token before it, so a row's first masked token
    # must not be its very first token.
    firsts = [m.index(1) for m in masks if 1 in m]
    if not firsts or min(firsts) == 0:
        raise ValueError("every batch needs a masked token that has at least one token before it")
    keep = max(len(m) - f for m, f in zip((m for m in masks if 1 in m), firsts))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(ids), width), dtype=torch.long)
    loss_mask = torch.zeros((len(ids), width), dtype=torch.float32)
    for r, (row, m) in enumerate(zip(ids, masks)):
        input_ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention[r, width - len(row) :] = 1
        loss_mask[r, width - len(row) :] = torch.tensor(m, dtype=torch.float32)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attention, positions, input_ids[:, -keep:], loss_mask[:, -keep:])


def token_logprobs(model: torch.nn.Module, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities (B, keep) of `batch.targets` under `model`, computed in float32.
    Logits are divided by `temperature` so the probabilities are those of the sampling
    distribution (with top-p 1) the rollouts were drawn from."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, logits_to_keep=batch.keep + 1, use_cache=False)
    logits = out.logits[:, :-1]  # (B, keep, V): position t predicts token t + 1
    del out
    return _TargetLogprobs.apply(logits, batch.targets, temperature)


LOGPROB_CHUNK = 128  # positions whose float32 softmax is materialised at once


class _TargetLogprobs(torch.autograd.Function):
    """`log_softmax(logits / temperature)` at `targets`, (B, K) float32, from (B, K, V)
    logits of any dtype, without ever holding a float32 (B, K, V) tensor: the softmax is
    computed `LOGPROB_CHUNK` positions at a time, forward and backward, and only the logits
    are saved. With a 49k vocabulary and 1,500 kept positions, the plain float32 path held
    about 0.3 GB per copy, several copies at once."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:  # noqa: ANN001
        out = torch.empty(logits.shape[:2], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[1], LOGPROB_CHUNK):
            part = logits[:, i : i + LOGPROB_CHUNK].float() / temperature
            out[:, i : i + LOGPROB_CHUNK] = torch.log_softmax(part, -1).gather(
                -1, targets[:, i : i + LOGPROB_CHUNK, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        logits, targets = ctx.saved_tensors
        t = ctx.temperature
        grad_logits = torch.empty_like(logits)
        for i in range(0, logits.shape[1], LOGPROB_CHUNK):
            g = grad[:, i : i + LOGPROB_CHUNK, None].float()  # (B, c, 1)
            # d log_softmax(l / t)[y] / d l = (onehot(y) - softmax(l / t)) / t
            d = torch.softmax(logits[:, i : i + LOGPROB_CHUNK].float() / t, -1).mul_(-g)
            d.scatter_add_(-1, targets[:, i : i + LOGPROB_CHUNK, None], g)
            grad_logits[:, i : i + LOGPROB_CHUNK] = (d / t).to(logits.dtype)
        return grad_logits, None, None


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
class LossStats:
    """Sums over the tokens of one micro-batch (divide by `tokens` for means)."""

    tokens: float
    clipped: float


def clipped_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                 clip_eps: float, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0,
                 ) -> tuple[torch.Tensor, LossStats]:
    """The PPO-clipped GRPO objective, SUMMED over masked tokens (the caller divides by the
    step's token count, so micro-batches of any size weigh each token equally).

    Per token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + kl_coef * k3, with
    ratio = exp(logp - old_logp) and A the sequence's advantage. At the first pass over a
    batch the ratio is 1 and the gradient is the plain policy gradient -A * grad(logp).

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
    per_token = -surrogate
    if ref_logp is not None and kl_coef:
        per_token = per_token + kl_coef * kl_k3(logp, ref_logp)
    loss = (per_token * mask).sum()
    with torch.no_grad():
        clipped = ((ratio - 1.0).abs() > clip_eps).float()
        stats = LossStats(tokens=float(mask.sum()), clipped=float((clipped * mask).sum()))
    return loss, stats


@dataclass
class Scored:
    """A micro-batch ready for the update: inputs, advantages (B,), and the log-probs (B, keep)
    of the reference and of the policy before the update (None until measured: `update`
    fills it in at its first pass)."""

    batch: Batch
    advantages: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor


def micro_batches(seqs: list[tuple[list[int], list[int]]], advantages: list[float], size: int,
                  pad_id: int) -> list[tuple[Batch, torch.Tensor]]:
    """Sequences sorted by length (less padding) and cut into micro-batches of `size`.

    >>> mbs = micro_batches([([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1])], [0.5, -0.5], 1, 0)
    >>> [b.input_ids.tolist() for b, _ in mbs], [a.tolist() for _, a in mbs]
    ([[[4, 5]], [[1, 2, 3]]], [[-0.5], [0.5]])
    """
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out = []
    for lo in range(0, len(order), size):
        chunk = order[lo : lo + size]
        batch = pad_left([seqs[i][0] for i in chunk], [seqs[i][1] for i in chunk], pad_id)
        out.append((batch, torch.tensor([advantages[i] for i in chunk], dtype=torch.float32)))
    return out


@torch.no_grad()
def reference_logprobs(policy: torch.nn.Module, ref: torch.nn.Module, mbs: list[tuple[Batch, torch.Tensor]],
                       device: torch.device, temperature: float, bf16: bool, trained: int = 0,
                       ) -> tuple[list[Scored], float, float]:
    """Reference log-probs of every micro-batch. The first `trained` micro-batches go to
    `update`, whose first forward pass gives their pre-update log-probs and KL, so the policy
    is not run on them here (a forward pass saved per step); the others are only measured:
    the policy's log-probs and their summed k3 KL and token count are returned."""
    scored, kl, tokens = [], 0.0, 0.0
    for k, (batch, adv) in enumerate(mbs):
        b = batch.to(device)
        old = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            ref_lp = token_logprobs(ref, b, temperature)
            if k >= trained:
                old = token_logprobs(policy, b, temperature)
        if old is not None:
            kl += float((kl_k3(old, ref_lp) * b.loss_mask).sum())
            tokens += float(b.loss_mask.sum())
        scored.append(Scored(b, adv.to(device), old, ref_lp))
    return scored, kl, tokens


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


def update(model: torch.nn.Module, optimizer: Any, backward: Callable[[torch.Tensor], None],
           clip_grad: Callable[[float], torch.Tensor], scored: list[Scored], *, clip_eps: float,
           kl_coef: float, ppo_epochs: int, max_grad_norm: float, temperature: float, bf16: bool,
           ) -> UpdateStats:
    """`ppo_epochs` optimiser steps over `scored`, each a pass over all its micro-batches
    with gradients accumulated and the loss normalised by the pass's token count.
    The first pass runs before any optimiser step, so its log-probs are the old policy's:
    they become `old_logp` where it is missing (the ratio there is exactly 1).
    `backward` and `clip_grad` come from the accelerator (they handle DDP and scaling)."""
    stats = UpdateStats()
    n_tokens = sum(float(s.batch.loss_mask.sum()) for s in scored)
    if not scored or n_tokens == 0:
        return stats
    for _ in range(ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        for s in scored:
            device_type = s.batch.input_ids.device.type
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                logp = token_logprobs(model, s.batch, temperature)
            if s.old_logp is None:
                s.old_logp = logp.detach()
                stats.kl += float((kl_k3(s.old_logp, s.ref_logp) * s.batch.loss_mask).sum())
                stats.kl_tokens += float(s.batch.loss_mask.sum())
            loss, st = clipped_loss(logp, s.old_logp, s.advantages, s.batch.loss_mask, clip_eps,
                                    s.ref_logp, kl_coef)
            backward(loss / n_tokens)
            stats.loss += float(loss.detach())
            stats.tokens += st.tokens
            stats.clipped += st.clipped
        stats.grad_norm += float(clip_grad(max_grad_norm))
        optimizer.step()
        stats.passes += 1
    return stats
