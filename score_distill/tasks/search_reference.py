"""Reference solutions of `search` tasks: a plan, then one search per hop, then the answer.

Each action step first binds, as literals, the values the previous searches showed
(`author = "Vel Kar"`), then searches the next hop; the last one computes the answer from
the bound values: the last hop's value, or the comparison of two years. The reference
teacher (teachers/search_rules.py) solves with `reference_steps` and continues a student's
prefix with `moves`, `needed_binds` and `move_step`.

    >>> literal({"value": "1901", "value_type": "year"}), literal({"value": "Vel Kar", "value_type": "person"})
    ('1901', '"Vel Kar"')
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from score_distill.tasks.search_wording import verb
from score_distill.types import Step, Task

# Per relation, the words a reference query may add to the name it searches for (a relation
# not listed adds its noun).
KEYWORDS = {"founder": ("founder", "founded by"), "headquarters": ("headquarters", "based in"),
            "birthplace": ("birthplace", "born"), "born": ("born", "birth year"), "alma_mater": ("studied", "university"),
            "mentor": ("mentor", "trained under"), "country": ("country",), "capital": ("capital",),
            "founded": ("founded", "founding year"), "released": ("release year", "released")}


@dataclass(frozen=True)
class Move:
    """One reference action: bind the values the last searches revealed, then search hop
    `hop` (or, when `hop` is None, give the answer)."""

    hop: int | None
    binds: tuple[int, ...]


def moves(meta: dict) -> list[Move]:
    """The reference actions of a task, in order.

    >>> moves({"form": "bridge", "path": [{"side": 0}, {"side": 0}]})
    [Move(hop=0, binds=()), Move(hop=1, binds=(0,)), Move(hop=None, binds=(1,))]
    """
    n = len(meta["path"])
    return [Move(0, ())] + [Move(i, (i - 1,)) for i in range(1, n)] + [Move(None, (n - 1,))]


def source_hop(path: list[dict], i: int) -> int | None:
    """The hop whose value is hop i's source; None when the source is an anchor."""
    return i - 1 if i > 0 and path[i - 1]["side"] == path[i]["side"] else None


def side_ends(path: list[dict]) -> list[int]:
    """Index of the last hop of each side."""
    return [i for i, h in enumerate(path) if i + 1 == len(path) or path[i + 1]["side"] != h["side"]]


def _reads(meta: dict, move: Move) -> set[int]:
    if move.hop is None:
        return set(side_ends(meta["path"]))
    src = source_hop(meta["path"], move.hop)
    return set() if src is None else {src}


def needed_binds(meta: dict, start: int) -> set[int]:
    """Hops whose variables moves[start:] read before binding them themselves."""
    bound: set[int] = set()
    need: set[int] = set()
    for mv in moves(meta)[start:]:
        bound |= set(mv.binds)
        need |= _reads(meta, mv) - bound
    return need


def literal(hop: dict) -> str:
    """The Python literal of a hop's value: an int for a year, a string otherwise."""
    return hop["value"] if hop["value_type"] == "year" else json.dumps(hop["value"])


def _show(hop: dict) -> str:
    return f"'{hop['source']}'" if hop["source_type"] == "work" else hop["source"]


DESCRIBE = {"creator": "who {verb} {x}", "publisher": "which company {verb} {x}", "founder": "who founded {x}",
            "headquarters": "where {x} is based", "birthplace": "where {x} was born", "born": "when {x} was born",
            "alma_mater": "where {x} studied", "mentor": "whom {x} trained under",
            "country": "which country {x} is in", "capital": "the capital of {x}",
            "founded": "when {x} was founded", "released": "when {x} came out"}
FACTS = {"born": "{x} was born in {v}", "founded": "{x} was founded in {v}", "released": "{x} came out in {v}",
         "birthplace": "{x} was born in {v}", "headquarters": "{x} is based in {v}", "alma_mater": "{x} studied at {v}",
         "mentor": "{x} trained under {v}", "country": "{x} is in {v}"}


