"""Choosing the next token, for the local engine.

`choose_tokens` picks one token per row (greedy at temperature 0, otherwise temperature +
top-p sampling with the row's own `torch.Generator`, so a row's samples do not depend on its
batch neighbours) and returns each chosen token's log-probability under the model's raw
distribution: `log_softmax(logits)` before temperature and top-p. That is the policy's own
probability, the one RL ratios need; sampling at T=0.6 does not change it.

    tokens, logprobs = choose_tokens(logits, 0.6, 0.95, generators)   # logits (B, V)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def choose_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of `logits` (B, V) and its log-probability under the untempered,
    unfiltered distribution. Returns `(tokens (B,), logprobs (B,))`.

    >>> lg = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    >>> tok, lp = choose_tokens(lg, 0.0, 1.0, [])
    >>> tok.tolist(), [round(x, 3) for x in lp.tolist()]
    ([1, 0], [-0.408, -0.095])
    """
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)  # (B, V)
    if temperature <= 0:
        tokens = logits.argmax(dim=-1)
    else:
        if len(generators) != logits.shape[0]:
            raise ValueError(f"{len(generators)} generators for {logits.shape[0]} rows")
        tokens = _sample(logits / temperature, top_p, generators)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def _sample(scaled: torch.Tensor, top_p: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches
    `top_p` (always at least the top one), renormalise, draw with each row's generator."""
    probs = torch.softmax(scaled, dim=-1)
    if top_p >= 1.0:  # no filtering: skip the sort over the vocabulary
        return torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]).squeeze(-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)  # (B, V)
    before = sorted_p.cumsum(-1) - sorted_p  # mass of the strictly more likely tokens
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    picks = [torch.multinomial(sorted_p[i], 1, generator=g) for i, g in enumerate(generators)]
    return order.gather(-1, torch.stack(picks)).squeeze(-1)


def seed_for(request_seed: int | None, params_seed: int | None, row: int, fallback: int) -> int:
    """The seed of a row's generator: the request's own seed, else the call's seed plus the
    row index, else a fallback drawn by the backend.

    >>> seed_for(7, 100, 3, 0), seed_for(None, 100, 3, 0), seed_for(None, None, 3, 42)
    (7, 103, 42)
    """
    if request_seed is not None:
        return request_seed
    if params_seed is not None:
        return params_seed + row
    return fallback
