"""Planted errors in `search` reference trajectories, for the teacher audit (teachers/planted.py).

Reference step i + 1 searches hop i of the task's path (step 0 is the plan), binding as
literals the values earlier searches showed; the last step answers. The planted kinds, each
changing step k, which is then the first critical error as teachers/search_rules.py defines it:

- wrong_entity: at hop i, another entity of the same type (one the previous search showed
  where there is one) is taken for the hop's source and its chain followed to the end, so
  step k = i + 1 brings in the wrong entity and the later steps build on it;
- guess: after j searches, step k = j + 1 answers an entity (or year) of the answer's
  type that is not on the path;
- early_answer: after j searches, step k = j + 1 answers the value the last search found,
  skipping the hops still ahead (comparisons: the other of the two compared, before both
  years are known);
- wrong_final_answer: the last step compares the years the other way round (comparisons)
  or binds a wrong last value (bridges: a year one less, another entity of the same type).

The correct kinds: `reference` (a solution with other wording), `extra_search` (a search
about a stranger nothing uses), `repeated_search` (one search made twice in a row). The
reworded step at k is the reference step there written with other random choices (the query
wording, the thought).
"""

from __future__ import annotations

import json
import random

from score_distill.tasks.scoring import normalize_answer
from score_distill.tasks.search_reference import fact, literal, move_step, reference_steps, side_ends, source_hop
from score_distill.tasks.search_suite import walk
from score_distill.tasks.world import World, build_world
from score_distill.teachers.planted import Plant, run_steps
from score_distill.teachers.search_rules import shown_hops
from score_distill.tools.config import ToolConfig
from score_distill.types import Step, Task

# Entities tried as the wrong source of a hop, besides those the previous search showed.
DETOUR_TRIES = 300


def act(code: str, thought: str) -> Step:
    return Step(kind="action", thought=thought, code=code)


def world_of(task: Task) -> World:
    corpus = str(task.meta.get("corpus", ""))
    if task.suite != "search" or not corpus.startswith("embedded:"):
        raise ValueError(f"task {task.id}: the audit needs a generated search task (an embedded corpus)")
    return build_world(int(corpus.split(":", 1)[1]))


def on_path(task: Task) -> set[str]:
    return {h[k].lower() for h in task.meta["path"] for k in ("source", "value")}


