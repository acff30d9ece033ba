"""Exact equivalence of math answers: `math_equal(pred, gold)`, the scorer of the "math" suite
and of any suite scored with scorer="math" (see `tasks.scoring`).

How `math_equal` reads answers (one set of decisions for every suite):
- math-verify parses (LaTeX or plain expressions); values are compared exactly, or to 6
  decimal places when a side is written as a decimal ("0.333333" == "1/3" but "3.14159" !=
  "\\pi"): "17/4" == "4.25" == "\\frac{17}{4}" == "\\boxed{17/4}"; "x = 3" == "3".
- sets (any order), tuples, intervals, relations and matrices compare part by part, by
  evaluating values rather than by sympy's simplify, which can take minutes.
- "1,200" == "1200" (thousands separators); "2,3" is the list {2, 3}, not 2.3.
- currency, percent and degree signs are dropped on both sides: "$12" == "12", "50%" ==
  "50" but "50%" != "0.5" (the number as written: equality stays transitive).
- a mixed number "4 1/4" (integer, space, proper fraction) is 17/4, as "4\\frac{1}{4}" is.
- Python spellings from `final_answer(sympy_expr)` work: "sqrt(2)", "pi/4", "x**2", "1e-05".
- the same text (case, spaces and `\\text{}` aside) is equal: "\\text{east}" == "East".
- inputs that could keep sympy busy are rejected first (sympy has no time limit, and
  math-verify's uses SIGALRM: main thread only, and it would clash with the sandbox):
  answers over MAX_ANSWER_CHARS, power towers, exponents over MAX_NUMERIC_EXPONENT on a
  number or MAX_SYMBOLIC_EXPONENT otherwise, factorials and binomials of anything but small
  integers or letters, sums, products, integrals, limits, brackets nested deeper than
  MAX_NESTING. A static screen bounds the slow cases we know; it does not prove every
  accepted input fast.
Model text never reaches Python's eval: math-verify parses LaTeX with its own parser and
plain expressions only from digits and arithmetic operators.
"""

from __future__ import annotations

import logging
import re

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

MAX_ANSWER_CHARS = 200
MAX_NUMERIC_EXPONENT = 10_000  # 2^{10000} has ~3000 digits: cheap for exact integers
MAX_SYMBOLIC_EXPONENT = 32  # sympy expands powers of sums eagerly in places: (x+y+1)^{64} takes seconds
MAX_FACTORIAL = 1000
MAX_NESTING = 6  # the LaTeX parser is exponential in bracket depth: {{{{{{{{{{{{{{1}}}}}}}}}}}}}} takes ~17 s


# math-verify warns once that its timeouts are off; ours are off on purpose (inputs are
# screened by `_is_hostile`), so that warning would only mislead a reader of the logs.
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(lambda record: "Timeout is disabled" not in record.getMessage())



_FUNCTION_NAMES = frozenset({"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp",
                             "arcsin", "arccos", "arctan", "circ", "infty", "pi", "frac", "dfrac"})
_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_MIXED = re.compile(r"^(-?)(\d+)\s+(\d+)\s*/\s*(\d+)$")
_SCIENTIFIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([-+]?\d+)(?![\w.])")
_VAR_ASSIGN = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_(?:\{\w+\}|\w))?\s*=(?!.*=)\s*")
_BANNED = re.compile(r"\\(?:sum|prod|int|iint|iiint|oint|lim|choose)(?![a-zA-Z])")
_BINOM = re.compile(r"\\[dt]?binom(?![a-zA-Z])")
_SMALL_ARG = re.compile(r"\s*(?:\d{1,4}|[a-zA-Z](?:\s*[-+]\s*\d{1,3})?)\s*")
_OPERAND_TOKEN = re.compile(r"\\[a-zA-Z]+|[-+]?\d+(?:\.\d+)?|.")
_ENDS_WITH_NUMBER = re.compile(r"(?:^|[^\w.})\]\\])\d+(?:\.\d+)?\s*$")
_FACTORIAL_ARG = re.compile(r"(?:(?<![\w.])\d+|(?<![\\a-zA-Z])[a-zA-Z])\s*$")
_SPACING = re.compile(r"\\[,;:! ]|\\(?:left|right)(?![a-zA-Z])|~")


