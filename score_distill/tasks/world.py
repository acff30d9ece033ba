"""A fictional world generated from a seed: people, organisations, places and works, whose
facts exist only in a corpus of short generated documents.

Every name is composed from syllables, so no pretrained model knows anything about it; the
only way to answer a question about the world is to search its corpus. The world is a
graph: each entity has a type, a year (born / founded / released; none for places) and
functional links to other entities:

    work    --creator-->   person     (author, director or artist, by the work's kind)
    work    --publisher--> org        (publishing house, film studio or record label)
    org     --founder-->   person
    org     --headquarters--> city
    person  --birthplace--> city
    person  --alma_mater--> org       (a university; not every person has one)
    person  --mentor-->    person     (someone older in the same field; not everyone)
    city    --country-->   country
    country --capital-->   city

One document per entity, one to three sentences, states the entity's own year and links
(never the links that point at it), so following a chain of relations takes one search per
hop. Documents stay under 150 characters, so a search result's snippet shows them whole.
Building a world of a few thousand documents takes well under a second; worlds are cached
per seed.

    >>> w = build_world(0)
    >>> doc = w.corpus()[0]
    >>> sorted(doc)
    ['id', 'text', 'title']
    >>> w.entity(doc["id"]).name == doc["title"]
    True
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field

ENTITY_TYPES = ("person", "org", "work", "city", "country")
# Links that point to an entity, and the type of their target.
LINKS: dict[str, tuple[str, str]] = {
    "creator": ("work", "person"), "publisher": ("work", "org"),
    "founder": ("org", "person"), "headquarters": ("org", "city"),
    "birthplace": ("person", "city"), "alma_mater": ("person", "org"), "mentor": ("person", "person"),
    "country": ("city", "country"), "capital": ("country", "city"),
}
# Relations whose value is the source entity's own year.
YEAR_RELATIONS: dict[str, str] = {"born": "person", "founded": "org", "released": "work"}

# Work kind -> (creator occupation, organisation kind that publishes it).
WORK_KINDS = {"novel": ("novelist", "publishing house"), "film": ("film director", "film studio"),
              "album": ("musician", "record label")}
ORG_WORDS = {"publishing house": ("Press", "Books", "Publishing"), "film studio": ("Pictures", "Studios", "Films"),
             "record label": ("Records", "Sound", "Music"), "university": ("University", "College", "Academy")}
OTHER_JOBS = ("painter", "architect", "engineer", "physician", "sculptor")

_ONSETS = ("b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
           "st", "tr", "th", "sh", "j", "y")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "ia", "ei")
_CODAS = ("", "", "n", "r", "l", "s", "th", "m", "sk", "nd", "v", "rin", "ra")
_CITY_ENDS = ("holm", "vik", "grad", "ford", "mar", "stad", "wick", "heim", "port", "burg", "mere", "dale")
_COUNTRY_ENDS = ("ia", "land", "mark", "ara", "esh", "ovia")
ADJECTIVES = ("Amber", "Silent", "Hollow", "Crimson", "Distant", "Broken", "Golden", "Pale", "Quiet", "Burning",
              "Frozen", "Hidden", "Last", "Restless", "Scarlet", "Silver", "Wandering", "Bitter", "Endless",
              "Fading", "Gentle", "Iron", "Lonely", "Midnight", "Northern", "Painted", "Sleeping", "Sunken",
              "Velvet", "Wild", "Ashen", "Glass", "Copper", "Drifting", "Twilight", "Emerald", "Ivory")
NOUNS = ("Weir", "Lantern", "Orchard", "Harbour", "Meadow", "Tide", "Garden", "Mirror", "Tower", "River",
         "Bell", "Compass", "Ember", "Feather", "Forest", "Gate", "Horizon", "Island", "Lighthouse", "Marsh",
         "Moon", "Path", "Quarry", "Raven", "Shore", "Sparrow", "Storm", "Thread", "Valley", "Voyage",
         "Window", "Archive", "Bridge", "Canyon", "Cellar", "Chorus", "Crown", "Dune", "Fountain", "Glacier",
         "Hearth", "Kingdom", "Labyrinth", "Ledger", "Loom", "Mill", "Orchid", "Pilgrim", "Reef", "Sail",
         "Signal", "Staircase", "Summit", "Tapestry", "Thicket", "Veil", "Vineyard", "Wharf")
# Words of the document templates: an invented name must not collide with them.
_RESERVED = {w.lower() for w in ADJECTIVES + NOUNS} | {
    "born", "city", "country", "capital", "founded", "based", "novel", "film", "album", "label", "studied",
    "trained", "under", "released", "directed", "published", "press", "books", "sound", "music", "studios",
    "films", "pictures", "records", "college", "academy", "university", "the", "and", "she", "her", "his",
    "him", "its", "town", "port", "home", "there", "were", "where"}

# World size: about 4,500 documents.
SIZES = {"country": 24, "city": 240, "novelist": 450, "film director": 330, "musician": 330,
         "entrepreneur": 300, "scholar": 240, "other": 350, "university": 80, "publishing house": 90,
         "film studio": 70, "record label": 70, "work": 2000}


@dataclass
class Entity:
    """One node of the world graph; `category` is the occupation, org kind or work kind."""

    id: str
    type: str
    name: str
    category: str
    year: int | None = None
    pronoun: str = "it"
    links: dict[str, str] = field(default_factory=dict)
    text: str = ""


class World:
    """The world graph of one seed and its corpus (one document per entity)."""

    def __init__(self, seed: int, entities: list[Entity]) -> None:
        self.seed = seed
        self.entities = {e.id: e for e in entities}
        self._by_type = {t: [e for e in entities if e.type == t] for t in ENTITY_TYPES}
        self._by_name = {e.name.lower(): e for e in entities}
        if len(self._by_name) != len(entities):
            raise AssertionError(f"world {seed}: entity names are not unique")  # a generator bug
        self._index: dict[str, list[tuple[tuple[str, ...], Entity]]] = {}
        for e in entities:
            toks = name_tokens(e.name)
            self._index.setdefault(toks[0], []).append((toks, e))
        for cands in self._index.values():
            cands.sort(key=lambda c: -len(c[0]))
        self._corpus = [{"id": e.id, "title": e.name, "text": e.text} for e in entities]

    def entity(self, entity_id: str) -> Entity:
        return self.entities[entity_id]

    def of_type(self, type_: str) -> list[Entity]:
        return self._by_type[type_]

    def by_name(self, name: str) -> Entity | None:
        """The entity called `name` (case-insensitive), or None."""
        return self._by_name.get(name.strip().lower())

    def follow(self, entity: Entity, relation: str) -> Entity | int | None:
        """The value of `relation` for `entity`: an entity, a year, or None when it has none."""
        if relation in YEAR_RELATIONS:
            return entity.year if YEAR_RELATIONS[relation] == entity.type else None
        target = entity.links.get(relation)
        return self.entities[target] if target is not None else None

    def corpus(self) -> list[dict]:
        """The documents, {"id", "title", "text"}, in a fixed order (do not mutate)."""
        return self._corpus

    def mentions(self, text: str) -> list[Entity]:
        """Entities named in `text` (case-insensitive, whole words, longest match, a title's
        leading "The" optional), in order of appearance."""
        toks = _words(text)
        found, i = [], 0
        while i < len(toks):
            for cand, ent in self._index.get(toks[i], ()):
                if tuple(toks[i : i + len(cand)]) == cand:
                    found.append(ent)
                    i += len(cand)
                    break
            else:
                i += 1
        return found


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def name_tokens(name: str) -> tuple[str, ...]:
    """The words that identify a name, without a leading article.

    >>> name_tokens("The Amber Weir")
    ('amber', 'weir')
    """
    toks = _words(name)
    return tuple(toks[1:]) if len(toks) > 1 and toks[0] == "the" else tuple(toks)


class _Names:
    """Invented words, each used once across the world (except people's given names)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set(_RESERVED)

    def word(self, syllables: int, ending: str = "") -> str:
        while True:
            # Open syllables, then one closed one: "Ve-lo-ra", "Kes-tin".
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS[:8]) for _ in range(syllables - 1)]
            parts.append(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS))
            w = ("".join(parts) + ending).capitalize()
            if len(w) >= 4 and w.lower() not in self.used:
                self.used.add(w.lower())
                return w


