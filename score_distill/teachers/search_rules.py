"""Reference-teacher rules for the `search` suite: solve, judge, repair and equivalence,
computed from the task's solution path (`meta["path"]`) instead of asking an LLM.

    rules = SearchRules()
    steps = rules.solve(task, random.Random(0))          # a varied reference solution
    verdict = rules.judge(task, executed_steps)           # first critical error, if wrong
    fix = rules.repair(task, steps[:k], steps[k], verdict)

Definitions the judge works with (steps are indexed as in the trajectory, 0 = the plan):

- The solution path is the list of hops (source entity, relation, value): one chain for a
  bridge question, two independent chains for a comparison. On-path items are the anchors,
  the sources and the values of the hops (names, and years as text).
- A hop is *established* at step t when step t's observation contains the sentence of the
  source's document that states the value: the agent has seen the fact, whatever query
  found it and in whichever order the chains were followed.
- A step *refers to* the world's entity names and the years written in its code, reading
  through variables assigned a literal earlier (`author = "X"` ... `web_search(author)`),
  and to its final answer. An item that is not on the path is *off-path*; it is *used* when
  a later step refers to it again or it becomes a final answer.
- Blame for a used off-path item x, first referred to at step t: if x is one of the facts
  (links or year) of an off-path entity y referred to before t, x came from following y
  and the blame is y's. Otherwise, if the first observation that showed x belongs to a
  step that referred to an off-path y (it searched for a wrong entity), the blame is y's.
  Otherwise it is t: x was extracted wrongly from a right search, or guessed unseen.

The FIRST CRITICAL ERROR of a wrong trajectory is the earliest of: the blamed step of every
used off-path item (a wrong entity searched and its result used, a wrong entity extracted
and used, a guess), and every step that calls `final_answer` with a wrong answer (a
premature answer after skipped hops, or a wrong one at the end). Not errors: a repeated or
extra search whose result is not used, the two chains of a comparison in either order, any
query wording that finds the fact, and parse or runtime errors that are then fixed. If the
trajectory never answered and nothing above applies, the error is the step right after the
last step that established a new hop (when that last step is the final turn, the budget ran
out: the first step that established nothing is blamed, the plan if there is none).
Parse-error steps count as steps: they run nothing, establish nothing and refer to nothing.

Repair writes the next step of the reference from the prefix's position on the path: the
first hop not yet established is searched next (all established: the answer), binding as
literals the established values the rest of the reference needs, so the reference remainder
runs after it. It only writes values the prefix has already shown, so the gold answer
appears in a repaired step only where the student's own observations already showed it.
Two steps from the same prefix are equivalent when they establish the same new hops, refer
to the same off-path items and give the same final answer (two plans: when both parse).
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass

from score_distill.tasks.scoring import exact_match, normalize_answer
from score_distill.tasks.search_reference import (DESCRIBE, move_step, moves, needed_binds, plan_step,
                                                  reference_steps, source_hop)
from score_distill.tasks.search_wording import verb
from score_distill.tasks.world import World, build_world
from score_distill.teachers.base import Verdict
from score_distill.types import Step, Task

_YEAR = re.compile(r"(?<![\w.])(1[0-9]{3}|20[0-9]{2})(?![\w.])")


@dataclass
class _Path:
    """What the rules need to know about a task's solution."""

    world: World
    hops: list[dict]
    on_path: set[str]        # lower-case names and years of the path
    facts: list[str]         # per hop: the normalised sentence stating it
    gold: str


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _path(task: Task) -> _Path:
    corpus = str(task.meta.get("corpus", ""))
    if task.suite != "search" or "path" not in task.meta or not corpus.startswith("embedded:"):
        raise ValueError(f"task {task.id} is not a generated search task (no path / embedded corpus in meta)")
    world = build_world(int(corpus.split(":", 1)[1]))
    hops = task.meta["path"]
    on_path = {a.lower() for a in task.meta["anchors"]}
    facts = []
    for h in hops:
        on_path |= {h["source"].lower(), h["value"].lower()}
        source = world.by_name(h["source"])
        if source is None:
            raise ValueError(f"task {task.id}: {h['source']!r} is not in the world of {corpus}")
        sentences = [s for s in re.split(r"(?<=\.)\s+", source.text) if h["value"] in s]
        facts.append(_norm(sentences[0] if sentences else source.text))
    return _Path(world, hops, on_path, facts, task.answer)


