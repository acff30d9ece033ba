"""The one renderer that decides loss masks: a trajectory -> (token ids, loss mask).

The conversation is rendered with the model's own chat template, exactly as the rollout
prompts it (`agent.format.to_messages`). Mask 1 marks the tokens the student is trained to
produce: the content of each assistant turn written by the student or the teacher, plus the
template's end-of-turn tokens (so the model learns to stop). Everything else, system prompt,
question and observations, gets mask 0. Steps can be excluded from the loss (e.g. a prefix
the student did not write) with `train_on`.

How: for each assistant turn k, the text the template adds between "prompt up to turn k with
a generation header" and "conversation including turn k" is exactly what the model would
generate; those character spans are mapped onto tokens through the tokenizer's offsets.

RL trains on the token ids its engine sampled instead of this re-tokenisation where it has
them (`render_sampled`, token-in/token-out): the same masks, the sampled ids in the trained
turns, and a count of the turns where the two disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from score_distill.agent.format import SYSTEM_PROMPT, to_messages
from score_distill.models.base import prompt_ids
from score_distill.types import Step


def _template(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and, per assistant message, the (start, end) character span
    that the model generates for it (content + end-of-turn marker)."""
    full = _template(tokenizer, messages, generation_prompt=False)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _template(tokenizer, messages[:k], generation_prompt=True)
        upto = _template(tokenizer, messages[: k + 1], generation_prompt=False)
        if not full.startswith(upto) or not upto.startswith(before):
            raise ValueError("the chat template is not prefix-stable; cannot locate assistant turns")
        end = len(upto)
        # Keep trailing whitespace after the end-of-turn marker out of the loss: it belongs
        # to the next turn's header as far as generation is concerned.
        while end > len(before) and upto[end - 1] in "\n ":
            end -= 1
        spans.append((len(before), end))
    return full, spans


def render_trajectory(tokenizer: Any, question: str, steps: list[Step],
                      train_on: Callable[[int, Step], bool] | None = None,
                      system: str = SYSTEM_PROMPT) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) for a trajectory; `train_on(index, step)` selects the steps
    whose assistant tokens are trained (default: all)."""
    messages, text, spans = _rendered(tokenizer, question, steps, system)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    mask = [0] * len(ids)
    for i, (step, tokens) in enumerate(zip(steps, turn_tokens(enc["offset_mapping"], spans))):
        if train_on is None or train_on(i, step):
            for t in tokens:
                mask[t] = 1
    return ids, mask


def _rendered(tokenizer: Any, question: str, steps: list[Step],
              system: str) -> tuple[list[dict[str, str]], str, list[tuple[int, int]]]:
    """The messages of a trajectory as trained (the last observation is not needed: the
    trailing user turn is dropped), their rendered text and the assistant spans."""
    messages = to_messages(question, steps, system=system)
    if messages and messages[-1]["role"] == "user" and steps:
        messages = messages[:-1]
    text, spans = assistant_spans(tokenizer, messages)
    return messages, text, spans


def turn_tokens(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[list[int]]:
    """Per character span, the indices of the tokens that lie inside it (empty tokens aside).

    >>> turn_tokens([(0, 3), (3, 5), (5, 9), (9, 10)], [(3, 9)])
    [[1, 2]]
    """
    out: list[list[int]] = [[] for _ in spans]
    j = 0
    for t, (start, end) in enumerate(offsets):
        while j < len(spans) and start >= spans[j][1]:
            j += 1
        if j < len(spans) and start >= spans[j][0] and end <= spans[j][1] and end > start:
            out[j].append(t)
    return out


@dataclass
class SampledRender:
    """A trajectory as RL scores it: token ids, loss mask, and per token the sampler's
    log-probability (NaN where the sampler gave none: prompt, observations, steps not sampled,
    an end-of-turn marker the template added). `turns` counts the trained turns that carry
    sampled ids, `mismatched` those of them not scored exactly as sampled (see
    `render_sampled`)."""

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    sampler_logprobs: list[float] = field(default_factory=list)
    turns: int = 0
    mismatched: int = 0

    def add(self, ids: list[int], mask: int, logprobs: list[float] | None = None) -> None:
        self.ids += ids
        self.mask += [mask] * len(ids)
        self.sampler_logprobs += logprobs if logprobs is not None else [math.nan] * len(ids)

    def cut(self, max_length: int) -> SampledRender:
        """The first `max_length` tokens."""
        return SampledRender(self.ids[:max_length], self.mask[:max_length], self.sampler_logprobs[:max_length],
                             self.turns, self.mismatched)


def render_sampled(tokenizer: Any, question: str, steps: list[Step],
                   train_on: Callable[[int, Step], bool] | None = None,
                   system: str = SYSTEM_PROMPT) -> SampledRender:
    """Token-in/token-out: `render_trajectory`'s sequence with each trained step that carries
    `sampled_ids` scored on exactly those ids, so the trainer scores what the engine sampled.

    The parts that are not trained turns are the chat template's tokens, as
    `render_trajectory` has them (mask 0). A trained turn with sampled ids gets those ids
    (mask 1, with the sampler's log-probs), followed by the template's end-of-turn marker
    when the sampler stopped at a stop string and never sampled it (mask 1, as
    `render_trajectory` trains it, no sampler log-prob); a trained turn without them keeps
    the re-tokenised text. Where the sampled ids equal the re-tokenised text, the result is
    `render_trajectory`'s ids and mask exactly.

    The check, per trained turn with sampled ids: it is `mismatched` unless its ids equal the
    re-tokenised turn AND the tokens before it equal the prompt ids the engines fed for it
    (`models.base.prompt_ids`). A mismatch is still trained on the sampled ids, but the turns
    after it are then scored in a context that holds those ids where the sampler saw their
    re-tokenisation (so they count as mismatched too); the importance weights of
    `grpo.truncated_is_weights` carry that difference, capped."""
    messages, text, spans = _rendered(tokenizer, question, steps, system)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    at = [k for k, m in enumerate(messages) if m["role"] == "assistant"]  # the message of each step
    out, pos = SampledRender(), 0
    for i, (step, tokens) in enumerate(zip(steps, turn_tokens(offsets, spans))):
        if not tokens or not (train_on is None or train_on(i, step)):
            continue
        lo, hi = tokens[0], tokens[-1] + 1
        out.add(ids[pos:lo], 0)
        pos = hi
        if step.sampled_ids is None:
            out.add(ids[lo:hi], 1)
            continue
        end = _content_end(text, spans[i], messages[at[i]]["content"])
        n_content = sum(offsets[t][1] <= end for t in tokens)
        content, marker = ids[lo : lo + n_content], ids[lo + n_content : hi]
        sampled = list(step.sampled_ids)
        exact = sampled in (content, content + marker) and out.ids == prompt_ids(tokenizer, messages[: at[i]])
        out.turns += 1
        out.mismatched += not exact
        out.add(sampled, 1, list(step.sampled_logprobs) if step.sampled_logprobs is not None else None)
        if marker and sampled[-len(marker):] != marker:
            out.add(marker, 1)
    out.add(ids[pos:], 0)
    return out


def _content_end(text: str, span: tuple[int, int], content: str) -> int:
    """Where an assistant message's content ends inside its span (the end-of-turn marker
    follows). Templates write the content as given or trimmed."""
    for written in (content, content.strip()):
        k = text.find(written, span[0], span[1])
        if k >= 0:
            return k + len(written)
    raise ValueError("the chat template changes assistant content: its end-of-turn marker cannot be located")
