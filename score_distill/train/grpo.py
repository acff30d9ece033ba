"""The tensor maths of GRPO: batching rendered sequences, token log-probabilities, the KL
estimate, the importance weights that correct for the sampler, and the clipped
policy-gradient loss. Used by `train.rl`; no I/O, no state.

Sequences are LEFT-padded, so every row's generated tokens sit at the end of the batch and
the model only has to project the last `keep` positions onto the vocabulary
(`logits_to_keep`): a short-horizon rollout has a long prompt + prefix and a short generated
part, and the (B, T, V) logits of the prefix would be most of the memory.

The samples of one item share that prompt + prefix token for token. `micro_batches` with
`groups` takes it out of their rows (`Batch.prefix`), and `update` runs it once per group
and each micro-batch on top of its keys and values (`_PrefixPass`): the same log-probs and
gradient as scoring every row whole, with the shared tokens computed once instead of G times.

    batch = pad_left([ids_a, ids_b], [mask_a, mask_b], pad_id=0)
    logp = token_logprobs(model, batch)          # (B, keep) log-probs of batch.targets
    loss, stats = clipped_loss(logp, old_logp, advantages, batch.loss_mask, clip_eps=0.2)

`reference_logprobs` measures the reference log-probs of a step's micro-batches (only with
a KL penalty); `update` runs the optimiser passes, taking the pre-update log-probs from its
own first forward pass, before any weight has moved, and from them the truncated importance
weights against the sampler's log-probs (`truncated_is_weights`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from score_distill.train.diverged import NonFiniteUpdate


@dataclass
class Batch:
    """Left-padded sequences. `input_ids`/`attention_mask`/`position_ids` are (B, T);
    `targets`, `loss_mask` and `sampler_logp` are (B, keep): the last `keep` tokens of each
    row, whether each is a generated token the loss applies to, and its log-probability as the
    sampling engine reported it (NaN where there is none)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    sampler_logp: torch.Tensor
    prefix: torch.Tensor | None = None  # (1, P) ids every row starts with; the tensors above then hold the rest

    @property
    def keep(self) -> int:
        return self.targets.shape[1]

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                              self.targets, self.loss_mask, self.sampler_logp)),
                     prefix=None if self.prefix is None else self.prefix.to(device))


def pad_left(ids: list[list[int]], masks: list[list[int]], pad_id: int,
             sampler_logps: list[list[float]] | None = None) -> Batch:
    """Left-pad sequences (and, aligned with them, the sampler's log-probs) into a `Batch`;
    `keep` covers every row's first masked token.

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
    sampler = torch.full((len(ids), width), math.nan, dtype=torch.float32)
    for r, (row, m) in enumerate(zip(ids, masks)):
        input_ids[r, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention[r, width - len(row) :] = 1
        loss_mask[r, width - len(row) :] = torch.tensor(m, dtype=torch.float32)
        if sampler_logps is not None:
            if len(sampler_logps[r]) != len(row):
                raise ValueError("sampler log-probs must be aligned with the ids")
            sampler[r, width - len(row) :] = torch.tensor(sampler_logps[r], dtype=torch.float32)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids, attention, positions, input_ids[:, -keep:], loss_mask[:, -keep:], sampler[:, -keep:])


def shared_prefix_len(ids: list[list[int]], masks: list[list[int]]) -> int:
    """How many leading tokens the rows share and can score once: their common prefix, ending
    at least one token before any row's first masked token (whose log-prob the token before it
    predicts), so every scored position lies after it.

    >>> shared_prefix_len([[1, 2, 3, 4, 5], [1, 2, 3, 9]], [[0, 0, 0, 1, 1], [0, 0, 0, 1]])
    2
    >>> shared_prefix_len([[1, 2, 3], [7, 2, 3]], [[0, 1, 1], [0, 1, 1]])
    0
    """
    n = min(len(i) for i in ids)
    common = next((t for t in range(n) if any(i[t] != ids[0][t] for i in ids)), n)
    firsts = [m.index(1) for m in masks if 1 in m]
    return max(0, min([common, *(f - 1 for f in firsts)]))


def pad_left_shared(ids: list[list[int]], masks: list[list[int]], pad_id: int,
                    sampler_logps: list[list[float]] | None, prefix: torch.Tensor) -> Batch:
    """`pad_left` of what follows `prefix` (1, P), the ids every row starts with: a Batch whose
    rows are the rest of each sequence, at positions P onwards, to be scored on top of the
    prefix's keys and values (`token_logprobs`). P must end before every row's first masked
    token (`shared_prefix_len`).

    >>> b = pad_left_shared([[5, 6, 7, 8], [5, 6, 9]], [[0, 0, 1, 1], [0, 0, 1]], 0, None, torch.tensor([[5]]))
    >>> b.prefix.tolist(), b.input_ids.tolist(), b.position_ids.tolist()
    ([[5]], [[6, 7, 8], [0, 6, 9]], [[1, 2, 3], [1, 1, 2]])
    >>> b.targets.tolist(), b.loss_mask.int().tolist()
    ([[7, 8], [6, 9]], [[1, 1], [0, 1]])
    """
    shared = prefix.shape[1]
    if any(row[:shared] != prefix[0].tolist() for row in ids):
        raise ValueError("every row must start with the prefix")
    rest = pad_left([i[shared:] for i in ids], [m[shared:] for m in masks], pad_id,
                    None if sampler_logps is None else [s[shared:] for s in sampler_logps])
    return dataclasses.replace(rest, position_ids=rest.position_ids + shared, prefix=prefix)


PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, (1, heads, P, head_dim) each


def token_logprobs(model: torch.nn.Module, batch: Batch, temperature: float = 1.0,
                   kv: PrefixKV | None = None) -> torch.Tensor:
    """Log-probabilities (B, keep) of `batch.targets` under `model`, computed in float32.
    Logits are divided by `temperature` so the probabilities are those of the sampling
    distribution (with top-p 1) the rollouts were drawn from. A batch with a shared prefix is
    scored on top of `kv`, its keys and values (`prefix_kv`; computed here when not given)."""
    return _TargetLogprobs.apply(_logits(model, batch, kv), batch.targets, temperature)


def token_logprobs_and_untempered(model: torch.nn.Module, batch: Batch, temperature: float,
                                  kv: PrefixKV | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` (with its graph) and, detached, the same tokens' log-probs at
    temperature 1: what the engines report (`Generation.logprobs`), so what the sampler's
    log-probs are compared with. One forward pass; the second softmax only where T != 1."""
    logits = _logits(model, batch, kv)
    logp = _TargetLogprobs.apply(logits, batch.targets, temperature)
    if temperature == 1.0:
        return logp, logp.detach()
    with torch.no_grad():
        return logp, _TargetLogprobs.apply(logits.detach(), batch.targets, 1.0)


