"""A scripted `ChatModel`: a Python function plays the model.

Used by tests (drive the rollout through parse errors, timeouts, the turn budget) and handy
for checking a task file or a tool set-up without any model. Token ids are one per
whitespace-separated word, so accounting is checkable by hand; given a `tokenizer`, they are
that tokenizer's ids of the text instead (an engine that sampled exactly those tokens, each
with log-probability 0), which RL's token-in/token-out renderer can use.

    >>> m = ScriptedModel(lambda messages: "<first_thought>plan</first_thought>")
    >>> m.generate([GenRequest([{"role": "user", "content": "q"}])], SamplingParams())[0].text
    '<first_thought>plan</first_thought>'
"""

from __future__ import annotations

from typing import Any, Callable

from score_distill.models.base import BatchedStream, Generation, GenRequest, SamplingParams


class ScriptedModel:
    """`policy(messages) -> text` for each request; records every call's batch size."""

    name = "scripted"

    def __init__(self, policy: Callable[[list[dict[str, str]]], str], tokenizer: Any = None):
        self.policy = policy
        self.tokenizer = tokenizer
        self.batch_sizes: list[int] = []
        self.released: list[str] = []

    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Generation]:
        self.batch_sizes.append(len(requests))
        out = []
        for r in requests:
            text = self.policy(r.messages)
            n_prompt = sum(len(m["content"].split()) for m in r.messages)
            ids = list(range(len(text.split()))) if self.tokenizer is None else \
                self.tokenizer.encode(text, add_special_tokens=False)
            out.append(Generation(text=text, token_ids=ids, logprobs=[0.0] * len(ids), prompt_tokens=n_prompt))
        return out

    def open_stream(self, params: SamplingParams, max_rows: int) -> BatchedStream:
        return BatchedStream(self, params, max_rows)

    def release(self, cache_key: str) -> None:
        self.released.append(cache_key)
