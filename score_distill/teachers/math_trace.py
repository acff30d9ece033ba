"""Replaying a trajectory's code in a sandbox and reading, after every step, the numbers its
interpreter holds: what the `math` reference rules judge, repair and compare with.

    trace = replay(steps)                  # a fresh sandbox of its own, closed afterwards
    trace.env_after(3)                     # {"apples_left": Value("Fraction", 36, "36"), ...}
    trace.runs[3].assigned                     # the variables step 3 set (new or changed)
    trace.first_use("apples_left", 3)      # the first later step that reads it, or None

After each step a snapshot cell (the teacher's, never shown to the student) hands the
interpreter's numeric globals back through `final_answer`, which the sandbox returns whole
(printed output would be capped). Numbers are exact: ints, Fractions, Decimals and floats all
arrive as integer ratios, so a float is judged by its exact binary value. Steps that failed
to parse or timed out are not run (the sandbox restores the state before a timeout anyway).
A student step that breaks the snapshot itself (say, by rebinding `type`) leaves the
previous snapshot in place: such a step then seems to set nothing.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable, Protocol

from score_distill.types import Step

# Runs in the sandbox after every step. Underscore names are skipped, so the function's own
# name (left defined) never shows up as a student variable.
SNAPSHOT_CODE = """
def _sd_snapshot(_g=globals()):
    import json as _json, fractions as _fractions
    _out = {}
    for _k, _v in list(_g.items()):
        if _k.startswith("_") or type(_v).__name__ not in ("int", "float", "Fraction", "Decimal"):
            continue
        try:
            _n, _d = _v.as_integer_ratio()
        except (ValueError, OverflowError, TypeError, AttributeError):
            continue
        _out[_k] = [type(_v).__name__, f"{_n}/{_d}" if max(abs(_n), _d).bit_length() <= 256 else None]
    return _json.dumps({"values": _out, "fraction": _g.get("Fraction") is _fractions.Fraction})
final_answer(_sd_snapshot())
"""
# Copied digits: a literal within this relative distance of a shown value is a copy of it.
COPY_TOLERANCE = 1e-6
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:/\d+)?(?![\w.])")


class CellLike(Protocol):
    output: str
    error: str | None
    timed_out: bool
    final_answer: str | None


class Executor(Protocol):
    """What replay needs of a sandbox (score_distill.tools.sandbox.Sandbox fits)."""

    def run(self, code: str) -> CellLike: ...

    def close(self) -> None: ...


ExecutorFactory = Callable[[], Executor]


def default_executor() -> Executor:
    from score_distill.tools.sandbox import Sandbox  # imported on use: tests may pass their own

    return Sandbox()


@dataclass(frozen=True)
class Value:
    """A numeric variable: its Python type and exact value (None when too large to matter)."""

    type: str
    value: Fraction | None

    @property
    def text(self) -> str:
        if self.value is None:
            return "a huge number"
        return repr(float(self.value)) if self.type == "float" else str(self.value)


@dataclass
class StepRun:
    """What one step did when replayed."""

    ran: bool = False
    failed: bool = False
    final: str | None = None
    assigned: dict[str, Value] = field(default_factory=dict)
    printed: list[Fraction] = field(default_factory=list)
    uses: set[str] = field(default_factory=set)
    literals: list[Fraction] = field(default_factory=list)


@dataclass
class Trace:
    runs: list[StepRun]
    envs: list[dict[str, Value]]      # numeric globals after each step
    fraction_bound: bool = False      # `Fraction` names fractions.Fraction after the last step

    def env_after(self, k: int) -> dict[str, Value]:
        return self.envs[k] if k >= 0 else {}

    def env_before(self, k: int) -> dict[str, Value]:
        return self.env_after(k - 1)

    def first_use(self, name: str, k: int) -> int | None:
        """The first step after k that uses `name` while it holds the value step k left."""
        for j in range(k + 1, len(self.runs)):
            if name in self.runs[j].uses:
                return j
            if name in self.runs[j].assigned or name not in self.envs[j]:
                return None
        return None

    def first_copy(self, value: Fraction | None, k: int) -> int | None:
        """The first step after k writing `value` as a literal. Small whole numbers are not
        counted: a literal 3 is far more likely a stated number than a copied result."""
        if value is None or (value.denominator == 1 and abs(value) < 100):
            return None
        for j in range(k + 1, len(self.runs)):
            if any(abs(lit - value) <= COPY_TOLERANCE * abs(value) for lit in self.runs[j].literals):
                return j
        return None


def numbers_in(text: str) -> list[Fraction]:
    """The numbers written in a text (integers, decimals, fractions).

    >>> numbers_in("36 then 9/2, then 0.25; x2 is not one")
    [Fraction(36, 1), Fraction(9, 2), Fraction(1, 4)]
    """
    out = []
    for m in _NUMBER.finditer(text):
        top, _, bottom = m.group().partition("/")
        if bottom and int(bottom) == 0:
            continue
        out.append(Fraction(top) / (Fraction(bottom) if bottom else 1))
    return out


def code_facts(code: str) -> tuple[set[str], list[Fraction]]:
    """The names a step's code uses (not counting bare print(...) statements) and its
    numeric literals; nothing when the code is not Python.

    >>> uses, literals = code_facts("y = x * 2.5\\nprint(z)\\nt += 1")
    >>> sorted(uses), sorted(literals)
    (['t', 'x'], [Fraction(1, 1), Fraction(5, 2)])
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return set(), []
    uses: set[str] = set()
    for stmt in tree.body:
        if (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "print"):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                uses.add(node.id)
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
                uses.add(node.target.id)
    literals = [Fraction(n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant)
                and type(n.value) in (int, float) and abs(n.value) != float("inf") and n.value == n.value]
    return uses, literals


def _read_snapshot(text: str | None) -> tuple[dict[str, Value], bool] | None:
    if text is None:
        return None
    try:
        data = json.loads(text)
        values = {k: Value(t, Fraction(v) if v is not None else None) for k, (t, v) in data["values"].items()}
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    return values, bool(data.get("fraction"))


def replay(steps: list[Step], executor: ExecutorFactory | None = None) -> Trace:
    """Run every runnable step in a fresh sandbox and snapshot its numbers after each."""
    sandbox = (executor or default_executor)()
    runs: list[StepRun] = []
    envs: list[dict[str, Value]] = []
    env: dict[str, Value] = {}
    fraction = False
    try:
        for step in steps:
            run = StepRun()
            runnable = step.kind == "action" and step.parse_error is None and not step.timed_out
            if runnable:
                result = sandbox.run(step.code)
                run.ran, run.final = True, result.final_answer
                run.failed = result.error is not None or result.timed_out
                run.printed = numbers_in(result.output)
                run.uses, run.literals = code_facts(step.code)
                snap = _read_snapshot(sandbox.run(SNAPSHOT_CODE).final_answer)
                if snap is not None:
                    new_env, fraction = snap
                    run.assigned = {k: v for k, v in new_env.items() if env.get(k) != v}
                    env = new_env
            runs.append(run)
            envs.append(dict(env))
    finally:
        sandbox.close()
    return Trace(runs, envs, fraction)
