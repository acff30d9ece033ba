"""The model interface: generate the next assistant turn for a batch of conversations.

Every backend (the local transformers engine, an OpenAI-compatible endpoint) implements
`ChatModel.generate`. A request carries the chat messages so far and, optionally, a
`cache_key` naming the trajectory: a backend that can reuse work across turns (a KV cache
kept per trajectory, or a server's prefix cache) uses it, and `release(key)` drops it when
the trajectory ends. Results carry the generated token ids and their log-probabilities
where the backend reports them (see `Generation`); RL trains on them.

`open_stream` serves turns as they become ready instead of in lockstep: the rollout adds a
trajectory's next request as soon as its tool call returns, and `step()` hands back the
turns that finished. A backend that can let rows join a running batch (the local engine)
keeps it full that way; any other backend gets `BatchedStream`, which sends whatever is
waiting through `generate` in one call.

    stream = model.open_stream(params, max_rows=48)
    stream.add("t1", request)
    while stream.busy:
        for tag, generation in stream.step(): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol

@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn. temperature 0 means greedy; `stop` strings end a turn (the
    rollout loop passes the agent format's; an engine knows no format of its own)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
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

    `token_ids` and `logprobs` (the sampled tokens and their log-probabilities under the
    untempered distribution, `log_softmax(logits)`) are left empty by a backend that has
    none. The rollout counts `token_ids` (its token accounting) and, for RL, keeps both on the
    step: the trainer scores exactly the sampled ids (`train/render.py`, `render_sampled`) and
    corrects for the sampler's log-probs differing from its own (`train/grpo.py`).
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
    bug). Raised after the backend's own retries are exhausted. `status` is the HTTP status
    of the last reply when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ChatModel(Protocol):
    name: str

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        """Continue each conversation with one assistant turn, in order."""
        ...

    def release(self, cache_key: str) -> None:
        """Forget any cached state for this trajectory (no-op where nothing is cached)."""
        ...

    def open_stream(self, params: SamplingParams, max_rows: int) -> TurnStream:
        """A stream of turns sampled with `params`, at most `max_rows` generated together."""
        ...


class PolicySampler(ChatModel, Protocol):
    """A backend that samples RL's rollouts from the policy being trained (the local engine,
    vLLM in this process). The trainer calls `pause_sampling` when a step's rollouts are
    done and before it scores and updates, and `sync_weights(model)` after every optimiser
    step, so the next samples come from the new weights."""

    tokenizer: Any

    def pause_sampling(self) -> None:
        """Sampling is over until the next update: give back what only sampling needs."""
        ...

    def sync_weights(self, model: Any) -> None:
        """The optimiser changed `model` (a torch module): sample from its weights from now on,
        with no cached keys/values computed by the old ones."""
        ...


class TurnStream(Protocol):
    """Turns requested one by one and returned as they finish (see the module docstring)."""

    continuous: bool  # whether requests added while rows generate join them at the next step

    @property
    def busy(self) -> bool:
        """Whether any added request has not been returned yet."""
        ...

    def add(self, tag: Hashable, request: GenRequest) -> None:
        """Queue a request; `step` returns its generation under `tag`."""
        ...

    def step(self) -> list[tuple[Hashable, Generation]]:
        """Make progress; return the turns that finished (possibly none)."""
        ...


class BatchedStream:
    """A `TurnStream` for backends that only have `generate`: each `step` sends every waiting
    request in one call and returns all of them."""

    continuous = False

    def __init__(self, model: ChatModel, params: SamplingParams, max_rows: int) -> None:
        self.model, self.params, self.max_rows = model, params, max_rows
        self._waiting: list[tuple[Hashable, GenRequest]] = []

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    def add(self, tag: Hashable, request: GenRequest) -> None:
        self._waiting.append((tag, request))

    def step(self) -> list[tuple[Hashable, Generation]]:
        batch, self._waiting = self._waiting[: self.max_rows], self._waiting[self.max_rows :]
        gens = self.model.generate([r for _, r in batch], self.params)
        if len(gens) != len(batch):
            raise RuntimeError(f"{self.model.name} returned {len(gens)} generations for {len(batch)} requests")
        return [(tag, g) for (tag, _), g in zip(batch, gens)]


def chat_tokenizer(path: object, tokenizer: object = None) -> object:
    """The tokenizer of the model directory `path` (or `tokenizer`, already loaded), checked
    to have a chat template: every local engine renders prompts with it."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{path}: the tokenizer has no chat template")
    return tokenizer


def prompt_ids(tokenizer: object, messages: list[dict[str, str]]) -> list[int]:
    """A conversation's prompt token ids under the tokenizer's chat template, the generation
    prompt added: what the local engines (ours and vLLM) feed the model, so both see the
    same tokens."""
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))  # type: ignore[attr-defined]
