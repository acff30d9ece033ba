"""A lean decoding step for Llama-family models: one token per row, a dozen large ops a layer.

A decoding step of the local engine feeds one new token per row through the model. Through
the transformers modules that costs far more than its matmuls on a CPU: per layer three
projection calls where one would do, the mask rebuilt as a 4D tensor, keys and values
repeated for grouped-query attention, and many small elementwise ops, each with its own
dispatch. `LeanDecoder` runs the same maths with the model's own tensors:

- q, k and v in one matmul and gate and up in another, over fused copies of the weights
  made once per decoding phase (`LocalModel.decoding_layout`) in the dtype the matmuls run
  in (bf16 under autocast: the cast is done once, not once per step);
- queries and keys rotated in one call, from one view of the fused projection;
- grouped-query attention without repeating keys/values: a token's query heads that share a
  key/value head are that head's query rows (`(B, kv_heads, group, dim)`), scored by two
  batched matmuls over contiguous copies of the keys and values (`attention`: faster here
  than the CPU's fused attention kernel for one query token), the padding mask an additive
  `(B, 1, 1, T)` bias made once per step, not once per layer;
- rows of very different widths (a search trajectory of 1,300 tokens beside math ones of
  500) attend in separate groups, each over its own columns (`width_groups`), not all over
  the widest row's.

The residual stream stays in the embedding's dtype, as it does under autocast (fp32 weights,
bf16 matmuls). The prompt prefill keeps the transformers forward (its cost is in its
matmuls). Supported: `llama`, `qwen2` and `mistral` model types with SiLU MLPs and no
sliding window in use (`lean_unsupported` says why a model is not); anything else decodes
through transformers, unchanged.

    lean = LeanDecoder(model, compute_dtype=torch.bfloat16)
    logits = lean.step(input_ids, positions, mask, batch_layers)   # (B, V) float32
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED = ("llama", "qwen2", "mistral")


def lean_unsupported(model: torch.nn.Module) -> str | None:
    """Why `model` cannot decode through `LeanDecoder`, or None when it can."""
    cfg = model.config.get_text_config(decoder=True)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED:
        return f"model type {kind!r} (lean decoding knows {', '.join(SUPPORTED)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r}"
    window = getattr(cfg, "sliding_window", None)
    if (kind == "qwen2" and getattr(cfg, "use_sliding_window", False)) or (kind == "mistral" and window):
        return "a sliding attention window"
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(base, "rotary_emb"):
        return "a module layout other than model.layers / model.rotary_emb"
    return None


@dataclass
class _Layer:
    norm_in: torch.Tensor
    eps_in: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    norm_post: torch.Tensor
    eps_post: float
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


def _weight(t: torch.Tensor, dtype: torch.dtype, column_major: bool) -> torch.Tensor:
    t = t.detach().to(dtype)
    return t.t().contiguous().t() if column_major else t.contiguous()


def _cat(parts: list[torch.Tensor | None], dtype: torch.dtype, column_major: bool = False) -> torch.Tensor | None:
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):  # one projection with a bias, another without
        raise ValueError("fused projections must all have a bias or none")
    return _weight(torch.cat([p.detach() for p in parts]), dtype, column_major)  # type: ignore[misc]


def _opt(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.detach().to(dtype)


def rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm: normalised in fp32, cast back, then scaled by the weight."""
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One query token's attention over the cached keys/values, grouped-query style.

    `q` (B, kv_heads, group, D), already scaled; `keys`/`values` (B, kv_heads, T, D), views
    of the batch's buffer; `bias` (B, 1, 1, T) float32, -inf where a row has no token. The
    scores come out of a matmul in the KV dtype (so bf16-rounded in bf16), then the bias and
    softmax are applied in float32, and the weighted sum is taken in the KV dtype.

    The keys and values are copied to contiguous tensors first: a view of the preallocated
    buffer (its capacity wider than the used columns) sends a bf16 batched matmul on the
    CPU through a path about 3-4x slower than the copy plus the contiguous matmul (measured
    on SmolLM2-135M's shapes, 16-48 rows x 500-1,300 columns), and the CPU's fused SDPA kernel
    was slower still for a single query token (`bench/decode_speed.txt`).

    >>> q, kv = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 5, 4)
    >>> bias = torch.zeros(2, 1, 1, 5)
    >>> ref = F.scaled_dot_product_attention(q, kv, kv, scale=1.0)
    >>> bool(torch.allclose(attention(q, kv, kv, bias), ref, atol=1e-6))
    True
    """
    keys, values = keys.contiguous(), values.contiguous()
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() + bias  # (B, kv_heads, group, T)
    return torch.matmul(torch.softmax(scores, dim=-1).to(values.dtype), values)


# What a group of rows costs beyond its keys and values, in row-columns (one row's key and
# value at one position): its own dozen small ops per layer cost about what copying and
# scoring ~750 row-columns does here (SmolLM2-135M, bf16, 2 cores).
GROUP_COST = 1024


def width_groups(starts: list[int], width: int, group_cost: int = GROUP_COST) -> list[tuple[list[int], int]]:
    """Rows to attend together, each group with the first column it reads. Every row of a
    group reads from the group's first column to `width`; a group costs its rows x its
    columns plus `group_cost`. Rows sorted by their first real column (`starts`) are cut into
    the runs of least total cost (a dynamic programme over the cut points, rows <= a few
    dozen). Search rows 1,300 tokens wide then attend apart from math rows 500 wide, instead
    of every row over the widest row's width, and rows of nearly equal width stay together.

    >>> width_groups([0, 800, 790, 5, 3], 1300)
    [([0, 4, 3], 0), ([2, 1], 790)]
    >>> width_groups([0, 800, 790, 5], 1300, group_cost=10_000)
    [([0, 3, 2, 1], 0)]
    """
    order = sorted(range(len(starts)), key=lambda r: starts[r])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: least cost of the first j rows in order
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * (width - starts[order[i]]) + group_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        i = cut[j]
        groups.append((order[i:j], starts[order[i]]))
        j = i
    return groups[::-1]


@dataclass
class _Group:
    rows: torch.Tensor | None  # (n,) row indices; None: every row, in order
    lo: int  # the first key column the group reads
    bias: torch.Tensor  # (n, 1, 1, T - lo)


def _groups(mask: torch.Tensor, bias: torch.Tensor) -> list[_Group]:
    """The attention groups of a step (`width_groups` over each row's first real column)."""
    starts = (mask != 0).int().argmax(-1).tolist()
    found = width_groups(starts, mask.shape[1])
    if len(found) == 1:
        lo = found[0][1]
        return [_Group(None, lo, bias[..., lo:])]
    out = []
    for rows, lo in found:
        index = torch.tensor(rows, device=mask.device)
        out.append(_Group(index, lo, bias.index_select(0, index)[..., lo:]))
    return out


def attend_groups(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, groups: list[_Group]) -> torch.Tensor:
    """`attention` of every row, each group over its own columns only; (B, kv_heads, group, D)."""
    if groups[0].rows is None:  # one group of every row (`_groups`): no gather, no scatter
        g = groups[0]
        return attention(q, keys[:, :, g.lo :], values[:, :, g.lo :], g.bias)
    out = q.new_empty(q.shape, dtype=values.dtype)
    for g in groups:
        assert g.rows is not None
        k = keys[:, :, g.lo :].index_select(0, g.rows)  # contiguous copies of the group's window only
        v = values[:, :, g.lo :].index_select(0, g.rows)
        out.index_copy_(0, g.rows, attention(q.index_select(0, g.rows), k, v, g.bias))
    return out


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding with the halves convention of Llama (`rotate_half`)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LeanDecoder:
    """The decoding step of a supported model (see the module docstring), over fused copies
    of its weights taken when it is built: build a new one after the weights change."""

    def __init__(self, model: torch.nn.Module, compute_dtype: torch.dtype, column_major: bool = False) -> None:
        reason = lean_unsupported(model)
        if reason is not None:
            raise ValueError(f"lean decoding does not support {reason}")
        cfg = model.config.get_text_config(decoder=True)
        base = model.model
        self.dtype = compute_dtype
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.embed = base.embed_tokens
        self.rotary = base.rotary_emb
        cm = column_major
        self.layers = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                norm_in=layer.input_layernorm.weight.detach(), eps_in=layer.input_layernorm.variance_epsilon,
                qkv=_cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], compute_dtype, cm),  # type: ignore[arg-type]
                qkv_bias=_cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], compute_dtype),
                o=_weight(a.o_proj.weight, compute_dtype, cm), o_bias=_opt(a.o_proj.bias, compute_dtype),
                norm_post=layer.post_attention_layernorm.weight.detach(),
                eps_post=layer.post_attention_layernorm.variance_epsilon,
                gate_up=_cat([m.gate_proj.weight, m.up_proj.weight], compute_dtype, cm),  # type: ignore[arg-type]
                gate_up_bias=_cat([m.gate_proj.bias, m.up_proj.bias], compute_dtype),
                down=_weight(m.down_proj.weight, compute_dtype, cm), down_bias=_opt(m.down_proj.bias, compute_dtype)))
        self.norm, self.eps = base.norm.weight.detach(), base.norm.variance_epsilon
        head = model.get_output_embeddings()
        self.lm_head = _weight(head.weight, compute_dtype, cm)
        self.lm_bias = _opt(getattr(head, "bias", None), compute_dtype)
        self.q_width, self.kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim

    def step(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
             cache_layers: list) -> torch.Tensor:
        """One token per row: `input_ids` and `positions` (B, 1), `mask` (B, T) over the
        cached columns plus this one (1 on real tokens), `cache_layers` the batch's per-layer
        caches (`update(k, v)` appends and returns the full keys/values). Returns the next
        token's logits (B, V) in float32."""
        b = input_ids.shape[0]
        cd, group = self.dtype, self.heads // self.kv_heads
        h = self.embed(input_ids)[:, 0]  # (B, H), the residual stream's dtype; 2D: 3D inputs take slower matmuls
        cos, sin = self.rotary(h, positions)  # (B, 1, D), in h's dtype: fp32 under autocast, as there
        qk_width = self.q_width + self.kv_width  # queries and keys: rotated together, (B, heads + kv_heads, D)
        bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        bias = bias.masked_fill_(mask == 0, float("-inf"))[:, None, None, :]  # (B, 1, 1, T): padding never attended
        groups = _groups(mask, bias)  # rows of similar widths, each group over its own columns
        for layer, cache in zip(self.layers, cache_layers):
            x = rms_norm(h, layer.norm_in, layer.eps_in).to(cd)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias)
            qk = rotate(qkv[:, :qk_width].view(b, self.heads + self.kv_heads, self.head_dim), cos, sin)
            q = qk[:, : self.heads].view(b, self.kv_heads, group, self.head_dim)  # query head i reads kv head i // group
            k = qk[:, self.heads :].view(b, self.kv_heads, 1, self.head_dim)
            v = qkv[:, qk_width:].view(b, self.kv_heads, 1, self.head_dim)
            keys, values = cache.update(k, v)  # the buffer casts to its dtype
            out = attend_groups(q.to(keys.dtype) * self.scale, keys, values, groups)
            h = h + F.linear(out.reshape(b, self.q_width), layer.o, layer.o_bias)
            x = rms_norm(h, layer.norm_post, layer.eps_post).to(cd)
            gate, up = F.linear(x, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            h = h + F.linear(F.silu(gate) * up, layer.down, layer.down_bias)
        x = rms_norm(h, self.norm, self.eps).to(cd)
        return F.linear(x, self.lm_head, self.lm_bias).float()
