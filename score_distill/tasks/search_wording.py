"""How the `search` suite words its questions (tasks/search_suite.py makes them).

A question names the entities on a chain of hops (dicts made by `search_suite.walk`) with
noun phrases that nest ("the founder of the publisher of 'X'"), then asks about the last
hop, or compares the years two chains end in. The per-kind words (a novel's author wrote it,
a film's director directed it) serve the questions here, the walk's hop nouns and the
reference steps' thoughts (tasks/search_reference.py).

    >>> verb({"kind": "film", "relation": "creator"}), verb({"kind": "", "relation": "mentor"})
    ('directed', '')
"""

from __future__ import annotations

import random

KIND_WORDS = {  # per work kind: (creator noun, creator verb, publisher noun, publisher verb)
    "novel": ("author", "wrote", "publisher", "published"), "film": ("director", "directed", "studio", "produced"),
    "album": ("artist", "recorded", "label", "released")}
NOUNS = {"founder": "founder", "headquarters": "home city", "birthplace": "birthplace", "alma_mater": "university",
         "mentor": "mentor", "country": "country", "capital": "capital", "born": "birth year",
         "founded": "founding year", "released": "release year"}
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
    words = KIND_WORDS.get(hop["kind"], ("", "", "", ""))
    return {"creator": words[1], "publisher": words[3]}.get(hop["relation"], "")


def _subject(hops: list[dict], rng: random.Random) -> str:
    """What the last hop of a chain is asked about: the anchor, or the phrase before it."""
    h0 = hops[0]
    return _phrase(hops[:-1], rng) if len(hops) > 1 else _display(h0["source"], h0["source_type"], h0["kind"], rng)


def question(form: str, direction: str, sides: list[list[dict]], rng: random.Random) -> str:
    """The question of a template instance: its `form` ("bridge" or "comparison"), the
    `direction` a comparison asks for ("earlier" or "later") and the hops of each side."""
    if form == "bridge":
        last, x = sides[0][-1], _subject(sides[0], rng)
        return rng.choice(QUESTION_FORMS[last["relation"]]).format(x=x, noun=last["noun"], verb=verb(last))
    a, b = (_subject(s, rng) for s in sides)
    q = rng.choice(COMPARE_FORMS[(sides[0][-1]["relation"], direction)]).format(a=a, b=b)
    return q[0].upper() + q[1:]
