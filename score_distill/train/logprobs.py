"""Token log-probabilities of a `batches.Batch` under a model, in float32, with their graph:
what the GRPO loss (`train.grpo`) differentiates. No I/O, no state.

Only the last `keep` positions are projected onto the vocabulary, and their float32 softmax
is materialised `LOGPROB_CHUNK` positions at a time (`_TargetLogprobs`). A batch with a
shared prefix (`Batch.prefix`) is scored on top of the prefix's keys and values; `PrefixPass`
runs that prefix once for the consecutive micro-batches of one group and sends their summed
gradient back through it: the same log-probs and gradient as scoring every row whole, with
the shared tokens computed once instead of G times.

    logp = token_logprobs(model, batch)          # (B, keep) log-probs of batch.targets
"""

from __future__ import annotations

import torch

from score_distill.train.batches import Batch, same_prefix


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


class PrefixPass:
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
    and each position's log-sum-exp are saved. With a 49k vocabulary and 1,500 kept positions,
    the plain float32 path held about 0.3 GB per copy, several copies at once. The forward
    writes no (B, c, V) log-softmax, only the log-sum-exp (logp = logit - lse), and the
    backward recomputes the softmax in place as exp(logit - lse); at temperature 1 nothing is
    divided (bench/rl_update.txt profiles it)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:  # noqa: ANN001
        out = torch.empty(logits.shape[:2], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for i in range(0, logits.shape[1], LOGPROB_CHUNK):
            part = logits[:, i : i + LOGPROB_CHUNK].float()
            if temperature != 1.0:
                part = part / temperature
            lse[:, i : i + LOGPROB_CHUNK] = torch.logsumexp(part, -1)
            out[:, i : i + LOGPROB_CHUNK] = part.gather(-1, targets[:, i : i + LOGPROB_CHUNK, None]).squeeze(-1) \
                - lse[:, i : i + LOGPROB_CHUNK]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        logits, targets, lse = ctx.saved_tensors
        t = ctx.temperature
        grad_logits = torch.empty_like(logits)
        for i in range(0, logits.shape[1], LOGPROB_CHUNK):
            g = grad[:, i : i + LOGPROB_CHUNK, None].float()  # (B, c, 1)
            # d log_softmax(l / t)[y] / d l = (onehot(y) - softmax(l / t)) / t, with
            # softmax(l / t) = exp(l / t - lse); computed in a float32 copy of the chunk.
            d = logits[:, i : i + LOGPROB_CHUNK].to(torch.float32, copy=True)
            if t != 1.0:
                d.div_(t)
            d.sub_(lse[:, i : i + LOGPROB_CHUNK, None]).exp_().mul_(-g)
            d.scatter_add_(-1, targets[:, i : i + LOGPROB_CHUNK, None], g)
            if t != 1.0:
                d.div_(t)
            grad_logits[:, i : i + LOGPROB_CHUNK] = d
        return grad_logits, None, None
