"""The `search` suite: multi-hop questions about the generated world of `tasks/world.py`.

Questions are compositions of a relation chain and anchor entities; answering one takes one
`web_search` per hop. Two forms:
- bridge: follow one chain, e.g. creator > birthplace:
  "In which city was the author of 'The Amber Weir' born?" (2 hops);
- comparison: two chains that each end in a year, compared:
  "Who was born earlier, the director of 'X' or the founder of Y?" (4 hops).

Splits are disjoint by construction. Every entity of the world is hashed into one split's
bucket of anchors (train 60%, dev 10%, test 15%, ood 15%), and a question of a split starts
only from that split's anchors, so two splits never share a question and test questions are
new compositions. The ood split also uses only templates never used by the others: 4-hop
bridges, chains with a held-out pair of consecutive relations (`HELD_OUT`), comparisons of
three-hop sides, and comparisons asking for the later of the two.

Every task carries its reference solution: a plan, then one search per hop whose code
writes the fact read from the previous observation as a literal, then `final_answer`.

    >>> tasks = generate("train", 3, seed=0)
    >>> [t.id for t in tasks]
    ['search-0-train-0', 'search-0-train-1', 'search-0-train-2']
    >>> tasks[0].reference[-1].code.splitlines()[-1].startswith("final_answer(")
    True
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass

from score_distill.config import option
from score_distill.tasks.world import LINKS, YEAR_RELATIONS, Entity, World, build_world
from score_distill.types import Step, Task

SPLITS = ("train", "dev", "test", "ood")
_BUCKETS = {"train": (0, 60), "dev": (60, 70), "test": (70, 85), "ood": (85, 100)}
# Consecutive relation pairs that only the ood split uses.
HELD_OUT = {("alma_mater", "founder"), ("mentor", "birthplace"), ("headquarters", "country"), ("mentor", "born")}
_KIND_WORDS = {  # per work kind: (creator noun, creator verb, publisher noun, publisher verb)
    "novel": ("author", "wrote", "publisher", "published"), "film": ("director", "directed", "studio", "produced"),
    "album": ("artist", "recorded", "label", "released")}
NOUNS = {"founder": "founder", "headquarters": "home city", "birthplace": "birthplace", "alma_mater": "university",
         "mentor": "mentor", "country": "country", "capital": "capital", "born": "birth year",
         "founded": "founding year", "released": "release year"}
VARS = {"headquarters": "hq_city", "born": "birth_year", "founded": "founding_year", "released": "release_year"}
KEYWORDS = {"founder": ("founder", "founded by"), "headquarters": ("headquarters", "based in"),
            "birthplace": ("birthplace", "born"), "born": ("born", "birth year"), "alma_mater": ("studied", "university"),
            "mentor": ("mentor", "trained under"), "country": ("country",), "capital": ("capital",),
            "founded": ("founded", "founding year"), "released": ("release year", "released")}
NP_FORMS = {
    "creator": ("the {noun} of {x}", "the person who {verb} {x}"),
    "publisher": ("the {noun} of {x}", "the company that {verb} {x}"),
    "founder": ("the founder of {x}", "the person who founded {x}"),
    "headquarters": ("the city where {x} is based", "the home city of {x}"),
    "birthplace": ("the birthplace of {x}", "the city where {x} was born"),
    "alma_mater": ("the university {x} attended", "the alma mater of {x}"),
    "mentor": ("the mentor of {x}", "the person {x} trained under"),
    "country": ("the country where {x} lies", "the country of {x}"),
    "capital": ("the capital of {x}",)}
QUESTION_FORMS = {
    "creator": ("Who {verb} {x}?", "Who is the {noun} of {x}?"),
    "publisher": ("Which company {verb} {x}?", "What is the {noun} of {x}?"),
    "released": ("In what year was {x} released?", "When did {x} come out?"),
    "founder": ("Who founded {x}?", "Who is the founder of {x}?"),
    "headquarters": ("In which city is {x} based?", "Where is {x} headquartered?"),
    "founded": ("In what year was {x} founded?", "When was {x} founded?"),
    "birthplace": ("In which city was {x} born?", "Where was {x} born?", "What is the birthplace of {x}?"),
    "born": ("In what year was {x} born?", "When was {x} born?", "What is the birth year of {x}?"),
    "alma_mater": ("Which university did {x} attend?", "Where did {x} study?"),
    "mentor": ("Who was the mentor of {x}?", "Under whom did {x} train?"),
    "country": ("In which country is {x}?", "Which country is {x} in?"),
    "capital": ("What is the capital of {x}?", "Which city is the capital of {x}?")}
COMPARE_FORMS = {
    ("born", "earlier"): ("Who was born earlier, {a} or {b}?", "Who is older, {a} or {b}?",
                          "Which of the two was born first: {a} or {b}?"),
    ("born", "later"): ("Who was born later, {a} or {b}?", "Who is younger, {a} or {b}?"),
    ("founded", "earlier"): ("Which was founded earlier, {a} or {b}?", "Which is older, {a} or {b}?"),
    ("founded", "later"): ("Which was founded more recently, {a} or {b}?", "Which is younger, {a} or {b}?"),
    ("released", "earlier"): ("Which came out first, {a} or {b}?", "Which was released earlier, {a} or {b}?"),
    ("released", "later"): ("Which came out later, {a} or {b}?", "Which was released more recently, {a} or {b}?")}


@dataclass
class Difficulty:
    min_hops: int = option(2, "fewest searches a question needs")
    max_hops: int = option(4, "most searches a question needs")
    comparison_share: float = option(0.3, "fraction of comparison questions (the rest are bridges)")

    def __post_init__(self) -> None:
        if not (1 <= self.min_hops <= self.max_hops and 0.0 <= self.comparison_share <= 1.0):
            raise ValueError(f"bad search difficulty {self}: need 1 <= min_hops <= max_hops, 0 <= comparison_share <= 1")


@dataclass(frozen=True)
class Template:
    """A question shape: one chain (bridge) or two year-ending chains (comparison)."""

    form: str
    chains: tuple[tuple[str, ...], ...]
    direction: str = ""

    @property
    def hops(self) -> int:
        return sum(len(c) for c in self.chains)

    @property
    def name(self) -> str:
        body = "|".join(">".join(c) for c in self.chains)
        return f"{self.form}:{body}" + (f":{self.direction}" if self.direction else "")

    @property
    def ood(self) -> bool:
        pairs = {p for c in self.chains for p in zip(c, c[1:])}
        if self.form == "bridge":
            return self.hops >= 4 or bool(pairs & HELD_OUT)
        return self.direction == "later" or max(map(len, self.chains)) >= 3 or bool(pairs & HELD_OUT)


def _chains(max_len: int) -> list[tuple[str, ...]]:
    """Every type-consistent relation chain up to `max_len` (a year relation only last)."""
    out, frontier = [], [((), t) for t in ("work", "org", "person", "city", "country")]
    for _ in range(max_len):
        nxt = []
        for chain, t in frontier:
            for rel, (src, dst) in LINKS.items():
                if src == t and not (chain and (chain[-1], rel) == ("capital", "country")):
                    nxt.append((chain + (rel,), dst))
            out += [chain + (rel,) for rel, src in YEAR_RELATIONS.items() if src == t]
        out += [c for c, _ in nxt]
        frontier = nxt
    return out


@functools.lru_cache(maxsize=1)
def templates() -> tuple[Template, ...]:
    """All question templates (bridges of 1-4 hops; comparisons of sides of 1-3 hops)."""
    chains = _chains(4)
    out = [Template("bridge", (c,)) for c in chains]
    sides = [c for c in chains if c[-1] in YEAR_RELATIONS and len(c) <= 3]
    for i, a in enumerate(sides):
        for b in sides[i:]:
            if a[-1] == b[-1]:
                out += [Template("comparison", (a, b), d) for d in ("earlier", "later")]
    return tuple(out)


def _bucket(seed: int, entity_id: str) -> str:
    h = int.from_bytes(hashlib.sha256(f"{seed}/{entity_id}".encode()).digest()[:4], "big") % 100
    return next(s for s, (lo, hi) in _BUCKETS.items() if lo <= h < hi)


@functools.lru_cache(maxsize=32)
def anchors(seed: int, split: str) -> dict[str, list[Entity]]:
    """The entities (by type) that questions of `split` may start from."""
    out: dict[str, list[Entity]] = {}
    for e in build_world(seed).entities.values():
        if _bucket(seed, e.id) == split:
            out.setdefault(e.type, []).append(e)
    return out


def walk(world: World, anchor: Entity, chain: tuple[str, ...], side: int) -> list[dict] | None:
    """The hops of `chain` from `anchor`, or None if a link is missing or an entity repeats."""
    hops, cur, seen = [], anchor, {anchor.id}
    for rel in chain:
        value = world.follow(cur, rel)
        if value is None or (isinstance(value, Entity) and value.id in seen):
            return None
        kind = cur.category if cur.type == "work" else ""
        noun = _KIND_WORDS[kind][0 if rel == "creator" else 2] if rel in ("creator", "publisher") else NOUNS[rel]
        hops.append({"side": side, "source": cur.name, "source_type": cur.type, "kind": kind, "relation": rel,
                     "noun": noun, "value": value.name if isinstance(value, Entity) else str(value),
                     "value_type": value.type if isinstance(value, Entity) else "year"})
        if isinstance(value, Entity):
            seen.add(value.id)
            cur = value
    return hops


def _display(name: str, type_: str, kind: str, rng: random.Random) -> str:
    """How a question names an entity: works in quotes, sometimes with their kind."""
    if type_ != "work":
        return name
    return f"the {kind} '{name}'" if rng.random() < 0.3 else f"'{name}'"


def _phrase(hops: list[dict], rng: random.Random) -> str:
    """The noun phrase of a chain's entity-valued hops: "the founder of the publisher of 'X'".
    Nested phrases only use forms that end with their argument, which keeps them readable."""
    h0 = hops[0]
    x = _display(h0["source"], h0["source_type"], h0["kind"], rng)
    for i, h in enumerate(hops):
        forms = [f for f in NP_FORMS[h["relation"]] if i == 0 or f.endswith("{x}")]
        x = rng.choice(forms).format(x=x, noun=h["noun"], verb=verb(h))
    return x


def verb(hop: dict) -> str:
    """The verb of a work's creator or publisher ("wrote", "produced"); empty otherwise."""
    words = _KIND_WORDS.get(hop["kind"], ("", "", "", ""))
    return {"creator": words[1], "publisher": words[3]}.get(hop["relation"], "")


