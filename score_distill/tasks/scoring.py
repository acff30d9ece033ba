"""Answer scorers: is a predicted final answer right? Used by evaluation, MPS and RL rewards.

    score = score_answer("math", pred="\\\\frac{17}{4}", gold="4.25")   # Score(1.0, True, ...)
    score = score_answer("search", pred="the Eiffel Tower", gold="Eiffel Tower")
    score = score_answer("gaia", pred, gold, question, scorer=LLMJudgeScorer(chat))

Which scorer a suite uses (`correct` is what accuracy counts, `value` is the mean score):
- "math": `math_equal`, exact mathematical equivalence; value 1.0 or 0.0.
- "search": `correct` is SQuAD exact match, `value` is token F1 (the multi-hop QA metric).
- a benchmark's suite (`BENCHMARKS`, e.g. "aime24", "hotpotqa", "gaia"): its scorer;
- any other suite: exact match, unless `scorer` says otherwise: "math", "em", "f1" (as
  "search"), or a `Scorer` object such as `LLMJudgeScorer` (correct = the judge's verdict).
A missing answer (None) scores Score(0.0, False, "no final answer") under every scorer.
How `math_equal` reads answers is written down in `tasks/math_answer.py`.

Scorers never raise on model output: unreadable or hostile answers are simply wrong, and a
judge model that keeps breaking its reply format yields a Score with `judge_failed=True`.

"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Protocol

from score_distill.tasks.math_answer import MAX_ANSWER_CHARS, math_check, math_equal  # noqa: F401 (re-exported)





@dataclass(frozen=True)
class Score:
    """The score of one answer. `correct` is what accuracy counts; `value` in [0, 1] is the
    graded score (token F1 for search, else 1.0/0.0); `judge_failed` marks an LLM judge that
    never produced a valid verdict (then correct is False and `detail` says why)."""

    value: float
    correct: bool
    detail: str = ""
    judge_failed: bool = False


NO_ANSWER = Score(0.0, False, "no final answer")


class Scorer(Protocol):
    """Anything that scores a non-None prediction against a gold answer."""

    def score(self, pred: str, gold: str, question: str) -> Score: ...


# --- text answers (SQuAD-style) ----------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and articles, collapse whitespace (SQuAD's rule).

    >>> normalize_answer("  The Eiffel-Tower!  ")
    'eiffeltower'
    """
    s = "".join(c for c in s.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, gold: str) -> bool:
    """Equal after `normalize_answer`.

    >>> exact_match("the Beatles.", "Beatles"), exact_match("Beatles", "Rolling Stones")
    (True, False)
    """
    return normalize_answer(pred) == normalize_answer(gold)


def token_f1(pred: str, gold: str) -> float:
    """F1 of the normalised tokens (multiset overlap); 1.0 when both are empty.

    >>> round(token_f1("Barack Obama Jr", "Barack Obama"), 3), token_f1("yes", "no")
    (0.8, 0.0)
    """
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    return 2 * common / (len(p) + len(g))  # = 2PR / (P + R) with P = common/|p|, R = common/|g|


# --- LLM judge ---------------------------------------------------------------------------

JUDGE_PROMPT_VERSION = "answer-judge-v1"
JUDGE_SYSTEM = "You grade answers to questions against a gold answer. You reply with one JSON object only."
JUDGE_TEMPLATE = """Question: {question}
Gold answer: {gold}
Predicted answer: {pred}

Is the predicted answer correct, that is, does it give the same answer as the gold answer?
Ignore differences of wording, formatting, letter case, and units written or left out, and
accept extra detail that does not contradict the gold answer. A prediction that gives
several different answers, or hedges between them, is not correct.
Reply with one JSON object and nothing else:
{{"correct": true or false, "reason": "one short sentence"}}"""
JUDGE_RETRY = ('Your reply could not be used: {problem}. Reply again with exactly one JSON object: '
               '{{"correct": true or false, "reason": "one short sentence"}}')


class JudgeReplyError(ValueError):
    """A judge reply that breaks the verdict format (the judge model's mistake)."""


@dataclass(frozen=True)
class JudgeVerdict:
    correct: bool
    reason: str


