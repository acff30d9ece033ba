"""Reference solutions of `math` problems: a plan, then CodeAct steps that compute one or two
quantities of the problem's DAG each into well-named variables, ending with `final_answer`.

Arithmetic stays exact: every division goes through `Fraction`, so printed values and the
final answer are integers or reduced fractions ("595/2"). The same functions write the
suite's stored reference (`write_solution`) and, with other random choices, the reference
teacher's varied solutions and its one-step repairs (`node_code`, `step_thought`).

    >>> from score_distill.tasks.math_grammar import Node
    >>> n = Node("apples_left", "subtract", Fraction(30), expr="{0} - 6", args=["apples"])
    >>> node_code(n, {"apples": "my_apples"})
    'apples_left = my_apples - 6'
"""

from __future__ import annotations

import random
from fractions import Fraction

from score_distill.agent.format import format_observation
from score_distill.tasks.math_grammar import Node
from score_distill.types import Step

IMPORT = "from fractions import Fraction"

PLAN_OPENERS = ("First find {a}", "Start by working out {a}", "I will first compute {a}", "Begin with {a}")
PLAN_LINKS = ("then {b}", "next {b}", "after that {b}", "then use it to get {b}")
PLAN_ENDS = ("and finally {z}", "and at last {z}", "which leads to {z}")
EXACT_NOTES = ("", " Keep the numbers exact with fractions.", " Use exact arithmetic throughout.")
UNUSED_NOTES = ("", " Some numbers in the text are not needed.", " Not every number in the text matters.")
THOUGHT_FRAMES = ("{Hint}, which gives {desc}.", "Now find {desc}: {hint}.", "To get {desc}, {hint}.",
                  "Next is {desc}; {hint}.")
FINAL_FRAMES = ("That is the answer.", "This is what the question asks for.", "Report {desc}.")


def computed(nodes: list[Node]) -> list[Node]:
    """The computed nodes (the solution's quantities) in order."""
    return [n for n in nodes if n.op != "given"]


def node_code(node: Node, names: dict[str, str], wrap: frozenset[str] = frozenset(), target: str = "") -> str:
    """The assignment computing `node`; `names` maps its args to variable names (default: the
    arg's own name), `wrap` lists variables to pass through Fraction (they hold floats), and
    `target` renames the result."""
    args = []
    for a in node.args:
        var = names.get(a, a)
        args.append(f"Fraction({var})" if var in wrap else var)
    return f"{target or node.name} = {node.expr.format(*args)}"


def step_thought(node: Node, rng: random.Random) -> str:
    """A sentence saying what the step computes and how (no computed value in it)."""
    frame = rng.choice(THOUGHT_FRAMES)
    hint = node.hint
    return frame.format(hint=hint, Hint=hint[:1].upper() + hint[1:], desc=node.desc)


def plan_text(nodes: list[Node], rng: random.Random) -> str:
    """A plan naming the quantities in order (the middle ones abridged when there are many)."""
    descs = [n.desc for n in computed(nodes) if n.op != "convert" or n is computed(nodes)[-1]]
    if len(descs) > 4:
        descs = descs[:2] + descs[-2:]
    parts = [rng.choice(PLAN_OPENERS).format(a=descs[0])]
    parts += [rng.choice(PLAN_LINKS).format(b=d) for d in descs[1:-1]]
    if len(descs) > 1:
        parts.append(rng.choice(PLAN_ENDS).format(z=descs[-1]))
    notes = rng.choice(EXACT_NOTES) if uses_fraction(nodes) else ""
    if any(n.distractor for n in nodes):
        notes += rng.choice(UNUSED_NOTES)
    return ", ".join(parts) + "." + notes


def uses_fraction(nodes: list[Node]) -> bool:
    return any("Fraction(" in n.expr for n in computed(nodes))


def group_steps(nodes: list[Node], rng: random.Random, pair_rate: float = 0.35) -> list[list[Node]]:
    """Split the computed nodes into steps of one or two."""
    groups: list[list[Node]] = []
    for n in computed(nodes):
        if groups and len(groups[-1]) == 1 and rng.random() < pair_rate:
            groups[-1].append(n)
        else:
            groups.append([n])
    return groups


def write_solution(nodes: list[Node], answer: str, rng: random.Random, separate_final: float = 0.25,
                   pair_rate: float = 0.35) -> list[Step]:
    """A full reference solution with observations filled in (printed values, exact)."""
    steps = [Step(kind="plan", thought=plan_text(nodes, rng), author="teacher")]
    groups = group_steps(nodes, rng, pair_rate)
    final_alone = rng.random() < separate_final
    need_import = uses_fraction(nodes)
    answer_value = next(n.value for n in nodes if n.name == answer)
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        lines = [IMPORT] if need_import and i == 0 else []
        lines += [node_code(n, {}) for n in group]
        shown = [n for n in group if not (last and not final_alone and n.name == answer)]
        if shown:
            lines.append(f"print({', '.join(n.name for n in shown)})")
        thought = " ".join(step_thought(n, rng) for n in group)
        if last and not final_alone:
            lines.append(f"final_answer({answer})")
        out = " ".join(str(n.value) for n in shown)
        steps.append(Step(kind="action", thought=thought, code="\n".join(lines), author="teacher",
                          observation=format_observation(out + "\n" if out else ""),
                          final_answer=str(answer_value) if last and not final_alone else None))
    if final_alone:
        desc = next(n.desc for n in nodes if n.name == answer)
        steps.append(Step(kind="action", thought=rng.choice(FINAL_FRAMES).format(desc=desc), author="teacher",
                          code=f"final_answer({answer})", observation=format_observation(""),
                          final_answer=str(answer_value)))
    return steps