def _people(rng: random.Random, names: _Names, cities: list[Entity]) -> list[Entity]:
    given = [names.word(rng.choice((2, 2, 3))) for _ in range(400)]
    family = [names.word(rng.choice((2, 2, 3))) for _ in range(900)]
    spans = {"scholar": (1500, 1880), "entrepreneur": (1840, 1975)}
    people, full = [], set()
    for role in ("novelist", "film director", "musician", "entrepreneur", "scholar", "other"):
        for _ in range(SIZES[role]):
            name = f"{rng.choice(given)} {rng.choice(family)}"
            while name in full:
                name = f"{rng.choice(given)} {rng.choice(family)}"
            full.add(name)
            lo, hi = spans.get(role, (1880, 1998))
            job = rng.choice(OTHER_JOBS) if role == "other" else role
            people.append(Entity(f"person-{len(people)}", "person", name, job, rng.randint(lo, hi),
                                 rng.choice(("she", "he")), {"birthplace": rng.choice(cities).id}))
    return people


def _orgs(rng: random.Random, names: _Names, people: list[Entity], cities: list[Entity]) -> list[Entity]:
    scholars = [p for p in people if p.category == "scholar"]
    founders = [p for p in people if p.category == "entrepreneur"]
    rng.shuffle(scholars)
    rng.shuffle(founders)
    orgs = []
    for kind in ("university", "publishing house", "film studio", "record label"):
        pool = scholars if kind == "university" else founders
        for _ in range(SIZES[kind]):
            founder = pool.pop()
            year = min(founder.year + rng.randint(25, 55), 2015)  # type: ignore[operator]
            name = f"{names.word(rng.choice((2, 3)))} {rng.choice(ORG_WORDS[kind])}"
            orgs.append(Entity(f"org-{len(orgs)}", "org", name, kind, year, "it",
                               {"founder": founder.id, "headquarters": rng.choice(cities).id}))
    return orgs


