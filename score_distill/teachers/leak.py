"""The answer-leak guard: keep the gold answer out of the teacher's repaired steps.

The judge sees the gold answer and its analysis often states it. If that text reached the
repair prompt, the teacher's fix could simply write the answer down, and the student would
learn to produce answers it never derived. Two checks guard against it:

1. `withhold_answer(text, answer)` replaces every mention of the gold answer in the judge's
   analysis and suggestion with "[answer withheld]" before the repair prompt is built.
2. `leaks_answer(step_text, answer, known)` rejects a repaired step that mentions the answer
   when nothing the student has seen so far (`known`: the question and the verified prefix,
   observations included) mentions it. A step may state the answer only once the student's
   own work has shown it, e.g. `final_answer(42)` after an observation showed 42. This is
   stricter than "only in a final_answer call": a literal answer the student never saw is
   rejected even there, since training on it teaches answers pulled from nowhere.

A mention is the answer's text or one of its normalised numeric forms (`answer_forms`:
1000 -> "1000", "1000.00", "1,000"; 7/3 -> "7/3", "\\frac{7}{3}", "2.333..."; 1/4 -> "0.25", ".250")
found on token boundaries, case-insensitively: "2" matches in "x = 2" but not in "12",
"2.5" or "x2".

Limits (what this does not catch or over-catches):
- answers spelled differently: "forty-two", "42 %", a unit glued on, a reordered name,
  an alias, or an expression that evaluates to the answer (`6 * 7`);
- short answers over-match: for an answer of "2" every standalone 2 in the analysis is
  withheld (mentions right after "step " are kept, since the judge names steps by number),
  and yes/no answers hide those words everywhere;
- when the question or prefix already mentions the answer (a small number in the
  question), check 2 cannot tell a leak from ordinary use, and lets the step through.

    >>> withhold_answer("The answer is 42, not 41.", "42")
    'The answer is [answer withheld], not 41.'
    >>> leaks_answer("final_answer(42)", "42", known="What is 6 * 7?")
    True
    >>> leaks_answer("final_answer(x)", "42", known="What is 6 * 7?")
    False
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

WITHHELD = "[answer withheld]"

_BOXED = re.compile(r"^\\boxed\{(.*)\}$", re.DOTALL)
_FRAC = re.compile(r"^(-?)\\d?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}$")
_GROUPED = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
# A number is not a mention when it is part of a longer number or word.
_BEFORE = r"(?<![\w.])"
_AFTER = r"(?!\w|\.\d)"


def _strip_wrappers(answer: str) -> str:
    """Drop math delimiters and a \\boxed{} around the answer."""
    a = answer.strip()
    if len(a) >= 2 and a[0] == "$" and a[-1] == "$":
        a = a.strip("$").strip()
    m = _BOXED.match(a)
    return m.group(1).strip() if m else a


def parse_number(text: str) -> Fraction | None:
    """The exact value of a plain numeric answer, or None when it is not one.

    >>> parse_number("\\\\frac{7}{3}"), parse_number("1,000"), parse_number("-0.25"), parse_number("Paris")
    (Fraction(7, 3), Fraction(1000, 1), Fraction(-1, 4), None)
    """
    t = _strip_wrappers(text).replace(" ", "")
    m = _FRAC.match(t)
    if m:
        sign, num, den = m.groups()
        return None if int(den) == 0 else Fraction(int(num), int(den)) * (-1 if sign else 1)
    if _GROUPED.match(t):
        t = t.replace(",", "")
    if re.fullmatch(r"-?\d+/\d+", t):
        num, den = t.split("/")
        return None if int(den) == 0 else Fraction(int(num), int(den))
    if not re.fullmatch(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", t):
        return None
    try:
        return Fraction(Decimal(t))
    except InvalidOperation:
        return None


def _decimal_text(value: Fraction) -> tuple[str, bool]:
    """A decimal rendering of `value` and whether it is exact (else rounded to 3 places)."""
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
        return text, True
    return f"{float(value):.3f}", False


# What may follow a form inside the same number.
_ZEROS_AFTER_INT = r"(?:\.0+)?"   # 42 -> 42.0, 42.000
_MORE_ZEROS = "0*"                # 0.25 -> 0.250
_MORE_DIGITS = r"\d*"             # 2.333 (7/3 rounded) -> 2.3333333


def answer_forms(answer: str) -> list[tuple[str, str]]:
    """The strings that count as a mention of `answer`, each with a regex for what may
    follow it within the same number. Longest first, so a longer form wins a match.

    >>> [text for text, _ in answer_forms("1000")]
    ['1,000', '1000']
    >>> [text for text, _ in answer_forms("7/3")]
    ['\\\\dfrac{7}{3}', '\\\\tfrac{7}{3}', '\\\\frac{7}{3}', '2.333', '7/3']
    >>> [text for text, _ in answer_forms("0.250")][-4:]
    ['0.250', '0.25', '.25', '1/4']
    """
    base = _strip_wrappers(answer)
    forms: dict[str, str] = {base: ""} if base else {}
    value = parse_number(base)
    if value is not None:
        if value.denominator == 1:
            n = value.numerator
            forms.update({str(n): _ZEROS_AFTER_INT, f"{n:,}": _ZEROS_AFTER_INT})
        else:
            p, q = value.numerator, value.denominator
            forms.update({f"{p}/{q}": ""} | {f"\\{frac}{{{p}}}{{{q}}}": "" for frac in ("frac", "dfrac", "tfrac")})
            text, exact = _decimal_text(value)
            forms[text] = _MORE_ZEROS if exact else _MORE_DIGITS
            if exact and text.lstrip("-").startswith("0."):
                forms[text.replace("0.", ".", 1)] = _MORE_ZEROS
    return sorted(forms.items(), key=lambda kv: (-len(kv[0]), kv[0]))


def _pattern(answer: str, skip_step_numbers: bool) -> re.Pattern[str] | None:
    parts = []
    for form, tail in answer_forms(answer):
        parts.append(r"\s+".join(re.escape(word) for word in form.split()) + tail)
    if not parts:
        return None
    before = _BEFORE + (r"(?<!step )" if skip_step_numbers else "")
    return re.compile(before + "(?:" + "|".join(parts) + ")" + _AFTER, re.IGNORECASE)


def mentions_answer(text: str, answer: str) -> bool:
    """Whether `text` mentions the answer (see the module docstring for what counts).

    >>> mentions_answer("x = 12", "2"), mentions_answer("x = 2", "2"), mentions_answer("2.5", "2")
    (False, True, False)
    >>> mentions_answer("the capital is paris.", "Paris")
    True
    """
    pattern = _pattern(answer, skip_step_numbers=False)
    return bool(pattern and pattern.search(text))


def withhold_answer(text: str, answer: str) -> str:
    """`text` with every mention of the answer replaced by WITHHELD; "step N" is kept.

    >>> withhold_answer("Step 2 used 2.333333 instead of 7/3.", "7/3")
    'Step 2 used [answer withheld] instead of [answer withheld].'
    >>> withhold_answer("At step 2 it printed 2.", "2")
    'At step 2 it printed [answer withheld].'
    """
    pattern = _pattern(answer, skip_step_numbers=True)
    return pattern.sub(WITHHELD, text) if pattern else text


def leaks_answer(step_text: str, answer: str, known: str) -> bool:
    """Whether a step mentions the answer although nothing `known` to the student does.

    >>> leaks_answer("<thought>so it is 42</thought>", "42", known="Observation: 42")
    False
    """
    return mentions_answer(step_text, answer) and not mentions_answer(known, answer)
