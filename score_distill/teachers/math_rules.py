"""Reference-teacher rules for the `math` suite: solve, judge, repair and equivalence,
computed from the task's DAG of quantities (`meta["nodes"]`, see `tasks/math_suite.py`)
instead of asking an LLM.

    rules = MathRules()
    steps = rules.solve(task, random.Random(0))          # a varied reference solution
    verdict = rules.judge(task, executed_steps)           # first critical error, if wrong
    fix = rules.repair(task, steps[:k], steps[k], verdict)

The teacher replays the student's code in a sandbox of its own and, after every step, reads
the numeric variables of the interpreter (int, float, Fraction, Decimal) as exact rationals
(`math_trace`). Definitions the judge works with (steps are indexed as in the trajectory,
0 = the plan):

- ON-PATH values: every quantity of the problem (stated numbers, distractors included, and
  every computed node), the values that valid other decompositions pass through (`aux`:
  e.g. the part removed before the part kept, the percentage as a fraction, a conversion
  factor), 0 and 1. A float counts by its exact binary value: 36.0 and 0.25 are on-path
  when 36 and 1/4 are; 0.1 + 0.2 is not 3/10, and an inexact float is off-path.
- A step SETS a variable when, after it, the variable holds a number it did not hold
  before. A step USES a variable when its code reads it anywhere but in a bare `print(...)`
  statement; the value read is the one the latest earlier setting step left. A step COPIES a
  value when its code writes it as a literal (within a relative 1e-6, as copied digits are)
  after an earlier step set or printed it.
- An off-path value set (or printed) at step k is USED when a later step uses that variable
  while it still holds the value, or copies the value.

The FIRST CRITICAL ERROR of a wrong trajectory is the earliest of: every step that set or
printed an off-path value that is then used (a wrong number carried forward, a wrong
operation whose result is used), and the step that called `final_answer` with a wrong answer
(a premature answer, a wrong last operation, an inexact decimal). Not errors: a step
computing something that is never used (redundant or harmless), independent quantities in
either order, a different but correct decomposition (values all on-path, e.g. a*(b+c) for
a*b + a*c; a value that valid decompositions pass through is flagged only where its misuse
produces an off-path value), and parse errors, crashes and timeouts that are then fixed
(parse-error steps count as steps but run nothing; timed-out steps are skipped, since the
sandbox restores the state before them). If the trajectory never answered and nothing above
applies, the error is the step right after the last step that established a new quantity of
the problem; when that step was the final turn (the budget ran out while progressing), the
first action that established nothing is blamed, the plan if there is none.

Repair writes the next step of the reference from what the prefix has established (the
problem's quantities held by some variable): the first quantity still needed for the answer
whose inputs are all established, computed from the student's own variables (floats passed
through Fraction, so the result stays exact) and the stated numbers, or `final_answer` of the
answer's variable when it is established. It never writes a computed value as a literal, so
the gold answer appears only as the result of a `final_answer` call. At index 0 it writes a
new plan. Two steps from the same prefix are equivalent when they establish the same new
quantities, set the same off-path values and give the same final answer (steps that do none
of these: when both failed or both ran cleanly); two plans when both parse.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from fractions import Fraction

from score_distill.tasks.math_grammar import Node
from score_distill.tasks.math_solution import FINAL_FRAMES, IMPORT, node_code, plan_text, step_thought, write_solution
from score_distill.tasks.math_suite import parse_exact
from score_distill.teachers.base import Verdict
from score_distill.teachers.math_trace import ExecutorFactory, Trace, Value, replay
from score_distill.types import Step, Task


@dataclass
class Problem:
    """The task's DAG, as the rules need it."""

    nodes: list[Node]
    answer: str
    valid: frozenset[Fraction]

    @property
    def computed(self) -> list[Node]:
        return [n for n in self.nodes if n.op != "given"]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def problem_of(task: Task) -> Problem:
    """Read the DAG from a generated task's meta; a task without one is our bug (the rules
    were given a task of another suite or an external file)."""
    if task.suite != "math" or "nodes" not in task.meta:
        raise ValueError(f"task {task.id}: the math reference rules need a generated math task (meta['nodes'])")
    nodes = [Node.from_dict(d) for d in task.meta["nodes"]]
    valid = {Fraction(0), Fraction(1)}
    for n in nodes:
        valid.add(n.value)
        valid.update(n.aux)
    return Problem(nodes, task.meta["answer_node"], frozenset(valid))