def _link_people(rng: random.Random, people: list[Entity], orgs: list[Entity]) -> None:
    """Alma maters (a university older than the student's eighteenth birthday) and mentors
    (someone 15 to 40 years older in the same field), so no chain loops back in time."""
    universities = [o for o in orgs if o.category == "university"]
    by_job: dict[str, list[Entity]] = {}
    for p in people:
        by_job.setdefault(p.category, []).append(p)
    for p in people:
        year = p.year or 0
        if rng.random() < 0.8:
            options = [u for u in universities if (u.year or 0) <= year + 18]
            if options:
                p.links["alma_mater"] = rng.choice(options).id
        if rng.random() < 0.6:
            options = [m for m in by_job[p.category] if 15 <= year - (m.year or 0) <= 40]
            if options:
                p.links["mentor"] = rng.choice(options).id


def _works(rng: random.Random, names: _Names, people: list[Entity], orgs: list[Entity]) -> list[Entity]:
    works, titles = [], set()
    creators = {job: [p for p in people if p.category == job] for job, _ in WORK_KINDS.values()}
    houses = {kind: [o for o in orgs if o.category == kind] for _, kind in WORK_KINDS.values()}
    for i in range(SIZES["work"]):
        kind = rng.choice(tuple(WORK_KINDS))
        job, org_kind = WORK_KINDS[kind]
        creator, org = rng.choice(creators[job]), rng.choice(houses[org_kind])
        title = ""
        while not title or title.lower() in titles:
            form = rng.random()
            if form < 0.4:
                title = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
            elif form < 0.7:
                title = f"{rng.choice(NOUNS)} of {names.word(2)}"
            else:
                title = f"The {names.word(2)} {rng.choice(NOUNS)}"
        titles.add(title.lower())
        year = min(max((creator.year or 0) + rng.randint(20, 55), (org.year or 0) + 1), 2024)
        works.append(Entity(f"work-{i}", "work", title, kind, year, "it",
                            {"creator": creator.id, "publisher": org.id}))
    return works