def _subject(hops: list[dict], rng: random.Random) -> str:
    """What the last hop of a chain is asked about: the anchor, or the phrase before it."""
    h0 = hops[0]
    return _phrase(hops[:-1], rng) if len(hops) > 1 else _display(h0["source"], h0["source_type"], h0["kind"], rng)


def _question(t: Template, sides: list[list[dict]], rng: random.Random) -> str:
    if t.form == "bridge":
        last, x = sides[0][-1], _subject(sides[0], rng)
        return rng.choice(QUESTION_FORMS[last["relation"]]).format(x=x, noun=last["noun"], verb=verb(last))
    a, b = (_subject(s, rng) for s in sides)
    q = rng.choice(COMPARE_FORMS[(sides[0][-1]["relation"], t.direction)]).format(a=a, b=b)
    return q[0].upper() + q[1:]


def _instantiate(world: World, t: Template, pool: dict[str, list[Entity]], rng: random.Random) -> tuple[tuple, dict] | None:
    """A random instance of template `t` from the split's anchors: (dedup key, meta) or None."""
    sides = []
    for i, chain in enumerate(t.chains):
        candidates = pool.get(_start_type(chain))
        if not candidates:
            return None
        hops = walk(world, rng.choice(candidates), chain, i)
        if hops is None:
            return None
        sides.append(hops)
    if t.form == "comparison":
        compared = [s[-1]["source"] for s in sides]
        years = [int(s[-1]["value"]) for s in sides]
        if compared[0] == compared[1] or years[0] == years[1]:
            return None
        key = (t.name, tuple(sorted((">".join(c), s[0]["source"]) for c, s in zip(t.chains, sides))))
        if rng.random() < 0.5:  # which side the question names first
            sides = [[dict(h, side=1 - h["side"]) for h in s] for s in sides[::-1]]
    else:
        key = (t.name, sides[0][0]["source"])
    path = [h for s in sides for h in s]
    _name_vars(path, t.form)
    meta = {"form": t.form, "hops": t.hops, "template": t.name, "direction": t.direction,
            "anchors": [s[0]["source"] for s in sides], "path": path}
    if t.form == "comparison":
        compared, years = [s[-1]["source"] for s in sides], [int(s[-1]["value"]) for s in sides]
        first = years.index(min(years) if t.direction == "earlier" else max(years))
        meta.update(compared=compared, answer=compared[first])
    else:
        meta["answer"] = path[-1]["value"]
    return key, meta


