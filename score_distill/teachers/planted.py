"""Trajectories with a known first critical error: what a teacher audit judges.

A planted case starts from a task's reference solution, changes one step so that it goes
wrong in a known way (a wrong number used later, a wrong entity carried forward, a
premature answer, ...) and executes the result in the sandbox, as a rollout would. Its
first critical error is known by construction: the changed step, `first_error`. A correct
case is a reference solution with other wording, or with a harmless variation (an unused
step, a failed step that is then fixed). The suites' planting rules live in
`planted_math.py` and `planted_search.py`; their docstrings list the kinds.

    pair = audit_pair(task, index=3, seed=0, tools=ToolConfig(), rules=MathPlanting())
    pair.correct.steps, pair.correct.first_error      # executed steps, None
    pair.planted.kind, pair.planted.first_error        # "wrong_number", 2
    pair.planted.pairs                                 # steps whose equivalence execution settled

Each planted case also carries what an audit needs around the error at k:
- `remainder`: the reference steps after k (a repair at k followed by them should reach gold);
- `pairs`: two steps taken after `steps[:k]` whose equivalence is known: the reference step
  at k against a rewording of it (equivalent), and against the planted mistake (not). The
  labels are checked by executing both steps: equivalent steps must show the same values
  (math: the same observation and answer; search: the same facts of the path and answer),
  and a pair whose execution contradicts its label is left out;
- `join_code`: code run between a repair at k and the remainder (`join_cell`): the setup the
  reference's earlier steps did (math: the Fraction import) and, for each variable the
  remainder reads that steps up to k set, its value bound under the reference's name when
  another variable holds it, so that a repair that computed the right value under a name of
  its own still continues: a teacher cannot know the reference's variable names.

Cases are deterministic in (seed, task id). Kinds are taken in turn over the task index, so
a run covers each kind about equally; a task where a kind does not apply (a guess needs a
bridge question) takes the next kind that does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from score_distill.agent.steps import execute_steps
from score_distill.tools.config import ToolConfig
from score_distill.types import Step, Task


@dataclass
class EquivalencePair:
    """Two steps taken right after the same prefix, and whether they are equivalent."""

    name: str          # "reworded" (the same step, other words) or "mistaken" (the planted step)
    a: Step
    b: Step
    equivalent: bool


@dataclass
class Case:
    """A trajectory to judge and what is known about it by construction."""

    kind: str
    steps: list[Step]                 # executed, authored "student"
    first_error: int | None = None    # None: a correct trajectory
    remainder: list[Step] = field(default_factory=list)
    join_code: str = ""               # run between a repair at first_error and the remainder
    pairs: list[EquivalencePair] = field(default_factory=list)


@dataclass
class AuditPair:
    """One task's two cases: a correct trajectory and one with a planted error."""

    task: Task
    correct: Case
    planted: Case


@dataclass
class Plant:
    """A suite rule's planted trajectory before execution: the steps, the index of the
    changed step, and a step that does what the reference step there does, in other words."""

    steps: list[Step]
    first_error: int
    reworded: Step
    off_path: bool = False   # the changed step must show a value no correct solution reaches


class SuitePlanting(Protocol):
    """What a suite provides (planted_math.MathPlanting, planted_search.SearchPlanting)."""

    correct_kinds: tuple[str, ...]
    planted_kinds: tuple[str, ...]
    difficulty: dict[str, object]   # generator settings the rules need (given over the user's)
    setup: str                      # code the remainder needs from the reference's first steps

    def correct(self, task: Task, kind: str, rng: random.Random) -> list[Step] | None:
        """A correct trajectory of `kind` (not executed), or None where the kind does not apply."""
        ...

    def plant(self, task: Task, kind: str, rng: random.Random, tools: ToolConfig) -> Plant | None:
        """A trajectory with an error of `kind`, or None where the kind does not apply."""
        ...

    def wrong(self, task: Task, steps: list[Step], plant: Plant) -> bool:
        """Whether the executed `steps` of `plant` end without the gold answer, with the
        changed step doing what its kind says (e.g. showing a value off the path)."""
        ...

    def bindings(self, task: Task, k: int) -> dict[str, str]:
        """The variables the reference remainder after step k reads, with the Python
        literal of the value each must hold (see `join_cell`)."""
        ...

    def outcome(self, task: Task, prefix: list[Step], step: Step) -> object:
        """What an executed step obtains after `prefix`: equal outcomes make steps equivalent."""
        ...