def _places(rng: random.Random, names: _Names) -> tuple[list[Entity], list[Entity]]:
    countries = [Entity(f"country-{i}", "country", names.word(rng.choice((1, 2)), rng.choice(_COUNTRY_ENDS)), "country")
                 for i in range(SIZES["country"])]
    cities = [Entity(f"city-{i}", "city", names.word(rng.choice((1, 2)), rng.choice(_CITY_ENDS)),
                     rng.choice(("city", "port city", "market town", "university town")),
                     links={"country": countries[i % len(countries)].id})
              for i in range(SIZES["city"])]
    for country, city in zip(countries, cities):  # the first city of each country is its capital
        country.links["capital"] = city.id
    return countries, cities


def _describe(rng: random.Random, e: Entity, by_id: dict[str, Entity]) -> str:
    """The entity's document: its own facts, phrased in one of a few natural ways."""
    n = {rel: by_id[t].name for rel, t in e.links.items()}
    if e.type == "person":
        pro = e.pronoun.capitalize()
        first = rng.choice((f"{e.name} is {_a(e.category)} born in {e.year} in {n['birthplace']}.",
                            f"Born in {n['birthplace']} in {e.year}, {e.name} is {_a(e.category)}."))
        more = []
        if "alma_mater" in n:
            more.append(f"{pro} studied at {n['alma_mater']}.")
        if "mentor" in n:
            more.append(f"{pro} trained under {n['mentor']}.")
        return " ".join([first] + more)
    if e.type == "org":
        return rng.choice((f"{e.name} is {_a(e.category)} founded in {e.year} by {n['founder']}. "
                           f"It is based in {n['headquarters']}.",
                           f"Founded by {n['founder']} in {e.year}, {e.name} is {_a(e.category)} "
                           f"based in {n['headquarters']}."))
    if e.type == "work":
        t, c, p, y = e.name, n["creator"], n["publisher"], e.year
        return {"novel": f"'{t}' is a novel by {c}, published by {p} in {y}.",
                "film": f"'{t}' is a film directed by {c} and released by {p} in {y}.",
                "album": f"'{t}' is an album by the musician {c}, released on the {p} label in {y}."}[e.category]
    if e.type == "city":
        return f"{e.name} is {_a(e.category)} in {n['country']}."
    return f"{e.name} is a country whose capital is {n['capital']}."


def _a(noun: str) -> str:
    """The noun with its indefinite article.

    >>> _a("engineer"), _a("university")
    ('an engineer', 'a university')
    """
    vowel = noun[0] in "aeio" or (noun[0] == "u" and not noun.startswith("uni"))
    return ("an " if vowel else "a ") + noun


@functools.lru_cache(maxsize=8)
def build_world(seed: int) -> World:
    """The world of `seed` (deterministic; cached, so every caller shares one instance)."""
    rng = random.Random(f"world-{seed}")
    names = _Names(rng)
    countries, cities = _places(rng, names)
    people = _people(rng, names, cities)
    orgs = _orgs(rng, names, people, cities)
    _link_people(rng, people, orgs)
    works = _works(rng, names, people, orgs)
    entities = people + orgs + works + cities + countries
    by_id = {e.id: e for e in entities}
    for e in entities:
        e.text = _describe(rng, e, by_id)
    return World(seed, entities)