def _group(s: str, i: int) -> tuple[str, int]:
    """The content of the bracket group opening at s[i] ("{" or "(") and the index just past
    it; an unclosed group runs to the end of `s`."""
    open_c, close_c = s[i], "}" if s[i] == "{" else ")"
    depth = 0
    for j in range(i, len(s)):
        depth += (s[j] == open_c) - (s[j] == close_c)
        if depth == 0:
            return s[i + 1 : j], j + 1
    return s[i + 1 :], len(s)


def _unwrap(s: str, command: str) -> str:
    """Replace every `\\command{x}` by `x`."""
    head = "\\" + command + "{"
    while (i := s.find(head)) >= 0:
        inner, end = _group(s, i + len(head) - 1)
        s = s[:i] + inner + s[end:]
    return s


def _last_boxed(s: str) -> str:
    """The content of the last `\\boxed{...}` (or `\\fbox`), else `s` unchanged."""
    i = max(s.rfind("\\boxed{"), s.rfind("\\fbox{"))
    return s if i < 0 else _group(s, s.find("{", i))[0]


def _core(text: str) -> str:
    """The answer itself: delimiters, units of notation and Python spellings normalised.

    >>> _core("\\\\boxed{x = 1,200\\\\%}"), _core("$12"), _core("4 1/4"), _core("sqrt(2)*pi")
    ('1200', '12', '17/4', 'sqrt(2)*\\\\pi')
    """
    s = _last_boxed(text.strip())
    for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(a) and s.endswith(b) and len(s) >= len(a) + len(b):
            s = s[len(a) : len(s) - len(b)]
    for command in ("text", "textbf", "mathrm", "mbox"):
        s = _unwrap(s, command)
    s = _SPACING.sub(" ", s)
    for mark in ("^{\\circ}", "^\\circ", "\\circ", "°", "\\%", "%", "\\$", "$", "{,}"):
        s = s.replace(mark, "")
    s = _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), s).strip().rstrip(".").strip()
    s = _VAR_ASSIGN.sub("", s)
    s = s.replace("**", "^")
    s = re.sub(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])", r"\\pi", s)
    s = re.sub(r"(?<![\\a-zA-Z])oo(?![a-zA-Z])", r"\\infty", s)
    s = _SCIENTIFIC.sub(r"\1\\cdot 10^{\2}", s)
    m = _MIXED.match(s)
    if m and int(m.group(3)) < int(m.group(4)):
        whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
        s = f"{m.group(1)}{whole * den + num}/{den}"
    return s.strip()


def _exponent_too_big(s: str, i: int) -> bool:
    """Whether the power whose `^` is at s[i] could be slow to evaluate."""
    j = i + 1
    while j < len(s) and s[j] == " ":
        j += 1
    if j >= len(s):
        return False
    if s[j] in "{(":
        operand, end = _group(s, j)
    else:
        m = _OPERAND_TOKEN.match(s, j)
        assert m is not None  # its last alternative matches any character
        operand, end = m.group(0), m.end()
    if "^" in operand or s[end:].lstrip().startswith("^"):
        return True  # a tower: 9^{9^9} or 2^3^4
    on_number = _ENDS_WITH_NUMBER.search(s[:i]) is not None and re.fullmatch(r"[-+]?\d+", operand.strip())
    limit = MAX_NUMERIC_EXPONENT if on_number else MAX_SYMBOLIC_EXPONENT
    return any(int(n) > limit for n in re.findall(r"\d+", operand))