def _established(p: _Path, observation: str) -> set[int]:
    obs = _norm(observation)
    return {i for i, f in enumerate(p.facts) if f in obs}


def shown_hops(task: Task, observation: str) -> set[int]:
    """The hops of `task`'s path whose fact `observation` shows (what a step established)."""
    return _established(_path(task), observation)


def _names_read(code: str) -> tuple[list[str], dict[str, str]] | None:
    """Variable names the code reads and the literal assignments it makes; None if it
    does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # model text: unparsable is data
        return None
    reads = [n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)]
    assigns: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                value = node.value.value
                if isinstance(target, ast.Name) and isinstance(value, (str, int)) and not isinstance(value, bool):
                    assigns[target.id] = str(value)
    return reads, assigns


@dataclass
class _Trace:
    """Per step: hops newly established and off-path items referred to; `env` holds the
    literal variables defined after the last step."""

    new: list[set[int]]
    offpath: list[set[str]]
    env: dict[str, str]


def _trace(p: _Path, steps: list[Step], env: dict[str, str] | None = None, known: set[int] | None = None) -> _Trace:
    env = dict(env or {})
    seen = set(known or set())
    new: list[set[int]] = []
    offpath: list[set[str]] = []
    for step in steps:
        refs: set[str] = set()
        if step.kind == "action" and step.parse_error is None:
            parsed = _names_read(step.code)
            text = step.code
            if parsed is not None:
                reads, assigns = parsed
                text += " " + " ".join(env[n] for n in reads if n in env)
                env.update(assigns)
            refs = _refers(p, text)
        if step.final_answer is not None:
            refs |= _refers(p, step.final_answer)
        offpath.append({r for r in refs if r not in p.on_path})
        hops = _established(p, step.observation) - seen if step.kind == "action" else set()
        seen |= hops
        new.append(hops)
    return _Trace(new, offpath, env)


def _refers(p: _Path, text: str) -> set[str]:
    return {e.name.lower() for e in p.world.mentions(text)} | set(_YEAR.findall(text))


def _facts_of(world: World, item: str) -> set[str]:
    """The names and year an entity's own document states (empty for a year)."""
    e = world.by_name(item)
    if e is None:
        return set()
    return {world.entity(t).name.lower() for t in e.links.values()} | ({str(e.year)} if e.year else set())


def _blame(p: _Path, steps: list[Step], trace: _Trace, item: str, depth: int = 0) -> tuple[int, str]:
    """The step to blame for off-path `item`, and the wrong item it brought in (see the
    module docstring)."""
    first = next(t for t, refs in enumerate(trace.offpath) if item in refs)
    if depth > len(steps):  # a cycle of wrong items: stop at the first reference
        return first, item
    earlier = {y for refs in trace.offpath[:first] for y in refs}
    sources = {y for y in earlier if item in _facts_of(p.world, y)}
    if not sources:
        shown = next((o for o in range(first) if item in steps[o].observation.lower()), None)
        sources = (trace.offpath[shown] - {item}) if shown is not None else set()  # a search for a wrong entity
    return min((_blame(p, steps, trace, y, depth + 1) for y in sources), default=(first, item))