def _first_json_object(text: str) -> dict | None:
    """The first JSON object in `text` (models wrap it in prose or code fences)."""
    decoder = json.JSONDecoder()
    for m in re.finditer("{", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_answer_judge_reply(text: str) -> JudgeVerdict:
    """Read and validate a judge's verdict; raises JudgeReplyError saying what is wrong.

    >>> parse_answer_judge_reply('```json\\n{"correct": true, "reason": "same city"}\\n```')
    JudgeVerdict(correct=True, reason='same city')
    >>> parse_answer_judge_reply('{"correct": "yes"}')
    Traceback (most recent call last):
    ...
    score_distill.tasks.scoring.JudgeReplyError: "correct" must be true or false, got 'yes'
    """
    obj = _first_json_object(text)
    if obj is None:
        raise JudgeReplyError("no JSON object found")
    if "correct" not in obj:
        raise JudgeReplyError('the object has no "correct" key')
    if not isinstance(obj["correct"], bool):
        raise JudgeReplyError(f'"correct" must be true or false, got {obj["correct"]!r}')
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise JudgeReplyError(f'"reason" must be a string, got {type(reason).__name__}')
    return JudgeVerdict(obj["correct"], reason.strip())


class LLMJudgeScorer:
    """Scores an answer by asking a judge model, for open-ended suites (GAIA-style).

    `chat` takes chat messages and returns the reply text (an OpenAI-compatible client
    provides one; tests pass a function). A reply that is not a valid verdict is retried
    with a note saying what was wrong, at most `max_attempts` calls in all; after that the
    answer scores Score(0.0, False, ..., judge_failed=True). Transport errors raised by
    `chat` are not the judge's mistake and propagate. A prediction that already matches
    the gold answer exactly (after `normalize_answer`) is accepted without a call.
    """

    def __init__(self, chat: Callable[[list[dict[str, str]]], str], max_attempts: int = 3,
                 max_pred_chars: int = 2000) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.chat = chat
        self.max_attempts = max_attempts
        self.max_pred_chars = max_pred_chars

    def messages(self, pred: str, gold: str, question: str) -> list[dict[str, str]]:
        # A long prediction is cut: the judge needs the answer, not an essay around it.
        pred = pred if len(pred) <= self.max_pred_chars else pred[: self.max_pred_chars] + " [...]"
        prompt = JUDGE_TEMPLATE.format(question=question, gold=gold, pred=pred)
        return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]

    def score(self, pred: str, gold: str, question: str) -> Score:
        if exact_match(pred, gold) and normalize_answer(gold):
            return Score(1.0, True, "exact match")
        messages = self.messages(pred, gold, question)
        problem = ""
        for _ in range(self.max_attempts):
            reply = self.chat(messages)
            try:
                verdict = parse_answer_judge_reply(reply)
            except JudgeReplyError as e:
                problem = str(e)
                messages = messages + [{"role": "assistant", "content": reply},
                                       {"role": "user", "content": JUDGE_RETRY.format(problem=problem)}]
                continue
            return Score(float(verdict.correct), verdict.correct, f"judge: {verdict.reason}")
        return Score(0.0, False, f"judge failed after {self.max_attempts} attempts: {problem}", judge_failed=True)


# --- dispatch ----------------------------------------------------------------------------

SCORER_NAMES: tuple[str, ...] = ("math", "em", "f1", "llm")
SUITE_SCORERS: dict[str, str] = {"math": "math", "search": "f1"}
DEFAULT_SCORER = "em"


@dataclass(frozen=True)
class Benchmark:
    """One of the paper's benchmarks: its group and how its answers are scored: exact
    mathematical equivalence for the math four, SQuAD exact match with token F1 as the value
    for the factual four (the paper reports F1), an LLM judge for the other four."""

    name: str
    group: str  # "math" and "factual" make the paper's 8-benchmark average; "judged" the other four
    scorer: str  # a `tasks.scoring` scorer name: "math", "f1" or "llm"
    title: str


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("aime24", "math", "math", "AIME 2024"),
    Benchmark("aime25", "math", "math", "AIME 2025"),
    Benchmark("math500", "math", "math", "MATH-500"),
    Benchmark("olymmath", "math", "math", "OlymMATH"),
    Benchmark("hotpotqa", "factual", "f1", "HotpotQA"),
    Benchmark("2wikimultihopqa", "factual", "f1", "2WikiMultihopQA"),
    Benchmark("musique", "factual", "f1", "MuSiQue"),
    Benchmark("bamboogle", "factual", "f1", "Bamboogle"),
    Benchmark("gaia", "judged", "llm", "GAIA"),
    Benchmark("webwalkerqa", "judged", "llm", "WebWalkerQA"),
    Benchmark("hle", "judged", "llm", "Humanity's Last Exam"),
    Benchmark("xbench", "judged", "llm", "xBench-DeepSearch"),
)}


def suite_scorer(suite: str) -> str:
    """The scorer name of a suite: ours, a benchmark's (`tasks/benchmarks.py`), else "em".

    >>> suite_scorer("search"), suite_scorer("aime24"), suite_scorer("gaia"), suite_scorer("mine")
    ('f1', 'math', 'llm', 'em')
    """
    if suite in SUITE_SCORERS:
        return SUITE_SCORERS[suite]
    return BENCHMARKS[suite].scorer if suite in BENCHMARKS else DEFAULT_SCORER


def score_answer(suite: str, pred: str | None, gold: str, question: str = "",
                 scorer: str | Scorer | None = None) -> Score:
    """Score a final answer the way suite `suite` does (see the module docstring); `scorer`
    overrides the suite's choice with a name or a `Scorer` object (an LLM judge).

    >>> score_answer("math", "\\\\frac{17}{4}", "4.25")
    Score(value=1.0, correct=True, detail='equal', judge_failed=False)
    >>> s = score_answer("search", "Barack Obama Jr", "Barack Obama")
    >>> s.correct, round(s.value, 2)
    (False, 0.8)
    >>> score_answer("external", None, "x").detail
    'no final answer'
    """
    if pred is None:
        return NO_ANSWER
    chosen = scorer if scorer is not None else suite_scorer(suite)
    if not isinstance(chosen, str):
        return chosen.score(pred, gold, question)
    if chosen == "math":
        ok, why = math_check(pred, gold)
        return Score(float(ok), ok, why)
    if chosen == "em":
        ok = exact_match(pred, gold)
        return Score(float(ok), ok, "exact match" if ok else "no exact match")
    if chosen == "f1":
        ok, f1 = exact_match(pred, gold), token_f1(pred, gold)
        return Score(f1, ok, f"exact match {int(ok)}, token f1 {f1:.3f}")
    if chosen == "llm":
        raise ValueError(f"suite {suite!r} is scored by an LLM judge: pass an LLMJudgeScorer(chat) as `scorer` "
                         "(score-distill eval --judge openai:<model>@<base-url>)")
    raise ValueError(f"unknown scorer {chosen!r}; known: {', '.join(SCORER_NAMES)} or a Scorer object")