def prefix_kv(model: torch.nn.Module, prefix: torch.Tensor) -> PrefixKV:
    """Every layer's keys and values for `prefix` (1, P), with their graph: the pass that a
    group of samples continuing one prompt shares (the decoder alone: no logits needed)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model.get_decoder()(input_ids=prefix, cache=cache, use_cache=True)
    if cache.get_seq_length() != prefix.shape[1]:
        raise RuntimeError("the model kept no keys/values for the shared prefix (activation checkpointing turns the "
                           "cache off): score such batches without a shared prefix")
    return [(layer.keys, layer.values) for layer in cache.layers]


def _logits(model: torch.nn.Module, batch: Batch, kv: PrefixKV | None = None) -> torch.Tensor:
    """(B, keep, V) logits; position t predicts token t + 1. With a shared prefix the rows
    attend to its keys and values as if each row held its own copy, so backpropagation
    carries every row's share of the gradient into them."""
    if batch.prefix is None:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, logits_to_keep=batch.keep + 1, use_cache=False)
        return out.logits[:, :-1]
    from transformers import DynamicCache

    kv = prefix_kv(model, batch.prefix) if kv is None else kv
    rows = batch.input_ids.shape[0]
    cache = DynamicCache(config=model.config)
    for layer, (k, v) in enumerate(kv):
        cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), layer)
    seen = batch.attention_mask.new_ones(rows, batch.prefix.shape[1])
    out = model(input_ids=batch.input_ids, attention_mask=torch.cat([seen, batch.attention_mask], 1),
                position_ids=batch.position_ids, cache=cache, use_cache=True, logits_to_keep=batch.keep + 1)
    return out.logits[:, :-1]