def _nesting(s: str) -> int:
    """The deepest bracket nesting, all kinds of bracket counted together."""
    depth = deepest = 0
    for c in s:
        depth = max(0, depth + (c in "{([") - (c in "})]"))
        deepest = max(deepest, depth)
    return deepest


def _small_integer_or_letter(arg: str) -> bool:
    return bool(_SMALL_ARG.fullmatch(arg)) and all(int(n) <= MAX_FACTORIAL for n in re.findall(r"\d+", arg))


def _is_hostile(s: str) -> bool:
    """Whether a normalised answer could make sympy run for long (see the module docstring).

    >>> [_is_hostile(t) for t in ["2^{2023}", "9^{9^{9}}", "(x+1)^{1000}", "100000!", "5!"]]
    [False, True, True, True, False]
    """
    if len(s) > MAX_ANSWER_CHARS or _BANNED.search(s) or _nesting(s) > MAX_NESTING:
        return True
    if any(_exponent_too_big(s, i) for i, c in enumerate(s) if c == "^"):
        return True
    for m in re.finditer("!", s):
        before = _FACTORIAL_ARG.search(s[: m.start()])
        if before is None or not _small_integer_or_letter(before.group(0)):
            return True
    for m in _BINOM.finditer(s):
        j = m.end()
        for _ in range(2):  # \\binom{n}{k}
            if j >= len(s) or s[j] != "{":
                return True
            arg, j = _group(s, j)
            if not _small_integer_or_letter(arg):
                return True
    return False


def _parse_math(core: str) -> list:
    """math-verify's parse of a normalised answer: as LaTeX when it reads as a formula, else
    (free text such as "12 apples") with its answer extraction."""
    words = [w for w in _WORD.findall(core) if w not in _FUNCTION_NAMES]
    if not words:
        parsed = parse(f"${core}$", [LatexExtractionConfig()], parsing_timeout=None)  # type: ignore[arg-type]
        if parsed:
            return parsed
    return parse(core, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)  # type: ignore[arg-type]


def _plain(core: str) -> str:
    return re.sub(r"\s+", "", core).lower()


def math_check(pred: str, gold: str) -> tuple[bool, str]:
    """`math_equal` with the reason, for `Score.detail`."""
    if len(pred) > 4 * MAX_ANSWER_CHARS or len(gold) > 4 * MAX_ANSWER_CHARS:
        return False, "answer too long"  # checked before any regex work; the real cap is below
    p, g = _core(pred), _core(gold)
    if not p or not g:
        return False, "empty answer"
    if _is_hostile(p) or _is_hostile(g):
        return False, "answer too long or too costly to evaluate"
    if _plain(p) == _plain(g):
        return True, "equal"
    gold_parsed, pred_parsed = _parse_math(g), _parse_math(p)
    if not pred_parsed or not gold_parsed:
        return False, "unreadable answer" if not pred_parsed else "unreadable gold answer"
    ok = _same(gold_parsed[0], pred_parsed[0])
    if ok is None:  # different shapes (a set and a tuple, an interval and an inequality), text
        ok = verify(gold_parsed, pred_parsed, timeout_seconds=None)
    return ok, "equal" if ok else "not equal"


# Points where expressions with variables are compared: rationals that are unlikely roots of
# anything a model writes, so two different expressions almost surely differ at one of them.
_PROBES = (sympy.Rational(5772, 10000), sympy.Rational(12599, 10000), sympy.Rational(27183, 10000))
_DIGITS = 60
_EXACT_TOLERANCE = sympy.Float("1e-40", _DIGITS)  # equal exact values agree to ~60 digits
_DECIMAL_TOLERANCE = sympy.Float("5e-7", _DIGITS)  # a decimal must be right to 6 places
_CONTAINERS = (sympy.FiniteSet, sympy.Tuple, sympy.Interval, sympy.Rel, sympy.MatrixBase)
_FLIPPED = {sympy.GreaterThan: sympy.LessThan, sympy.StrictGreaterThan: sympy.StrictLessThan}