class SearchPlanting:
    """The `search` suite's planting rules (see the module docstring)."""

    correct_kinds = ("reference", "extra_search", "repeated_search")
    planted_kinds = ("wrong_entity", "guess", "early_answer", "wrong_final_answer")
    difficulty: dict[str, object] = {}
    setup = ""

    def correct(self, task: Task, kind: str, rng: random.Random) -> list[Step] | None:
        ref = list(task.reference or [])
        if kind == "reference":
            return reference_steps(task, rng)
        if kind == "extra_search":
            known = on_path(task)
            stranger = rng.choice([e for e in world_of(task).of_type("person") if e.name.lower() not in known])
            extra = act(f"print(web_search({json.dumps(stranger.name + ' born')}))",
                        f"Let me also check when {stranger.name} was born.")
            at = rng.randint(1, len(ref) - 1)
            return ref[:at] + [extra] + ref[at:]
        if kind == "repeated_search":
            at = rng.randint(1, len(ref) - 2)
            return ref[:at + 1] + [Step.from_dict(ref[at].to_dict())] + ref[at + 1:]
        raise ValueError(f"unknown correct kind {kind!r}")

    def plant(self, task: Task, kind: str, rng: random.Random, tools: ToolConfig) -> Plant | None:
        ref = list(task.reference or [])
        path = task.meta["path"]
        bridge = task.meta["form"] == "bridge"
        if kind == "wrong_entity":
            for i in rng.sample(range(len(path)), len(path)):
                steps = self._detour(task, i, rng, tools)
                if steps is not None:
                    return Plant(steps, i + 1, self._reworded(task, i + 1, rng))
            return None
        if kind in ("guess", "early_answer"):
            if len(path) < 2:
                return None
            j = rng.randint(1, len(path) - 1)
            if kind == "guess":
                value = self._stranger(task, path[-1] if bridge else self._compared(task), rng)
                wrong = act(f"final_answer({json.dumps(value)})", f"I am fairly sure the answer is {value}.")
            elif bridge:
                hop = path[j - 1]
                wrong = act(f"final_answer({json.dumps(hop['value'])})",
                            f"{fact(hop)[:1].upper() + fact(hop)[1:]}, so that is the answer.")
            else:  # the other one of the two compared, before both years are known
                other = next(c for c in task.meta["compared"] if c != task.answer)
                wrong = act(f"final_answer({json.dumps(other)})", f"It must be {other}.")
            return Plant(ref[:j + 1] + [wrong], j + 1, self._reworded(task, j + 1, rng))
        if kind == "wrong_final_answer":
            last = Step.from_dict(ref[-1].to_dict())
            if bridge:
                lines = last.code.splitlines()
                var, _ = lines[0].split(" = ", 1)
                lines[0] = f"{var} = {json.dumps(self._stranger(task, path[-1], rng))}"
                last.code = "\n".join(lines)
            else:
                last.code = last.code.replace(" < ", " > ") if " < " in last.code else last.code.replace(" > ", " < ")
            return Plant(ref[:-1] + [last], len(ref) - 1, self._reworded(task, len(ref) - 1, rng))
        raise ValueError(f"unknown planted kind {kind!r}")

    @staticmethod
    def _compared(task: Task) -> dict:
        """The compared entities' type, as a hop whose value has it."""
        end = task.meta["path"][side_ends(task.meta["path"])[0]]
        return {"value": end["source"], "value_type": end["source_type"]}

    @staticmethod
    def _stranger(task: Task, hop: dict, rng: random.Random) -> str:
        """A value of `hop`'s type that is not on the path: a year one less, or another entity."""
        if hop["value_type"] == "year":
            return str(int(hop["value"]) - 1)
        known = on_path(task)
        return rng.choice([e.name for e in world_of(task).of_type(hop["value_type"]) if e.name.lower() not in known])

    @staticmethod
    def _reworded(task: Task, k: int, rng: random.Random) -> Step:
        """Reference step k written with other random choices (other code where there is any)."""
        step = (task.reference or [])[k]
        tries = [move_step(task, k - 1, random.Random(rng.random())) for _ in range(12)]
        other = [s for s in tries if s.code != step.code] or [s for s in tries if s.thought != step.thought] or tries
        return act(other[0].code, other[0].thought)

    def _detour(self, task: Task, i: int, rng: random.Random, tools: ToolConfig) -> list[Step] | None:
        """The reference up to hop i, then another source for hop i (of the same type) and
        the same chain followed from it; None when no such source changes the answer."""
        ref = list(task.reference or [])
        seen = run_steps(task, ref[:i + 1], tools)[-1].observation if i > 0 else ""
        wrong = detour_task(task, i, seen, rng)
        if wrong is None:
            return None
        return ref[:i + 1] + reference_steps(wrong, random.Random(rng.random()))[i + 1:]

    def wrong(self, task: Task, steps: list[Step], plant: Plant) -> bool:
        return not task.score(steps[-1].final_answer).correct and steps[plant.first_error].ok

    def bindings(self, task: Task, k: int) -> dict[str, str]:
        """The values of the hops that steps up to k search."""
        return {h["var"]: literal(h) for h in task.meta["path"][:k]}

    def outcome(self, task: Task, prefix: list[Step], step: Step) -> object:
        """The hops the step shows that the prefix had not, and its answer."""
        known = set().union(*(shown_hops(task, s.observation) for s in prefix if s.kind == "action"))
        final = normalize_answer(step.final_answer) if step.final_answer is not None else None
        return step.ok, frozenset(shown_hops(task, step.observation) - known), final


def detour_task(task: Task, i: int, observation: str, rng: random.Random) -> Task | None:
    """`task` as if hop i's source were another entity of its type (first those `observation`
    shows, then up to DETOUR_TRIES drawn by `rng`) with the same chain of relations followed
    from it, touching nothing on the gold path; None when no such source changes the answer
    (e.g. a comparison it cannot flip). Its reference steps are a coherent wrong trajectory."""
    world, path = world_of(task), task.meta["path"]
    end = max(j for j, h in enumerate(path) if h["side"] == path[i]["side"])
    source = world.by_name(path[i]["source"])
    if source is None:
        raise ValueError(f"task {task.id}: {path[i]['source']!r} is not in its world")  # our bug
    shown = [e for e in world.mentions(observation) if e.type == source.type]
    pool = world.of_type(source.type)
    known = on_path(task)
    for e in shown + rng.sample(pool, min(DETOUR_TRIES, len(pool))):
        new = walk(world, e, tuple(h["relation"] for h in path[i:end + 1]), path[i]["side"])
        if new is None or {h[k].lower() for h in new for k in ("source", "value")} & known:
            continue
        new_path = [dict(h) for h in path]
        for j, h in zip(range(i, end + 1), new):
            new_path[j] = dict(h, var=path[j]["var"])
        if source_hop(path, i) is not None:
            new_path[i - 1] = dict(path[i - 1], value=e.name)
        meta = dict(task.meta, path=new_path)
        if task.meta["form"] == "comparison":
            ends = side_ends(new_path)
            meta["compared"] = [new_path[j]["source"] for j in ends]
            years = [int(new_path[j]["value"]) for j in ends]
            pick = min if task.meta["direction"] == "earlier" else max
            if years[0] == years[1] or meta["compared"][years.index(pick(years))] == task.answer:
                continue
        return Task(id=task.id, question=task.question, answer="", suite="search", meta=meta)
    return None