def on_path(p: Problem, v: Value) -> bool:
    return v.value is not None and v.value in p.valid


def established(p: Problem, env: dict[str, Value]) -> dict[str, str]:
    """Computed node -> a variable holding its exact value (the node's own name preferred)."""
    out: dict[str, str] = {}
    for n in p.computed:
        holders = [k for k, v in env.items() if v.value == n.value]
        if holders:
            out[n.name] = n.name if n.name in holders else holders[0]
    return out


def first_final(steps: list[Step]) -> tuple[int, str] | None:
    """The step that ended the episode with final_answer and its answer."""
    return next(((i, s.final_answer) for i, s in enumerate(steps) if s.final_answer is not None), None)


class MathRules:
    """The `math` suite's reference rules (see the module docstring for the definitions)."""

    def __init__(self, executor: ExecutorFactory | None = None, cache_size: int = 4096) -> None:
        """`executor` makes the sandbox a replay runs in (default: a `Sandbox` with the
        default configuration); each replay gets a fresh one, so calls may run in threads."""
        self.executor = executor
        self._cache: dict[tuple[str, ...], Trace] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _trace(self, task: Task, steps: list[Step]) -> Trace:
        """Replay `steps`, cached by their code (RL asks about the same prefix many times)."""
        key = (task.id,) + tuple(f"{s.kind}|{s.parse_error is None}|{s.timed_out}|{s.code}" for s in steps)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        trace = replay(steps, self.executor)
        with self._lock:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = trace
        return trace

    # ----- solve -------------------------------------------------------------------------
    def solve(self, task: Task, rng: random.Random) -> list[Step]:
        p = problem_of(task)
        return write_solution(p.nodes, p.answer, rng)

    # ----- judge -------------------------------------------------------------------------
    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        p = problem_of(task)
        final = first_final(steps)
        if final is not None and parse_exact(final[1]) == parse_exact(task.answer):
            return Verdict(correct=True, analysis="The final answer is right.")
        trace = self._trace(task, steps)
        errors = self._critical(p, steps, trace)
        if final is not None:
            errors.setdefault(final[0], f"step {final[0]} answers {final[1]!r}, which is not the asked quantity")
        if not errors:
            k, why = self._stalled(p, steps, trace)
            errors[k] = why
        k = min(errors)
        env = trace.env_before(k)
        return Verdict(correct=False, first_error=k, analysis=errors[k], suggestion=self._suggest(p, env, k))

    def _critical(self, p: Problem, steps: list[Step], trace: Trace) -> dict[int, str]:
        """Steps that set or printed an off-path value that a later step uses."""
        out: dict[int, str] = {}
        for k, run in enumerate(trace.runs):
            for name, v in run.assigned.items():
                if on_path(p, v):
                    continue
                j = trace.first_use(name, k)
                if j is None:
                    j = trace.first_copy(v.value, k)
                if j is not None:
                    out.setdefault(k, f"step {k} sets {name} = {v.text}, which no correct solution reaches, "
                                      f"and step {j} builds on it")
            for value in run.printed:
                if value not in p.valid and k not in out:
                    j = trace.first_copy(value, k)
                    if j is not None:
                        out[k] = f"step {k} shows {value}, which no correct solution reaches, and step {j} copies it"
        return out

    def _stalled(self, p: Problem, steps: list[Step], trace: Trace) -> tuple[int, str]:
        """The error of a trajectory that never answered and carried no wrong value."""
        known: set[str] = set()
        progress: list[bool] = []
        for k in range(len(steps)):
            now = set(established(p, trace.env_after(k)))
            progress.append(bool(now - known))
            known |= now
        last = max((k for k, made in enumerate(progress) if made), default=0)
        if last + 1 < len(steps):
            return last + 1, f"no final answer: nothing new is established after step {last}"
        idle = next((k for k in range(1, len(steps)) if not progress[k]), 0)
        return idle, f"no final answer within the step budget; step {idle} established nothing new"

    def _suggest(self, p: Problem, env: dict[str, Value], k: int) -> str:
        if k == 0:
            return "Plan the quantities to compute in order, from the stated numbers to the asked one."
        nxt = self._next(p, established(p, env))
        if nxt is None:
            return "Give the final answer: the variable that holds the asked quantity."
        return f"Work out {nxt.desc}: {nxt.hint}."

    # ----- repair ------------------------------------------------------------------------
    @staticmethod
    def _next(p: Problem, done: dict[str, str]) -> Node | None:
        """The next quantity to compute: the first (in reference order) that the answer still
        needs and whose inputs are all established; None when the answer is established."""
        if p.answer in done:
            return None
        needed: set[str] = set()
        todo = [p.answer]
        while todo:
            name = todo.pop()
            if name in needed or name in done:
                continue
            needed.add(name)
            todo.extend(p.node(name).args)
        return next(n for n in p.computed if n.name in needed and all(a in done for a in n.args))

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        p = problem_of(task)
        rng = random.Random(f"{task.id}/repair/{len(prefix)}")
        if not prefix:
            return Step(kind="plan", thought=plan_text(p.nodes, rng), author="teacher")
        trace = self._trace(task, prefix)
        env = trace.env_after(len(prefix) - 1)
        done = established(p, env)
        node = self._next(p, done)
        if node is None:
            answer = p.node(p.answer)
            return Step(kind="action", thought=rng.choice(FINAL_FRAMES).format(desc=answer.desc),
                        code=f"final_answer({done[p.answer]})", author="teacher")
        floats = frozenset(done[a] for a in node.args if env[done[a]].type != "int"
                           and env[done[a]].type != "Fraction")
        target = node.name
        i = 2
        while target in env and env[target].value != node.value:   # do not overwrite a student variable
            target, i = f"{node.name}_{i}", i + 1
        lines = [IMPORT] if "Fraction(" in node.expr + "".join(f"Fraction({f})" for f in floats) \
            and not trace.fraction_bound else []
        lines.append(node_code(node, done, floats, target))
        lines.append(f"final_answer({target})" if node.name == p.answer else f"print({target})")
        return Step(kind="action", thought=step_thought(node, rng), code="\n".join(lines), author="teacher")

    # ----- equivalence -------------------------------------------------------------------
    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        if a.kind == "plan" or b.kind == "plan":
            return a.kind == b.kind and a.parse_error is None and b.parse_error is None
        return self._effect(task, prefix, a) == self._effect(task, prefix, b)

    def _effect(self, task: Task, prefix: list[Step], step: Step) -> tuple[object, ...]:
        """What a step adds to the prefix: new quantities, off-path values, final answer."""
        p = problem_of(task)
        trace = self._trace(task, prefix + [step])
        k = len(prefix)
        before = set(established(p, trace.env_before(k)))
        after = set(established(p, trace.env_after(k)))
        run = trace.runs[k]
        off = frozenset(v.value for v in run.assigned.values() if not on_path(p, v))
        answer = None if step.final_answer is None and run.final is None else \
            parse_exact(run.final if run.final is not None else step.final_answer)
        effect = (frozenset(after - before), off, answer, run.final is not None or step.final_answer is not None)
        failed = not step.ok or run.failed
        return effect + ((failed,) if not (effect[0] or effect[1] or effect[3]) else ())