def _critical(steps: list[Step], p: _Path, trace: _Trace) -> dict[int, str]:
    """Critical steps -> why, following the module's definition."""
    out: dict[int, str] = {}
    for t, step in enumerate(steps):
        if step.final_answer is not None and not exact_match(step.final_answer, p.gold):
            out.setdefault(t, f"step {t} answers {step.final_answer!r}, which is not the answer")
    finals = [s.final_answer for s in steps if s.final_answer is not None]
    for x in sorted({x for refs in trace.offpath for x in refs}):
        first = next(t for t, refs in enumerate(trace.offpath) if x in refs)
        used = any(x in refs for refs in trace.offpath[first + 1 :]) or any(exact_match(x, f) for f in finals)
        if used:
            t, root = _blame(p, steps, trace, x)
            entity = p.world.by_name(root)
            root = entity.name if entity is not None else root
            out.setdefault(t, f"step {t} brings in {root!r}, which is not on the way to the answer, "
                              "and later steps build on it")
    return out


def _next_hop(p: _Path, done: set[int]) -> int | None:
    return next((i for i in range(len(p.hops)) if i not in done), None)


def _describe(p: _Path, i: int) -> str:
    """A hop described without naming values the agent may not have found yet."""
    h, src = p.hops[i], source_hop(p.hops, i)
    x = (f"'{h['source']}'" if h["source_type"] == "work" else h["source"]) if src is None else f"the {p.hops[src]['noun']}"
    return DESCRIBE[h["relation"]].format(x=x, verb=verb(h))


class SearchRules:
    """The search suite's rules for the reference teacher (see the module docstring)."""

    def solve(self, task: Task, rng: random.Random) -> list[Step]:
        return reference_steps(task, rng)

    def judge(self, task: Task, steps: list[Step]) -> Verdict:
        p = _path(task)
        finals = [s.final_answer for s in steps if s.final_answer is not None]
        if finals and exact_match(finals[-1], task.answer):
            return Verdict(correct=True, analysis="The final answer is correct.")
        trace = _trace(p, steps)
        done = set().union(*trace.new) if trace.new else set()
        nxt = _next_hop(p, done)
        suggestion = f"Next, find out {_describe(p, nxt)}." if nxt is not None else "Everything needed has been found; compare and answer."
        critical = _critical(steps, p, trace)
        if critical:
            k = min(critical)
            return Verdict(correct=False, first_error=k, analysis=critical[k][:1].upper() + critical[k][1:] + ".", suggestion=suggestion)
        progress = [t for t, hops in enumerate(trace.new) if hops]
        last = max(progress, default=0)
        if last + 1 < len(steps):
            k = last + 1
        else:  # the last turn still made progress: the budget ran out; blame the first wasted turn
            k = next((t for t in range(1, len(steps)) if not trace.new[t]), max(len(steps) - 1, 0))
        return Verdict(correct=False, first_error=k, suggestion=suggestion,
                       analysis=f"The trajectory never answers; from step {k} on it makes no progress on the path.")

    def repair(self, task: Task, prefix: list[Step], mistaken: Step, verdict: Verdict) -> Step:
        rng = random.Random(f"{task.id}/repair/{len(prefix)}")
        if not prefix:
            return plan_step(task, rng)
        p = _path(task)
        trace = _trace(p, prefix)
        done = set().union(*trace.new)
        all_moves = moves(task.meta)
        nxt = _next_hop(p, done)
        index = next(i for i, mv in enumerate(all_moves) if mv.hop == nxt)
        extra = {j for j in needed_binds(task.meta, index) if trace.env.get(p.hops[j]["var"]) != p.hops[j]["value"]}
        return move_step(task, index, rng, extra)

    def equivalent(self, task: Task, prefix: list[Step], a: Step, b: Step) -> bool:
        if a.kind == "plan" or b.kind == "plan":
            return a.kind == b.kind and (a.parse_error is None) == (b.parse_error is None)
        p = _path(task)
        base = _trace(p, prefix)
        done = set().union(*base.new) if base.new else set()
        return self._effect(p, a, base, done) == self._effect(p, b, base, done)

    @staticmethod
    def _effect(p: _Path, step: Step, base: _Trace, done: set[int]) -> tuple:
        t = _trace(p, [step], env=base.env, known=done)
        final = normalize_answer(step.final_answer) if step.final_answer is not None else None
        return frozenset(t.new[0]), frozenset(t.offpath[0]), final
