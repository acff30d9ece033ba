"""Which items SCoRe-RL trains on, and in which order.

The RL pool is every key-step item (an intervention the teacher made and the final success
verified) plus a seeded share of the outcome-only items (tasks solved without help, started
from the question). Each step takes a slice of a seeded permutation of the pool, a new one
per epoch, so the sequence is a pure function of the step number and a resumed run
continues it exactly.
"""

from __future__ import annotations

import random

from score_distill.types import KeyStepItem, Task


def outcome_items(tasks: list[Task]) -> list[KeyStepItem]:
    """Outcome-only items (empty prefix, no chosen/rejected) for tasks: the GRPO baseline.

    >>> [i.task_id for i in outcome_items([Task(id="a", question="q", answer="1", suite="math")])]
    ['a']
    """
    return [KeyStepItem(task_id=t.id, question=t.question, answer=t.answer, suite=t.suite) for t in tasks]


def select_pool(items: list[KeyStepItem], outcome_only_share: float, seed: int) -> list[KeyStepItem]:
    """Every item with an intervention plus a seeded `outcome_only_share` of the others.

    >>> from score_distill.types import Step
    >>> key = KeyStepItem("k", "q", "1", "math", chosen=Step(kind="plan", thought="p"))
    >>> rest = outcome_items([Task(id=str(i), question="q", answer="1", suite="math") for i in range(4)])
    >>> len(select_pool([key] + rest, 0.5, 0)), len(select_pool([key] + rest, 0.0, 0))
    (3, 1)
    """
    keyed = [i for i in items if i.chosen is not None]
    plain = [i for i in items if i.chosen is None]
    random.Random(f"pool-{seed}").shuffle(plain)
    return keyed + plain[: round(outcome_only_share * len(plain))]


def items_for_step(n_pool: int, step: int, per_step: int, seed: int) -> list[int]:
    """Pool indices of a step's items: consecutive slices of a fresh seeded permutation per
    epoch. A pure function of the step, so a resumed run continues the same sequence.

    >>> first = items_for_step(5, 0, 5, 0)
    >>> sorted(first), items_for_step(5, 0, 5, 0) == first
    ([0, 1, 2, 3, 4], True)
    >>> len(items_for_step(5, 1, 3, 0))
    3
    """
    out = []
    for i in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(i, n_pool)
        order = list(range(n_pool))
        random.Random(f"order-{seed}-{epoch}").shuffle(order)
        out.append(order[pos])
    return out
