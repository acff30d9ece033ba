"""Batching rendered RL sequences for scoring: left padding, and the prefix the samples of
one item share. Used by `train.grpo` and `train.logprobs`; no I/O, no state.

Sequences are LEFT-padded, so every row's generated tokens sit at the end of the batch and
the model only has to project the last `keep` positions onto the vocabulary
(`logits_to_keep`): a short-horizon rollout has a long prompt + prefix and a short generated
part, and the (B, T, V) logits of the prefix would be most of the memory.

The samples of one item share that prompt + prefix token for token. `micro_batches` with
`groups` takes it out of their rows (`Batch.prefix`), so that it can be run once per group
instead of once per row (`logprobs.PrefixPass`).

    batch = pad_left([ids_a, ids_b], [mask_a, mask_b], pad_id=0)
    batch.targets, batch.loss_mask               # (B, keep): the tokens scored, and which count
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


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


def same_prefix(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two micro-batches' prefixes are one (both given and equal): consecutive
    micro-batches of one group share its prefix pass."""
    return a is not None and b is not None and a.shape == b.shape and torch.equal(a, b)


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
