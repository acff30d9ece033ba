"""The loss-mask renderer, pinned token by token: exactly the assistant turns (content and
end-of-turn marker) are trained; system prompt, question and observations never are."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from score_distill.agent.format import render_step
from score_distill.models.builtin import builtin_path
from score_distill.train.render import render_trajectory
from score_distill.types import Step


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(builtin_path("tiny"))


STEPS = [
    Step(kind="plan", thought="multiply then answer", author="teacher"),
    Step(kind="action", thought="compute", code="x = 6 * 7\nprint(x)", observation="42", author="student"),
    Step(kind="action", thought="done", code="final_answer(x)", observation="(no output)", author="teacher"),
]


def spans(ids, mask):
    """Maximal runs of masked token ids."""
    runs, cur = [], []
    for t, m in zip(ids, mask):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def test_masked_tokens_are_exactly_the_assistant_turns(tok):
    ids, mask = render_trajectory(tok, "What is 6 times 7?", STEPS)
    assert len(ids) == len(mask)
    runs = [tok.decode(r) for r in spans(ids, mask)]
    assert runs == [render_step(s) + "<|im_end|>" for s in STEPS]


def test_prompt_and_observations_are_masked(tok):
    ids, mask = render_trajectory(tok, "What is 6 times 7?", STEPS)
    unmasked = tok.decode([t for t, m in zip(ids, mask) if not m])
    assert "What is 6 times 7?" in unmasked and "Observation: 42" in unmasked
    assert "Observation: none" in unmasked
    assert "final_answer(x)" not in unmasked and "multiply then answer" not in unmasked


def test_train_on_selects_steps(tok):
    ids, mask = render_trajectory(tok, "q", STEPS, train_on=lambda i, s: s.author == "student")
    runs = [tok.decode(r) for r in spans(ids, mask)]
    assert runs == [render_step(STEPS[1]) + "<|im_end|>"]


def test_ids_match_the_rollout_prompt(tok):
    """The tokens before a turn are the tokens the rollout prompts the model with."""
    from score_distill.agent.format import to_messages

    ids, mask = render_trajectory(tok, "q", STEPS)
    prompt = tok.apply_chat_template(to_messages("q", STEPS[:1]), tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert mask[len(prompt_ids)] == 1 and mask[len(prompt_ids) - 1] == 0


def test_sft_dataset_never_targets_malformed_steps(tok):
    from score_distill.train.sft import build_dataset

    bad = Step(kind="action", thought="", code="", raw="<thought>no code", parse_error="no <code> block",
               observation="Error: your step could not be parsed: no <code> block. Nothing was run.")
    steps = [STEPS[0], bad, *STEPS[1:]]
    ds = build_dataset(tok, [("q", steps)], max_length=4096)
    ids, labels = ds["input_ids"][0], ds["labels"][0]
    targets = [tok.decode(r) for r in spans(ids, [int(x != -100) for x in labels])]
    assert targets == [render_step(s) + "<|im_end|>" for s in STEPS]
    assert "<thought>no code" in tok.decode(ids)