def same_prefix(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two micro-batches' prefixes are one (both given and equal): consecutive
    micro-batches of one group share its prefix pass."""
    return a is not None and b is not None and a.shape == b.shape and torch.equal(a, b)


class _PrefixPass:
    """The one pass over a shared prefix that consecutive micro-batches with the same
    `Batch.prefix` run on. Its keys and values keep their graph; the micro-batches attend to
    detached copies of them, so each micro-batch's backward stops at the copies and leaves its
    share of their gradient there; `flush` sends the sum through the prefix pass in one
    backward. The parameters get every row's gradient, as from separate passes, while only the
    prefix's activations and one micro-batch's are held at a time."""

    def __init__(self) -> None:
        self.prefix: torch.Tensor | None = None
        self.kv: PrefixKV = []
        self.copies: PrefixKV = []

    def kv_for(self, model: torch.nn.Module, batch: Batch, bf16: bool) -> PrefixKV | None:
        if batch.prefix is None:
            return None
        if not same_prefix(self.prefix, batch.prefix):
            self.flush()
            with torch.autocast(batch.prefix.device.type, dtype=torch.bfloat16, enabled=bf16):
                self.kv = prefix_kv(model, batch.prefix)
            self.copies = [(k.detach().requires_grad_(), v.detach().requires_grad_()) for k, v in self.kv]
            self.prefix = batch.prefix
        return self.copies

    def flush(self) -> None:
        pairs = [(t, c.grad) for kv, copy in zip(self.kv, self.copies) for t, c in zip(kv, copy) if c.grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        self.prefix, self.kv, self.copies = None, [], []


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


def micro_batches(seqs: list[tuple[list[int], list[int]]], advantages: list[float], size: int,
                  pad_id: int, sampler_logps: list[list[float]] | None = None,
                  groups: list[list[int]] | None = None) -> list[tuple[Batch, torch.Tensor]]:
    """Sequences (with the sampler's log-probs, aligned, when given) sorted by length (less
    padding) and cut into micro-batches of `size`. With `groups` (lists of indices into
    `seqs`, e.g. the samples of one item), micro-batches are cut within each group, and the
    tokens the group's sequences share (`shared_prefix_len`) become the `prefix` of each of
    its micro-batches, which `update` runs once for all of them.

    >>> mbs = micro_batches([([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1])], [0.5, -0.5], 1, 0)
    >>> [b.input_ids.tolist() for b, _ in mbs], [a.tolist() for _, a in mbs]
    ([[[4, 5]], [[1, 2, 3]]], [[-0.5], [0.5]])
    >>> mbs = micro_batches([([1, 2, 3, 5], [0, 0, 1, 1]), ([1, 2, 4], [0, 0, 1]), ([7, 8], [0, 1])],
    ...                     [0.5, -0.5, 1.0], 1, 0, groups=[[0, 1], [2]])
    >>> [(None if b.prefix is None else b.prefix.tolist(), b.input_ids.tolist(), a.tolist()) for b, a in mbs]
    [([[1]], [[2, 4]], [-0.5]), ([[1]], [[2, 3, 5]], [0.5]), (None, [[7, 8]], [1.0])]
    """
    out = []
    for group in [list(range(len(seqs)))] if groups is None else groups:
        order = sorted(group, key=lambda i: len(seqs[i][0]))
        shared = 0
        if groups is not None and len(group) > 1:
            shared = shared_prefix_len([seqs[i][0] for i in group], [seqs[i][1] for i in group])
        prefix = torch.tensor([seqs[group[0]][0][:shared]], dtype=torch.long) if shared else None
        for lo in range(0, len(order), size):
            chunk = order[lo : lo + size]
            ids, masks = [seqs[i][0] for i in chunk], [seqs[i][1] for i in chunk]
            logps = None if sampler_logps is None else [sampler_logps[i] for i in chunk]
            batch = pad_left(ids, masks, pad_id, logps) if prefix is None else (
                pad_left_shared(ids, masks, pad_id, logps, prefix))
            out.append((batch, torch.tensor([advantages[i] for i in chunk], dtype=torch.float32)))
    return out


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


def idle_batch(like: Batch | None, pad_id: int) -> Batch:
    """A micro-batch that weighs nothing: `like` with its loss mask zeroed (or, with no batch
    to copy, two pad tokens). A process with less work than the others runs these, so that
    every process makes the same number of forward/backward passes (each backward pass of a
    DDP model is a collective: a process that skips one leaves the others waiting forever).

    >>> b = idle_batch(None, pad_id=0)
    >>> b.input_ids.tolist(), float(b.loss_mask.sum())
    ([[0, 0]], 0.0)
    """
    if like is not None:
        return Batch(like.input_ids, like.attention_mask, like.position_ids, like.targets,
                     torch.zeros_like(like.loss_mask), torch.full_like(like.sampler_logp, math.nan), like.prefix)
    ids = torch.full((1, 2), pad_id, dtype=torch.long)
    return Batch(ids, torch.ones_like(ids), torch.tensor([[0, 1]]), ids[:, -1:], torch.zeros((1, 1)),
                 torch.full((1, 1), math.nan))


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
        prefix = _PrefixPass()
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
