"""The parts of the `math` suite's word problems: vocabulary, units, quantities and the
builder that records a problem as a DAG of nodes.

A problem is a story about a running quantity (a count of objects, a mass, a volume, an
amount of money or a time) held by someone. Every number the text states is a *given* node;
every value an operation produces is a *computed* node that reads earlier nodes, so the
problem is a small DAG that the reference solution walks in order. The operations
themselves live in `math_ops`; this module holds what they share.

    >>> phrase("{h} sell~ {n} of them and {has} {m} left.", Holder("Mia", "her", False), n=3, m=4)
    'Mia sells 3 of them and has 4 left.'
    >>> amount(3, "mass", "kg", "flour"), amount(250, "money", "cent", "")
    ('3 kilograms of flour', '250 cents')
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Callable, Sequence, TypeVar

NAMES: tuple[tuple[str, str], ...] = (
    ("Mia", "her"), ("Leo", "his"), ("Ava", "her"), ("Noah", "his"), ("Zoe", "her"), ("Omar", "his"),
    ("Lena", "her"), ("Sam", "his"), ("Ivy", "her"), ("Raj", "his"), ("Nina", "her"), ("Tom", "his"),
    ("Elif", "her"), ("Kofi", "his"), ("Ana", "her"), ("Ben", "his"), ("Yuki", "her"), ("Luis", "his"),
    ("Maya", "her"), ("Ivan", "his"), ("Sara", "her"), ("Hugo", "his"), ("Dana", "her"), ("Eli", "his"),
)
OBJECTS: tuple[tuple[str, str], ...] = (
    ("apples", "apple"), ("books", "book"), ("marbles", "marble"), ("stickers", "sticker"),
    ("eggs", "egg"), ("pencils", "pencil"), ("cookies", "cookie"), ("candles", "candle"),
    ("shells", "shell"), ("cards", "card"), ("bricks", "brick"), ("toys", "toy"),
    ("lemons", "lemon"), ("buttons", "button"), ("plates", "plate"), ("soaps", "soap"),
)
SUBSTANCES = ("flour", "rice", "sugar", "clay", "coffee", "sand", "salt", "oats")
LIQUIDS = ("juice", "milk", "water", "paint", "oil", "soup", "tea")
GROUPS: tuple[tuple[str, str], ...] = (
    ("friends", "friend"), ("cousins", "cousin"), ("classmates", "classmate"),
    ("neighbors", "neighbor"), ("teammates", "teammate"), ("children", "child"),
)
PURCHASES = ("tickets", "notebooks", "plants", "mugs", "scarves", "posters")
PERCENTS = (5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 80)

# unit -> (singular, plural, kind, size in the kind's smallest unit)
UNITS: dict[str, tuple[str, str, str, int]] = {
    "item": ("", "", "count", 1), "dozen": ("dozen", "dozen", "count", 12),
    "g": ("gram", "grams", "mass", 1), "kg": ("kilogram", "kilograms", "mass", 1000),
    "ml": ("milliliter", "milliliters", "volume", 1), "l": ("liter", "liters", "volume", 1000),
    "cent": ("cent", "cents", "money", 1), "dollar": ("dollar", "dollars", "money", 100),
    "min": ("minute", "minutes", "time", 1), "h": ("hour", "hours", "time", 60),
}
# The two units of each kind that a conversion moves between: (small, big).
UNIT_PAIRS: dict[str, tuple[str, str]] = {
    "count": ("item", "dozen"), "mass": ("g", "kg"), "volume": ("ml", "l"),
    "money": ("cent", "dollar"), "time": ("min", "h"),
}

# Values larger than this, or with a larger denominator, make an operation retry: the
# problems stay readable and the arithmetic stays in reach of a small model.
MAX_VALUE = 100_000
MAX_DENOMINATOR = 400

O = TypeVar("O")


@dataclass(frozen=True)
class Holder:
    """Who holds the running quantity: a person, "each friend", or "they"."""

    name: str
    poss: str
    plural: bool
    person: bool = True   # a named person (merges only combine named people)


def fill(template: str, holder: Holder, **kw: object) -> str:
    """`phrase` without the capital letter (for phrases inside sentences).

    >>> fill("the {w} {h} {has} left", Holder("each friend", "their", False), w="eggs")
    'the eggs each friend has left'
    """
    plural = holder.plural
    text = re.sub(r"(\w+)~", lambda m: m.group(1) + ("" if plural else "s"), template)
    return text.format(h=holder.name, poss=holder.poss, has="have" if plural else "has",
                       does="do" if plural else "does", is_="are" if plural else "is", **kw)


def phrase(template: str, holder: Holder, **kw: object) -> str:
    """Fill a template: `{h}` is the holder, `{poss}` its possessive, `{has}`, `{does}` and
    `{is_}` agree with it, and `verb~` takes an -s for a singular holder. The first letter
    is capitalised.

    >>> phrase("{h} share~ it.", Holder("they", "their", True))
    'They share it.'
    """
    text = fill(template, holder, **kw)
    return text[:1].upper() + text[1:]


def unit_word(n: Fraction | int, unit: str) -> str:
    singular, plural, _, _ = UNITS[unit]
    return singular if n == 1 else plural


def amount(n: Fraction | int, kind: str, unit: str, thing: str) -> str:
    """How the text states a quantity of `kind` in `unit`."""
    if kind == "count":
        return f"{n} dozen {thing}" if unit == "dozen" else f"{n} {thing}"
    if kind == "money":
        return f"${n}" if unit == "dollar" else f"{n} cents"
    of = f" of {thing}" if thing else ""
    return f"{n} {unit_word(n, unit)}{of}"


def what(kind: str, unit: str, thing: str) -> str:
    """The words after "How many" for a quantity ("apples", "kilograms of flour").

    >>> what("count", "item", "eggs"), what("volume", "ml", "milk"), what("money", "dollar", "")
    ('eggs', 'milliliters of milk', 'dollars')
    """
    if kind == "count":
        return thing
    plural = UNITS[unit][1]
    return f"{plural} of {thing}" if thing and kind in ("mass", "volume") else plural


@dataclass
class Node:
    """A quantity of the problem. Givens are numbers stated in the text (`distractor` marks
    those no solution needs); computed nodes read `args` (computed nodes, in order) and
    inline their givens as literals in `expr`, where `{0}`, `{1}` stand for the args.
    `desc` names the quantity and `hint` says how it follows (both for the thoughts of the
    reference solution); `aux` lists values that valid other ways to compute it pass
    through (e.g. the part removed before the part kept)."""

    name: str
    op: str
    value: Fraction
    unit: str = ""
    args: list[str] = field(default_factory=list)
    givens: list[str] = field(default_factory=list)
    expr: str = ""
    desc: str = ""
    hint: str = ""
    aux: list[Fraction] = field(default_factory=list)
    distractor: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "op": self.op, "value": str(self.value), "unit": self.unit,
                "args": list(self.args), "givens": list(self.givens), "expr": self.expr,
                "desc": self.desc, "hint": self.hint, "aux": [str(a) for a in self.aux],
                "distractor": self.distractor}

    @classmethod
    def from_dict(cls, d: dict) -> Node:  # type: ignore[type-arg]
        return cls(name=d["name"], op=d["op"], value=Fraction(d["value"]), unit=d["unit"],
                   args=list(d["args"]), givens=list(d["givens"]), expr=d["expr"], desc=d["desc"],
                   hint=d["hint"], aux=[Fraction(a) for a in d["aux"]], distractor=d["distractor"])


@dataclass
class Running:
    """The quantity the story is currently about."""

    value: Fraction
    kind: str          # count | mass | volume | money | time
    unit: str          # a key of UNITS
    thing: str         # plural object noun, substance or liquid ("" for money, time, weights)
    holder: Holder
    ask: str           # the question about it, with {what} for the unit words
    var: str           # stem for variable names ("apples", "flour", "money")
    desc: str          # noun phrase for thoughts: "the apples Mia has left"
    one: str = ""      # singular object noun, for counts ("apple")
    label: str = ""    # what the quantity is made of ("flour", "apples"), kept through rates
    stock: bool = True        # a holding that can be added to, split, compared
    node: str | None = None   # the computed node holding it; None while it is a stated number
    given: str = ""           # the given node when `node` is None

    @property
    def what(self) -> str:
        return what(self.kind, self.unit, self.thing)


@dataclass
class Problem:
    question: str
    nodes: list[Node]
    answer: str                      # name of the node holding the answer
    ops: list[str]
    features: list[str]
    shape: str                       # "chain" or "merge"
    signature: str                   # the composition: operations, kinds and phrasings in order


class Builder:
    """Records one problem as it is composed: sentences, nodes, operations and features."""

    def __init__(self, rng: random.Random, fraction_rate: float = 0.35) -> None:
        self.rng = rng
        self.fraction_rate = fraction_rate
        self.nodes: list[Node] = []
        self.sentences: list[str] = []
        self.ops: list[str] = []
        self.features: list[str] = []
        self.people = [Holder(n, p, False) for n, p in rng.sample(NAMES, 5)]
        self.prev: Running | None = None     # the other party of a possible merge
        self.cur: Running
        self.first: Running                  # the opening amount (distractors echo it)
        self.shape = "chain"
        self.must_merge = False              # a second party was started and must be merged
        self.closed = False                  # only a unit conversion may follow

    def other_person(self) -> Holder:
        """A person not yet named in the story."""
        used = "".join(self.sentences)
        fresh = [p for p in self.people if p.name not in used and p.name != self.cur.holder.name]
        return fresh[0] if fresh else self.people[-1]

    def given(self, value: Fraction | int, desc: str, distractor: bool = False) -> str:
        name = f"g{sum(n.op == 'given' for n in self.nodes)}"
        self.nodes.append(Node(name, "given", Fraction(value), desc=desc, distractor=distractor))
        return name

    def var_name(self, stem: str) -> str:
        stem = re.sub(r"[^a-z0-9_]", "_", stem.lower()).strip("_") or "value"
        taken = {n.name for n in self.nodes} | {"fraction", "print", "final_answer"}
        name, i = stem, 2
        while name in taken:
            name, i = f"{stem}_{i}", i + 1
        return name

    def emit(self, op: str, value: Fraction, stem: str, expr_of: str, inputs: Sequence[Running],
             givens: list[str], desc: str, hint: str, aux: Sequence[Fraction] = ()) -> str:
        """Add a computed node; `expr_of` writes {x}, {y} for the inputs in order (a stated
        number becomes its literal, a computed one a placeholder for its variable)."""
        args: list[str] = []
        tokens: list[str] = []
        for r in inputs:
            if r.node is None:
                givens = [r.given] + givens
                tokens.append(str(r.value))
            else:
                args.append(r.node)
                tokens.append("{" + str(len(args) - 1) + "}")
        expr = expr_of.format(**dict(zip("xy", tokens)))
        name = self.var_name(stem)
        aux_kept = sorted({a for a in aux if a > 0} - {value})
        self.nodes.append(Node(name, op, value, self.cur.unit, args, givens, expr, desc, hint, aux_kept))
        self.ops.append(op)
        return name

    def ok_value(self, v: Fraction, kind: str) -> bool:
        n, d = v.numerator, v.denominator   # plain ints: this runs for every candidate
        if n <= 0 or n > MAX_VALUE * d or d > MAX_DENOMINATOR:
            return False
        if kind == "money":   # whole cents: money that cannot be paid out reads oddly
            return 100 % d == 0
        return d == 1 if kind == "count" else True

    def pick(self, options: Sequence[O], value_of: Callable[[O], Fraction], kind: str) -> O | None:
        """Choose a parameter that gives a valid result. Whole results are preferred, except
        with probability `fraction_rate` (counts are always whole). Options are tried in a
        random order until one of the wanted sort turns up (trying all is slow)."""
        order = list(options)
        self.rng.shuffle(order)
        want_part = self.rng.random() < self.fraction_rate
        other: O | None = None
        for o in order:
            v = value_of(o)
            if not self.ok_value(v, kind):
                continue
            if (v.denominator != 1) == want_part:
                return o
            if other is None:
                other = o
        return other

    def say(self, template: str, holder: Holder | None = None, **kw: object) -> str:
        text = phrase(template, holder or self.cur.holder, **kw)
        self.sentences.append(text)
        return text

    def feature(self, op: str, kind: str, variant: int | None = None) -> None:
        self.features.append(f"{op}:{kind}" if variant is None else f"{op}:{kind}:{variant}")

    def move(self, **changes: object) -> None:
        self.cur = replace(self.cur, **changes)  # type: ignore[arg-type]
