"""The `math` suite: generated multi-step word problems that need code to solve reliably,
with exact answers and a reference CodeAct solution on every task.

    tasks = generate("train", n=1000, seed=0)              # thousands per second
    tasks = generate("ood", n=200, seed=0, distractors=(1, 2))

Problems are composed from a small grammar (`math_grammar`, `math_ops`, `math_compose`):
quantities with units, operations (add, subtract, percentages, splitting, multiples and
ratios, merges of two people's amounts, prices, weights, times, wages, packing, unit
conversions), several phrasings per operation, and distractor numbers. Each task's `meta`
holds the problem's DAG (`nodes`: every given and computed quantity with its exact value,
inputs, code expression and the values valid other decompositions pass through), which is
what the reference teacher (`teachers/math_rules.py`) judges and repairs against.

Splits. A problem's *signature* is its composition: shape, then each operation with its kind
of quantity and phrasing. `train`, `dev` and `test` take disjoint sets of signatures (by a
hash: 70/10/20), so dev and test problems are new compositions of parts seen in training.
`ood` takes only problems with at least one reserved feature (`OOD_FEATURES`: operations on
kinds of quantity, a phrasing and operation pairs that the other splits never contain), and
by default 3-4 operations against 2-3 (half of them one operation longer than any train
problem). Splits therefore never share a question, whatever the sizes and seeds.

Default difficulty, calibrated on SmolLM2-135M (`bench/calibration.txt`): BC on 1,024 train
problems reaches 62% on `test` and 12% on `ood` (512: 34% on test; 256 of the older 2-4
operation problems: 3%). Four-operation ood problems alone gave 6%, four or five 0%: the
student stops after as many steps as it was trained on.

Answers are integers or reduced fractions ("42", "17/4"), never decimals; `score` accepts any
exactly equal form ("4.25", "\\frac{17}{4}").
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass, fields
from fractions import Fraction

from score_distill.config import option
from score_distill.tasks.math_compose import build_problem
from score_distill.tasks.math_grammar import Problem
from score_distill.tasks.math_solution import write_solution
from score_distill.types import Task

SPLITS = ("train", "dev", "test", "ood")
# Signature hash buckets (out of 100) of the in-distribution splits.
BUCKETS = {"train": range(0, 70), "dev": range(70, 80), "test": range(80, 100)}
OOD_FEATURES: frozenset[str] = frozenset({
    "percent_increase:mass", "percent_increase:volume", "ratio:money", "divide:volume",
    "subtract:money:1", "pair:percent_decrease>percent_of", "pair:percent_of>percent_decrease",
    "pair:divide>ratio",
})


@dataclass
class MathDifficulty:
    """The dials of the generator (pass any of them to `generate` as keywords)."""

    min_ops: int = option(2, "fewest operations in a train/dev/test problem")
    max_ops: int = option(3, "most operations in a train/dev/test problem")
    ood_min_ops: int = option(3, "fewest operations in an ood problem")
    ood_max_ops: int = option(4, "most operations in an ood problem")
    distractors: tuple[int, int] = option((0, 1), "range of distractor numbers per problem")
    fraction_rate: float = option(0.35, "chance an operation may give a non-integer when it can")
    merge_rate: float = option(0.25, "chance a problem follows a second person and merges the two")
    convert_rate: float = option(0.3, "chance the question asks in another unit")
    pair_rate: float = option(0.35, "chance a reference step computes two quantities instead of one")


def split_of(signature: str) -> str:
    """The in-distribution split a composition belongs to.

    >>> split_of("chain|start:count:0|add:count:1") in ("train", "dev", "test")
    True
    """
    bucket = int(hashlib.sha256(signature.encode()).hexdigest(), 16) % 100
    return next(name for name, r in BUCKETS.items() if bucket in r)


def accepts(split: str, problem: Problem) -> bool:
    """Whether `problem` belongs to `split` (the definition that keeps splits disjoint)."""
    reserved = bool(OOD_FEATURES.intersection(problem.features))
    if split == "ood":
        return reserved
    return not reserved and split_of(problem.signature) == split


def generate(split: str, n: int, seed: int, **difficulty: object) -> list[Task]:
    """`n` tasks of `split`, deterministic in (split, n, seed, difficulty); the first k tasks
    of a larger n are the same as those of n=k."""
    if split not in SPLITS:
        raise ValueError(f"unknown math split {split!r}; expected one of {SPLITS}")
    known = {f.name for f in fields(MathDifficulty)}
    unknown = set(difficulty) - known
    if unknown:
        raise ValueError(f"unknown difficulty settings {sorted(unknown)}; known: {sorted(known)}")
    d = MathDifficulty(**difficulty)  # type: ignore[arg-type]
    lo, hi = (d.ood_min_ops, d.ood_max_ops) if split == "ood" else (d.min_ops, d.max_ops)
    prefer = OOD_FEATURES if split == "ood" else frozenset()
    tasks: list[Task] = []
    seen: set[str] = set()
    for i in range(n):
        rng = random.Random(f"math/{seed}/{split}/{i}")
        for _ in range(2000):
            problem = build_problem(rng, rng.randint(lo, hi), rng.randint(*d.distractors), d.fraction_rate,
                                    d.merge_rate, d.convert_rate, prefer)
            if accepts(split, problem) and problem.question not in seen:
                break
        else:
            raise RuntimeError(f"no {split} problem found for task {i}: the difficulty settings exclude them all")
        seen.add(problem.question)
        tasks.append(make_task(problem, f"math-{seed}-{split}-{i}", split, rng, d))
    return tasks


def make_task(problem: Problem, task_id: str, split: str, rng: random.Random, d: MathDifficulty) -> Task:
    answer = next(node.value for node in problem.nodes if node.name == problem.answer)
    reference = write_solution(problem.nodes, problem.answer, rng, pair_rate=d.pair_rate)
    meta = {"split": split, "n_ops": len(problem.ops), "ops": problem.ops, "shape": problem.shape,
            "signature": problem.signature, "features": problem.features,
            "nodes": [node.to_dict() for node in problem.nodes], "answer_node": problem.answer,
            "difficulty": asdict(d)}
    return Task(id=task_id, question=problem.question, answer=str(answer), suite="math", reference=reference,
                meta=meta)


_FRAC_TEX = re.compile(r"^(-?)\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}$")
_FRAC_REPR = re.compile(r"^Fraction\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?\)$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?(\s*/\s*[-+]?\d+)?$")


def parse_exact(text: str | None) -> Fraction | None:
    """Read an answer as an exact rational; None when it is not one number.

    >>> forms = ["17/4", "4.25", "\\\\frac{17}{4}", "$\\\\boxed{17/4}$", "1,200", "Fraction(17, 4)"]
    >>> [str(parse_exact(t)) for t in forms]
    ['17/4', '17/4', '17/4', '17/4', '1200', '17/4']
    >>> parse_exact("4 1/4"), parse_exact("about 4"), parse_exact("12 kg")
    (None, None, Fraction(12, 1))
    """
    if text is None:
        return None
    s = str(text).strip().rstrip(".").strip()
    s = s.strip("$").strip()
    s = re.sub(r"^\\boxed\{(.*)\}$", r"\1", s).strip()
    s = re.sub(r"^\\\((.*)\\\)$", r"\1", s).strip()
    s = re.sub(r"\s*[A-Za-z]+$", "", s) if re.search(r"\d\s*[A-Za-z]+$", s) and "frac" not in s else s
    s = s.lstrip("$").strip()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = _FRAC_TEX.match(s)
    if m:
        num, den = int(m.group(2)), int(m.group(3))
        return None if den == 0 else (-1 if m.group(1) else 1) * Fraction(num, den)
    m = _FRAC_REPR.match(s)
    if m:
        den = int(m.group(2) or 1)
        return None if den == 0 else Fraction(int(m.group(1)), den)
    if not _NUMBER.match(s):
        return None
    top, _, bottom = s.partition("/")
    den = Fraction(bottom.strip()) if bottom else Fraction(1)
    return None if den == 0 else Fraction(top.strip()) / den


def canonical(text: str | None) -> str | None:
    """The canonical form of an exact answer ("4.25" -> "17/4"), None when unreadable.

    >>> canonical("8.0"), canonical("-6/4")
    ('8', '-3/2')
    """
    value = parse_exact(text)
    return None if value is None else str(value)


def score(prediction: str | None, gold: str) -> float:
    """1.0 when the prediction is exactly the gold rational, else 0.0.

    >>> score("4.25", "17/4"), score("4.2", "17/4"), score(None, "3")
    (1.0, 0.0, 0.0)
    """
    value, target = parse_exact(prediction), parse_exact(gold)
    return 1.0 if value is not None and value == target else 0.0