def _parts(x: object) -> list:
    return list(x) if isinstance(x, sympy.MatrixBase) else list(x.args)  # type: ignore[attr-defined]


def _same(gold: object, pred: object) -> bool | None:
    """Equality of two parsed answers decided by evaluating their values, or None when their
    shapes differ (or nothing could be evaluated) and math-verify's rules must decide.

    sympy's `simplify`, which math-verify relies on, can take minutes on innocent inputs
    ("\\log 5 \\sin 3" against a number takes ~30 s); evaluation takes milliseconds. So
    sets (in any order), tuples, intervals, relations (a >= b read as b <= a) and matrices
    are compared part by part here, and their parts, expressions, by `_same_value`.
    """
    gold, pred = (_FLIPPED[type(x)](x.rhs, x.lhs) if type(x) in _FLIPPED else x for x in (gold, pred))
    if isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr):
        return _same_value(gold, pred)
    if isinstance(gold, sympy.logic.boolalg.BooleanAtom) or isinstance(pred, sympy.logic.boolalg.BooleanAtom):
        return gold == pred  # the open/closed flags of an interval
    if type(gold) is not type(pred) or not isinstance(gold, _CONTAINERS):
        return None
    g_parts, p_parts = _parts(gold), _parts(pred)
    if len(g_parts) != len(p_parts) or (isinstance(gold, sympy.MatrixBase) and gold.shape != pred.shape):
        return False
    if isinstance(gold, sympy.FiniteSet):  # any order: match each gold element to an unused one
        for g in g_parts:
            match = next((i for i, p in enumerate(p_parts) if _same(g, p)), None)
            if match is None:
                return False
            p_parts.pop(match)
        return True
    verdicts = [_same(g, p) for g, p in zip(g_parts, p_parts)]
    return None if None in verdicts else all(verdicts)


def _same_value(gold: sympy.Expr, pred: sympy.Expr) -> bool | None:
    """Equal values: rationals exactly; other numbers to 60 digits, or to 6 decimal places
    (relative to the size of the value, when above 1) when a side holds a decimal; expressions with variables at three fixed points
    (both sides must use the same variables, as in math-verify's strict mode). None when no
    evaluation gave a number."""
    if gold.free_symbols != pred.free_symbols:
        return False
    if gold.is_Rational and pred.is_Rational:
        return bool(gold == pred)
    tol = _DECIMAL_TOLERANCE if gold.has(sympy.Float) or pred.has(sympy.Float) else _EXACT_TOLERANCE
    names = sorted(gold.free_symbols, key=str)
    points = [{x: _PROBES[(i + j) % 3] + j for j, x in enumerate(names)} for i in range(3 if names else 1)]
    verdicts = []
    for point in points:
        try:
            a, b = gold.subs(point).evalf(_DIGITS), pred.subs(point).evalf(_DIGITS)
            diff, scale = abs(a - b).evalf(_DIGITS), max(abs(a).evalf(_DIGITS), sympy.Integer(1))
            verdicts.append(bool(diff <= tol * scale))
        except (TypeError, ValueError, ArithmeticError, NotImplementedError):
            continue  # not a finite number here (a pole, nan, an unevaluated object): skip the point
    return all(verdicts) if verdicts else None


def math_equal(pred: str, gold: str) -> bool:
    """Whether `pred` is mathematically the gold answer (rules in the module docstring).
    Never raises: unreadable or hostile text is simply not equal.

    >>> math_equal("17/4", "4.25"), math_equal("\\\\boxed{\\\\frac{17}{4}}", "4 1/4"), math_equal("$12", "12")
    (True, True, True)
    >>> math_equal("x = 3", "3"), math_equal("1,200", "1200"), math_equal("50%", "0.5")
    (True, True, False)
    >>> math_equal("2^{10^{10}}", "2"), math_equal("garbage", "3")
    (False, False)
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    return math_check(pred, gold)[0]