def fact(hop: dict) -> str:
    """What a hop's search reveals, as a sentence fragment.

    >>> fact({"relation": "creator", "noun": "author", "source": "W", "source_type": "work", "value": "V K"})
    "the author of 'W' is V K"
    """
    form = FACTS.get(hop["relation"], "the {n} of {x} is {v}")
    return form.format(x=_show(hop), v=hop["value"], n=hop["noun"])


def plan_step(task: Task, rng: random.Random) -> Step:
    """The first thought: which facts to look up, in order."""
    path = task.meta["path"]
    descs = [[] for _ in task.meta["anchors"]]  # type: list[list[str]]
    for i, h in enumerate(path):
        src = source_hop(path, i)
        x = _show(h) if src is None else f"the {path[src]['noun']}"
        descs[h["side"]].append(DESCRIBE[h["relation"]].format(x=x, verb=verb(h)))
    chains = [", then ".join(d) for d in descs]
    if task.meta["form"] == "bridge":
        forms = ("To answer this I will find {a}. That takes {n} searches.", "Plan: look up {a}, one search at a time.",
                 "I need to find {a}; each needs its own search.")
    else:
        forms = ("I need {a}, and {b}; then I compare the two years.", "Plan: find {a}; find {b}; then compare the years.",
                 "Two separate lookups: {a}; and {b}. Then I compare them.")
    return Step(kind="plan", thought=rng.choice(forms).format(a=chains[0], b=chains[-1], n=len(path)), author="teacher")


def move_step(task: Task, index: int, rng: random.Random, extra_binds: set[int] | None = None) -> Step:
    """The action step of reference move `index`, binding `extra_binds` too (values an
    earlier, differently written step established but did not store under our names)."""
    meta, path = task.meta, task.meta["path"]
    mv = moves(meta)[index]
    binds = sorted(set(mv.binds) | (extra_binds or set()))
    lines = [f"{path[j]['var']} = {literal(path[j])}" for j in binds]
    facts = "; ".join(fact(path[j]) for j in binds)
    facts = facts[:1].upper() + facts[1:]
    if mv.hop is None:
        lines.append(_final_code(meta))
        thought = rng.choice(("{f}, so that is the answer.", "{f}. That answers the question.") if meta["form"] == "bridge"
                             else ("{f}. Comparing the two years gives the answer.", "{f}, so I can compare the years now."))
        return Step(kind="action", thought=thought.format(f=facts), code="\n".join(lines), author="teacher")
    h = path[mv.hop]
    src = source_hop(path, mv.hop)
    kw = rng.choice(("",) + KEYWORDS.get(h["relation"], (h["noun"],)) * 3)  # mostly with a keyword
    tail = f" {kw}" if kw else ""
    query = json.dumps(h["source"] + tail) if src is None else (path[src]["var"] + (f" + {json.dumps(tail)}" if kw else ""))
    lines.append(f"print(web_search({query}))")
    desc = DESCRIBE[h["relation"]].format(x=_show(h), verb=verb(h))
    if not binds:
        thought = rng.choice(("Let me search for {x} first.", "First I look up {x} to find the {n}.",
                              "I'll start with a search for {x}.")).format(x=_show(h), n=h["noun"])
    else:
        thought = rng.choice(("{f}. Now I need to find out {d}.", "{f}. Next: {d}.",
                              "{f}, so next I search for {x}.")).format(f=facts, d=desc, x=_show(h))
    return Step(kind="action", thought=thought, code="\n".join(lines), author="teacher")


def _final_code(meta: dict) -> str:
    path = meta["path"]
    if meta["form"] == "bridge":
        return f"final_answer({path[-1]['var']})"
    a, b = (path[i]["var"] for i in side_ends(path))
    op = "<" if meta["direction"] == "earlier" else ">"
    first, second = (json.dumps(c) for c in meta["compared"])
    return f"final_answer({first} if {a} {op} {b} else {second})"


def reference_steps(task: Task, rng: random.Random) -> list[Step]:
    """A full reference solution; `rng` varies the thoughts and the query wording."""
    return [plan_step(task, rng)] + [move_step(task, i, rng) for i in range(len(moves(task.meta)))]
