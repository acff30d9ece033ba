"""Token-in/token-out: RL scores the token ids its engine sampled. Where they equal the
re-tokenised text, the sequence and masks are `render_trajectory`'s exactly; where they do
not, the turn is trained on the sampled ids and the mismatch is counted, never silent."""

from __future__ import annotations

import dataclasses
import math

import pytest
from transformers import AutoTokenizer

from score_distill.agent.format import render_step
from score_distill.models.builtin import builtin_path
from score_distill.train.render import render_sampled, render_trajectory
from score_distill.types import Step

QUESTION = "What is 6 times 7?"
STEPS = [
    Step(kind="plan", thought="multiply then answer", author="teacher"),
    Step(kind="action", thought="compute", code="x = 6 * 7\nprint(x)", observation="42"),
    Step(kind="action", thought="done", code="final_answer(x)", observation="(no output)"),
]
GENERATED = lambda i, _: i >= 1  # noqa: E731  (the plan is a prefix the student did not write)


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(builtin_path("tiny"))


def runs(ids, mask):
    """Maximal runs of masked positions, as (start, end)."""
    out, start = [], None
    for t, m in enumerate(mask + [0]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            out.append((start, t))
            start = None
    return out


def sampled_as_rendered(tok, with_end: bool) -> list[Step]:
    """The steps with the ids `render_trajectory` gives their turns as the sampled ids: the
    content only (the sampler stopped at a stop string) or with the end-of-turn token (it
    sampled the end of its message), each with log-prob -(position + 1)."""
    ids, mask = render_trajectory(tok, QUESTION, STEPS, train_on=GENERATED)
    out = list(STEPS)
    for i, (a, b) in zip((1, 2), runs(ids, mask)):
        turn = ids[a:b] if with_end else ids[a : b - 1]
        out[i] = dataclasses.replace(STEPS[i], sampled_ids=turn, sampled_logprobs=[-(k + 1.0) for k in range(len(turn))])
    return out


@pytest.mark.parametrize("with_end", [False, True])
def test_sampled_ids_that_agree_give_the_rendered_sequence_and_masks(tok, with_end):
    steps = sampled_as_rendered(tok, with_end)
    want_ids, want_mask = render_trajectory(tok, QUESTION, STEPS, train_on=GENERATED)
    got = render_sampled(tok, QUESTION, steps, train_on=GENERATED)
    assert (got.ids, got.mask) == (want_ids, want_mask)
    assert (got.turns, got.mismatched) == (2, 0)
    # The sampler's log-probs sit on the sampled tokens; the end-of-turn token the template
    # added after a stop string has none (it was not sampled), a sampled one has its own.
    for step, (a, b) in zip(steps[1:], runs(got.ids, got.mask)):
        assert got.sampler_logprobs[a : a + len(step.sampled_ids)] == step.sampled_logprobs
        assert math.isnan(got.sampler_logprobs[b - 1]) is (not with_end)
    assert all(math.isnan(lp) for lp, m in zip(got.sampler_logprobs, got.mask) if not m)


def char_ids(tok, text: str) -> list[int]:
    """`text` tokenised one character at a time: decodes to the same text, but is not the
    tokenizer's own tokenisation of it."""
    return [t for ch in text for t in tok.encode(ch, add_special_tokens=False)]


def test_sampled_ids_that_differ_are_trained_on_and_counted(tok):
    text = render_step(STEPS[1])
    split = char_ids(tok, text)
    assert split != tok.encode(text, add_special_tokens=False)  # the BPE merges some characters
    steps = list(STEPS)
    steps[1] = dataclasses.replace(STEPS[1], sampled_ids=split, sampled_logprobs=[-0.5] * len(split))
    got = render_sampled(tok, QUESTION, steps, train_on=GENERATED)
    assert (got.turns, got.mismatched) == (1, 1)
    (a, b), (c, d) = runs(got.ids, got.mask)
    assert got.ids[a : b - 1] == split and tok.decode(got.ids[b - 1]) == "<|im_end|>"  # the sampled ids, then the marker
    assert tok.decode(got.ids[c:d]) == render_step(STEPS[2]) + "<|im_end|>"  # no sampled ids: re-tokenised
    # Everything else is the template's, as render_trajectory has it: observations stay masked.
    want_ids, want_mask = render_trajectory(tok, QUESTION, STEPS, train_on=GENERATED)
    unmasked = lambda ids, mask: [t for t, m in zip(ids, mask) if not m]  # noqa: E731
    assert unmasked(got.ids, got.mask) == unmasked(want_ids, want_mask)
    assert "Observation: 42" in tok.decode(unmasked(got.ids, got.mask))


def test_a_turn_after_a_mismatch_is_not_in_its_sampling_context(tok):
    """The second turn's own ids agree, but the tokens before it hold the first turn's
    sampled ids where the sampler saw their re-tokenisation: counted as well."""
    steps = sampled_as_rendered(tok, with_end=False)
    split = char_ids(tok, render_step(STEPS[1]))
    steps[1] = dataclasses.replace(steps[1], sampled_ids=split, sampled_logprobs=None)
    got = render_sampled(tok, QUESTION, steps, train_on=GENERATED)
    assert (got.turns, got.mismatched) == (2, 2)
    a, b = runs(got.ids, got.mask)[0]
    assert all(math.isnan(lp) for lp in got.sampler_logprobs[a:b])  # ids without log-probs: none are made up


def test_a_changed_token_is_a_mismatch_and_steps_not_trained_keep_their_text(tok):
    steps = sampled_as_rendered(tok, with_end=False)
    other = list(steps[2].sampled_ids)
    other[1] = (other[1] + 1) % len(tok)
    steps[2] = dataclasses.replace(steps[2], sampled_ids=other)
    steps[0] = dataclasses.replace(steps[0], sampled_ids=[5, 6, 7])  # a prefix step: never trained, ignored
    got = render_sampled(tok, QUESTION, steps, train_on=GENERATED)
    assert (got.turns, got.mismatched) == (2, 1)
    assert got.ids[runs(got.ids, got.mask)[1][0]:][: len(other)] == other
    assert "multiply then answer" in tok.decode([t for t, m in zip(got.ids, got.mask) if not m])