def run_steps(task: Task, steps: list[Step], tools: ToolConfig, prefix: list[Step] | None = None) -> list[Step]:
    """Steps executed in one fresh sandbox (state rebuilt from `prefix`), stopping at the
    first final answer, as the student's: the trajectory a teacher is shown."""
    return [replace(s, author="student") for s in execute_steps(task, steps, tools, prefix=prefix or [])]


def audit_pair(task: Task, index: int, seed: int, tools: ToolConfig, rules: SuitePlanting) -> AuditPair:
    """The correct and the planted case of task number `index` of an audit, by `rules`
    (teachers/audit.py `planting`: planted_math.MathPlanting, planted_search.SearchPlanting)."""
    correct = _first(rules.correct_kinds, index,
                     lambda kind: _correct_case(rules, task, kind, _rng(seed, task, kind), tools))
    planted = _first(rules.planted_kinds, index,
                     lambda kind: _planted_case(rules, task, kind, _rng(seed, task, kind), tools))
    return AuditPair(task, correct, planted)


def _rng(seed: int, task: Task, kind: str) -> random.Random:
    return random.Random(f"audit/{seed}/{task.id}/{kind}")


def _first(kinds: tuple[str, ...], index: int, make: Callable[[str], Case | None]) -> Case:
    """The case of the kind whose turn it is, or of the next kind that applies."""
    for j in range(len(kinds)):
        case = make(kinds[(index + j) % len(kinds)])
        if case is not None:
            return case
    raise ValueError(f"no kind of {kinds} applies to this task")  # our bug: the last kinds always apply


def _correct_case(rules: SuitePlanting, task: Task, kind: str, rng: random.Random, tools: ToolConfig) -> Case | None:
    steps = rules.correct(task, kind, rng)
    if steps is None:
        return None
    done = run_steps(task, steps, tools)
    if not task.score(done[-1].final_answer).correct:
        raise ValueError(f"task {task.id}: the correct case {kind!r} does not reach the answer")  # our bug
    return Case(kind, done)


def _planted_case(rules: SuitePlanting, task: Task, kind: str, rng: random.Random, tools: ToolConfig) -> Case | None:
    plant = rules.plant(task, kind, rng, tools)
    if plant is None:
        return None
    k = plant.first_error
    done = run_steps(task, plant.steps, tools)
    if len(done) <= k or not rules.wrong(task, done, plant):
        return None  # the change happened to be harmless here
    prefix = done[:k]
    reference = task.reference or []
    right = run_steps(task, [reference[k]], tools, prefix)[0]
    reworded = run_steps(task, [plant.reworded], tools, prefix)[0]
    pairs = []
    obtained = rules.outcome(task, prefix, right)
    if obtained == rules.outcome(task, prefix, reworded):
        pairs.append(EquivalencePair("reworded", right, reworded, True))
    if obtained != rules.outcome(task, prefix, done[k]):
        pairs.append(EquivalencePair("mistaken", right, done[k], False))
    return Case(kind, done, k, remainder=reference[k + 1:], join_code=join_cell(rules.setup, rules.bindings(task, k)),
                pairs=pairs)


def join_cell(setup: str, bindings: dict[str, str]) -> str:
    """Code, run after a repair and before the reference remainder: `setup`, then each of
    the remainder's variables bound to the value it must hold when it does not hold it yet
    but another variable does (a repair that computed the right value under its own name).
    It supplies no value the steps so far have not computed, except where two quantities
    of the problem are equal.

    >>> print(join_cell("", {"left": "36"}).splitlines()[-1])
    _sd_alias({'left': 36})
    """
    want = ", ".join(f"{name!r}: {value}" for name, value in bindings.items())
    return "\n".join(filter(None, [setup, ALIAS_CODE, f"_sd_alias({{{want}}})"]))


ALIAS_CODE = """def _sd_alias(_want, _g=globals()):
    from fractions import Fraction
    for _name, _value in _want.items():
        if _name in _g and type(_g[_name]) is not bool and _g[_name] == _value:
            continue
        for _k, _v in list(_g.items()):
            if not _k.startswith("_") and type(_v).__name__ in _KINDS and _v == _value:
                _g[_name] = _v
                break
_KINDS = ("int", "float", "Fraction", "Decimal", "str")"""
