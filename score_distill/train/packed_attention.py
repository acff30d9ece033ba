"""Attention for packed rows: each sequence of a row attends causally to itself alone, and no
(T, T) mask is ever built.

A packed row (`sft.packing`) holds several whole sequences end to end, its position ids
restarting at each one. transformers' `sdpa` attention handles that with a materialised
block-diagonal (T, T) mask, which sends every layer through the masked kernel: each key/value
head repeated for its query heads and all T x T pairs scored, most of them to be thrown away.
On CPU that made packing slower than padding (bench/sft_throughput.txt). This module gives
transformers a second attention, `PACKED_ATTENTION`: the causal SDPA kernel run on each
sequence's slice of the row (grouped key/value heads not repeated: `enable_gqa`), the slices
concatenated; and a mask function for it that builds nothing.

The boundaries come as `cu_seq_lens_q` / `cu_seq_lens_k` (cumulative sequence lengths, the
names transformers' flash-attention path reads and TRL's padding-free collator fills), or
else from the position ids the model passes down, which restart at each sequence; with
neither it is plain causal SDPA over the whole row.

    register_packed_attention()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=PACKED_ATTENTION)
    bounds = sequence_bounds(position_ids)  # (N + 1,), or None for rows of one sequence
    model(input_ids=row, position_ids=position_ids, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds)

What it does not do (it raises instead of computing something else): padding masks (pack the
rows, or keep `sdpa` for padded batches), a KV cache (it is for training: as many queries as
keys), sliding windows, logit soft-capping and bidirectional attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "score_packed"


def sequence_bounds(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Cumulative sequence lengths (N + 1,) of one packed row's (1, T) position ids: a new
    sequence starts wherever the position does not follow its predecessor. None when no row
    restarts (one sequence per row: plain causal attention is already right).

    >>> sequence_bounds(torch.tensor([[0, 1, 2, 0, 1, 0]]))
    tensor([0, 3, 5, 6], dtype=torch.int32)
    >>> sequence_bounds(torch.tensor([[0, 1, 2], [0, 1, 2]])) is None
    True
    """
    restarts = position_ids[:, 1:] != position_ids[:, :-1] + 1  # (B, T-1)
    if not bool(restarts.any()):
        return None
    if position_ids.shape[0] != 1:
        raise ValueError(f"packed sequences come flattened into one row (TRL's padding-free collator); "
                         f"got position ids of shape {tuple(position_ids.shape)} that restart within rows")
    starts = restarts[0].nonzero().flatten() + 1
    ends = torch.tensor([0, position_ids.shape[1]], device=starts.device)
    return torch.cat([ends[:1], starts, ends[1:]]).to(torch.int32)


def packed_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
                             position_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, T, D), key and value
    (B, H_kv, T, D) in, the output (B, T, H, D) and no attention weights out. Causal within
    each sequence of the row, nothing across sequences."""
    _refuse_unsupported(module, query, key, attention_mask, kwargs)
    if cu_seq_lens_q is None and position_ids is not None:
        cu_seq_lens_q = cu_seq_lens_k = sequence_bounds(position_ids)
    if cu_seq_lens_q is not cu_seq_lens_k and (
            cu_seq_lens_q is None or cu_seq_lens_k is None or not torch.equal(cu_seq_lens_q, cu_seq_lens_k)):
        raise ValueError("packed attention needs the same boundaries for queries and keys")

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True,
                                              enable_gqa=q.shape[1] != k.shape[1])

    if cu_seq_lens_q is None:
        out = attend(query, key, value)
    else:
        bounds = cu_seq_lens_q.tolist()  # one host copy per layer, of N + 1 numbers
        out = torch.cat([attend(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b])
                         for a, b in zip(bounds, bounds[1:])], dim=2)  # (B, H, T, D)
    return out.transpose(1, 2).contiguous(), None


def _refuse_unsupported(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                        attention_mask: torch.Tensor | None, kwargs: dict) -> None:
    """Raise on the inputs this attention would get wrong rather than compute something else."""
    if attention_mask is not None:
        raise ValueError(f"`{PACKED_ATTENTION}` attention takes no mask: pack the rows (no padding) or use sdpa")
    if query.shape[2] != key.shape[2]:
        raise ValueError(f"`{PACKED_ATTENTION}` attention is for training: {query.shape[2]} queries against "
                         f"{key.shape[2]} keys (a KV cache) is not supported")
    unsupported = [k for k in ("sliding_window", "softcap") if kwargs.get(k) is not None]
    causal = module.is_causal if kwargs.get("is_causal") is None else kwargs["is_causal"]
    if unsupported or not causal:
        raise ValueError(f"`{PACKED_ATTENTION}` attention is plain causal attention; this model asks for "
                         f"{unsupported or 'bidirectional attention'}")


def no_mask(batch_size: int, q_length: int, kv_length: int, attention_mask: torch.Tensor | None = None,
            **kwargs) -> None:
    """The mask function of `PACKED_ATTENTION` for transformers' `create_causal_mask`: builds
    nothing (the attention knows the boundaries). A padding mask is refused, as it would
    otherwise be dropped: without a mask function registered, `create_causal_mask` returns
    None for an unknown attention whatever the padding.

    >>> no_mask(1, 3, 3, torch.ones(1, 3, dtype=torch.bool)) is None
    True
    """
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError(f"`{PACKED_ATTENTION}` attention does not mask padding: pack the rows or use sdpa")
    return None


def register_packed_attention() -> str:
    """Make `PACKED_ATTENTION` known to transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, no_mask)
    return PACKED_ATTENTION
