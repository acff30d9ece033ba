"""The model interface: generate the next assistant turn for a batch of conversations.

Every backend (local transformers model, OpenAI-compatible endpoint, later vLLM) implements
`ChatModel.generate`. A request carries the chat messages so far and, optionally, a
`cache_key` naming the trajectory: a backend that can reuse work across turns (a KV cache
kept per trajectory, or a server's prefix cache) uses it, and `release(key)` drops it when
the trajectory ends. Results keep the generated token ids and their log-probabilities so
that RL can compute ratios without re-tokenising text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from score_distill.agent.format import STOP_STRINGS


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn. temperature 0 means greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = STOP_STRINGS
    seed: int | None = None


@dataclass
class GenRequest:
    """One conversation to continue. `seed` (if set) makes this row's sampling reproducible
    independently of which other rows share the batch."""

    messages: list[dict[str, str]]
    cache_key: str | None = None
    seed: int | None = None


@dataclass
class Generation:
    """One generated assistant turn.

    `text` ends with the stop string when one was hit (finish_reason "stop"); "eos" means the
    model ended its message; "length" means max_new_tokens ran out. `prompt_tokens` counts
    the prompt tokens actually processed for this call (cached ones excluded), and
    `cached_tokens` those reused.
    """

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    time_s: float = 0.0


class ModelError(RuntimeError):
    """The backend failed for a reason that is not the model's output (network, server, our
    bug). Raised after the backend's own retries are exhausted."""


class ChatModel(Protocol):
    name: str

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        """Continue each conversation with one assistant turn, in order."""
        ...

    def release(self, cache_key: str) -> None:
        """Forget any cached state for this trajectory (no-op where nothing is cached)."""
        ...