def _start_type(chain: tuple[str, ...]) -> str:
    rel = chain[0]
    return LINKS[rel][0] if rel in LINKS else YEAR_RELATIONS[rel]


def _name_vars(path: list[dict], form: str) -> None:
    """Python variable names for hop values: `author`, `birth_year_b`, `mentor_2`."""
    used: set[str] = set()
    for h in path:
        base = VARS.get(h["relation"], h["noun"].replace(" ", "_"))
        if form == "comparison":
            base += "_" + "ab"[h["side"]]
        var, k = base, 2
        while var in used:
            var, k = f"{base}_{k}", k + 1
        used.add(var)
        h["var"] = var


def generate(split: str, n: int, seed: int, **difficulty: object) -> list[Task]:
    """`n` tasks of `split` from the world of `seed`; the first n are the same for any larger n."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    d = Difficulty(**difficulty)  # type: ignore[arg-type]
    world, pool = build_world(seed), anchors(seed, split)
    eligible = [t for t in templates() if t.ood == (split == "ood") and d.min_hops <= t.hops <= d.max_hops]
    by_form = {f: [t for t in eligible if t.form == f] for f in ("bridge", "comparison")}
    if not eligible:
        raise ValueError(f"no {split} templates with {d.min_hops}-{d.max_hops} hops")
    rng, tasks, seen, misses = random.Random(f"search-{seed}-{split}"), [], set(), 0
    while len(tasks) < n:
        if misses > 20000:  # the split's anchors cannot make that many distinct questions
            raise ValueError(f"could only make {len(tasks)} distinct {split} questions with {d}; ask for fewer")
        form = "comparison" if rng.random() < d.comparison_share else "bridge"
        t = rng.choice(by_form[form] or eligible)
        made = _instantiate(world, t, pool, rng)
        if made is None or made[0] in seen:
            misses += 1
            continue
        misses = 0
        seen.add(made[0])
        key, meta = made
        sides = [[h for h in meta["path"] if h["side"] == s] for s in range(len(t.chains))]
        meta.update(split=split, corpus=f"embedded:{seed}")
        task = Task(id=f"search-{seed}-{split}-{len(tasks)}", question=_question(t, sides, rng),
                    answer=meta.pop("answer"), suite="search", meta=meta)
        task.reference = reference_steps(task, random.Random(task.id))
        tasks.append(task)
    return tasks


# ---- reference solutions: one search per hop, the fact read from each result written as a literal


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

