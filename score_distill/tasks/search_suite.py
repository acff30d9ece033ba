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

Every task carries its reference solution (tasks/search_reference.py): a plan, then one
search per hop whose code writes the fact read from the previous observation as a literal,
then `final_answer`. The wording of the questions is in tasks/search_wording.py.

    >>> tasks = generate("train", 3, seed=0)
    >>> [t.id for t in tasks]
    ['search-0-train-0', 'search-0-train-1', 'search-0-train-2']
    >>> tasks[0].reference[-1].code.splitlines()[-1].startswith("final_answer(")
    True
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass

from score_distill.config import option
from score_distill.tasks.search_reference import reference_steps
from score_distill.tasks.search_wording import KIND_WORDS, NOUNS, question
from score_distill.tasks.world import LINKS, YEAR_RELATIONS, Entity, World, build_world
from score_distill.types import Task

SPLITS = ("train", "dev", "test", "ood")
_BUCKETS = {"train": (0, 60), "dev": (60, 70), "test": (70, 85), "ood": (85, 100)}
# Consecutive relation pairs that only the ood split uses.
HELD_OUT = {("alma_mater", "founder"), ("mentor", "birthplace"), ("headquarters", "country"), ("mentor", "born")}
VARS = {"headquarters": "hq_city", "born": "birth_year", "founded": "founding_year", "released": "release_year"}


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
        noun = KIND_WORDS[kind][0 if rel == "creator" else 2] if rel in ("creator", "publisher") else NOUNS[rel]
        hops.append({"side": side, "source": cur.name, "source_type": cur.type, "kind": kind, "relation": rel,
                     "noun": noun, "value": value.name if isinstance(value, Entity) else str(value),
                     "value_type": value.type if isinstance(value, Entity) else "year"})
        if isinstance(value, Entity):
            seen.add(value.id)
            cur = value
    return hops


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
        task = Task(id=f"search-{seed}-{split}-{len(tasks)}", question=question(t.form, t.direction, sides, rng),
                    answer=meta.pop("answer"), suite="search", meta=meta)
        task.reference = reference_steps(task, random.Random(task.id))
        tasks.append(task)
    return tasks
