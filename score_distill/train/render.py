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
"""

from __future__ import annotations

from typing import Any, Callable

from score_distill.agent.format import SYSTEM_PROMPT, to_messages
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
    messages = to_messages(question, steps, system=system)
    # The last observation is not needed for training: drop the trailing user turn.
    if messages and messages[-1]["role"] == "user" and steps:
        messages = messages[:-1]
    text, spans = assistant_spans(tokenizer, messages)
    keep = [train_on is None or train_on(i, s) for i, s in enumerate(steps)]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    mask = [0] * len(ids)
    j = 0
    active = [span for span, k in zip(spans, keep) if k]
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        while j < len(active) and start >= active[j][1]:
            j += 1
        if j < len(active) and start >= active[j][0] and end <= active[j][1] and end > start:
            mask[t] = 1
    return ids, mask
