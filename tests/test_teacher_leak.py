"""The answer-leak guard: what counts as a mention of the gold answer, and that withholding
leaves none behind."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from score_distill.teachers.leak import WITHHELD, answer_forms, leaks_answer, mentions_answer, withhold_answer


@pytest.mark.parametrize("answer, text, mentioned", [
    ("42", "so x is 42.000", True),
    ("42", "print(42)", True),
    ("42", "got 420", False),
    ("42", "0.42 of it", False),
    ("42", "x42 = 1", False),
    ("42", "42.5 km", False),
    ("1000", "1,000 apples", True),
    ("1000", "1,000.5 apples", False),
    ("7/3", r"$\dfrac{7}{3}$", True),
    ("7/3", "about 2.3333", True),
    ("7/3", "about 2.34", False),
    ("0.25", "a quarter is .250", True),
    ("0.25", "1/4 of the cake", True),
    ("0.25", "0.251", False),
    (r"\boxed{12}", "12 eggs", True),
    ("-3", "x = -3", True),
    ("Mara Quill", "by MARA\nQUILL's hand", True),
    ("Mara Quill", "Mara Quillon", False),
    ("2", "the 2nd one", False),
    ("2", "f(2)", True),
])
def test_what_counts_as_a_mention(answer: str, text: str, mentioned: bool):
    assert mentions_answer(text, answer) is mentioned


def test_step_numbers_survive_withholding():
    assert withhold_answer("Step 42 printed 42; step 3 reused 42.0.", "42") == (
        f"Step 42 printed {WITHHELD}; step 3 reused {WITHHELD}.")


def test_a_step_may_repeat_only_what_the_student_has_seen():
    assert leaks_answer("final_answer(7/3)", "7/3", known="Observation: 7\nObservation: 3")
    assert not leaks_answer("final_answer(7/3)", "7/3", known="Observation: 2.3333333333333335")
    assert not leaks_answer("<thought>Now divide.</thought>", "7/3", known="")


FILLER = st.sampled_from(["the", "value", "is", "x =", "(", ")", ",", ".", "step", "then", "0", "x"])
ANSWERS = st.one_of(st.integers(-5000, 5000).map(str),
                    st.fractions(min_value=-50, max_value=50, max_denominator=40).map(str),
                    st.sampled_from(["Mara Quill", "Paris", "The Amber Weir"]))


# How each kind of form may run on inside one number: 42.00, 0.250, 2.3337.
EXTEND = {"": "", r"(?:\.0+)?": ".00", "0*": "0", r"\d*": "7"}


@settings(max_examples=200, deadline=None)
@given(answer=ANSWERS, data=st.data())
def test_withholding_leaves_no_mention(answer: str, data: st.DataObject):
    forms = [form for form, _ in answer_forms(answer)] + [form + EXTEND[tail] for form, tail in answer_forms(answer)]
    words = data.draw(st.lists(st.one_of(FILLER, st.sampled_from(forms)), min_size=1, max_size=12))
    text = " ".join(words).replace("step ", "steps ")  # "step N" is deliberately kept
    cleaned = withhold_answer(text, answer)
    assert not mentions_answer(cleaned, answer), (text, cleaned)
    assert mentions_answer(text, answer) == (cleaned != text)


def test_numeric_forms_have_the_answers_value():
    for form, _ in answer_forms("7/3"):
        if "/" in form and "frac" not in form:
            assert Fraction(form) == Fraction(7, 3)
    assert {form for form, _ in answer_forms("3.50")} >= {"3.50", "3.5", "7/2"}
