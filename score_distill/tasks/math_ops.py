"""The operations of the `math` suite's grammar that act on a holding.

Each operation is a function `op(b, budget) -> int`: it either writes one sentence (with
several phrasings to choose from), adds its node(s) to the builder and returns how many
computed nodes it added (a unit conversion it needs first counts too), or changes nothing and
returns 0 when it does not apply to the current quantity. `math_compose.compose` starts a
story and applies operations until exactly `n_ops` nodes exist. This module holds the opening sentence, unit
conversions and the operations on a holding: add, subtract, percent increase, decrease and
of, split evenly, multiply and ratio (which hand the story to another person), and a second
person's amount; `math_compose` holds rates, merges and the composer.

    >>> import random
    >>> b = Builder(random.Random(3))
    >>> start(b)
    >>> op_subtract(b, budget=1), b.ops, b.cur.value < b.first.value
    (1, ['subtract'], True)
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

from score_distill.tasks.math_grammar import (GROUPS, LIQUIDS, OBJECTS, PERCENTS, PURCHASES, SUBSTANCES,
                                              UNIT_PAIRS, UNITS, Builder, Holder, Running, amount, fill,
                                              phrase)

STOCK = ("count", "mass", "volume", "money")
# Amounts an add or subtract states, by unit.
SMALL: dict[str, list[int]] = {
    "item": list(range(2, 41)), "kg": list(range(1, 11)), "g": list(range(50, 1001, 50)),
    "l": list(range(1, 11)), "ml": list(range(50, 1001, 50)), "dollar": list(range(2, 81)),
    "cent": list(range(5, 201, 5)),
}
START_COUNTS = sorted({a * b for a in (2, 3, 4, 5, 6, 8, 10, 12) for b in range(2, 13) if 8 <= a * b <= 144})
STEMS = {"g": "grams", "kg": "kg", "ml": "ml", "l": "liters", "cent": "cents", "dollar": "dollars",
         "min": "minutes", "h": "hours", "item": "items"}

Op = Callable[[Builder, int], int]


def ask(template: str, holder: Holder, **kw: object) -> str:
    """A question with `{what}` left open for the unit words."""
    return phrase(template.replace("{what}", "{{what}}"), holder, **kw)


def them(r: Running) -> str:
    return "them" if r.kind == "count" else "it"


def stuff(r: Running) -> str:
    return "money" if r.kind == "money" else r.label


def start(b: Builder) -> None:
    """The first sentence: someone holds a stated amount."""
    rng, holder = b.rng, b.people[0]
    kind = rng.choices(STOCK, weights=(4, 2, 1.5, 2.5))[0]
    one = ""
    if kind == "count":
        thing, one = rng.choice(OBJECTS)
        unit = "dozen" if rng.random() < 0.15 else "item"
        n = rng.randint(2, 9) if unit == "dozen" else rng.choice(START_COUNTS)
        variants = ["{h} {has} {amt}.", "{h} buy~ {amt}.", "{h} collect~ {amt}."]
    elif kind == "money":
        thing, unit, n = "", "dollar", rng.randrange(20, 401, rng.choice((1, 5, 10)))
        variants = ["{h} {has} {amt}.", "{h} save~ {amt}.", "{h} earn~ {amt} in a week."]
    else:
        thing = rng.choice(SUBSTANCES if kind == "mass" else LIQUIDS)
        small, big = UNIT_PAIRS[kind]
        unit = big if rng.random() < 0.6 else small
        n = rng.randint(2, 24) if unit == big else rng.randrange(200, 5001, 50)
        variants = ["{h} {has} {amt}.", "{h} buy~ {amt}.", "{h} keep~ {amt} in a jar."]
    i = rng.randrange(len(variants))
    b.say(variants[i], holder, amt=amount(n, kind, unit, thing))
    b.feature("start", kind, i)
    var = thing or "money"
    label = thing
    g = b.given(n, "the starting amount")
    b.cur = Running(Fraction(n), kind, unit, thing, holder, ask("How many {what} {does} {h} have?", holder),
                    var, fill("the {w} {h} {has}", holder, w=thing or "money"), one, label, True, None, g)
    b.first = b.cur


def convert(b: Builder, target: str) -> int:
    """Convert the running quantity to `target` (the other unit of its kind)."""
    r = b.cur
    small, big = UNIT_PAIRS[r.kind]
    factor = UNITS[big][3] // UNITS[small][3]
    up = target == small           # big -> small multiplies
    value = r.value * factor if up else r.value / factor
    way = f"multiply by {factor}" if up else f"divide by {factor}"
    hint = f"there are {factor} {UNITS[small][1]} in one {UNITS[big][0]}, so {way}"
    b.move(unit=target)
    desc = f"{r.desc} in {UNITS[target][1]}" if target != "item" else r.desc
    stem = f"{r.var}_{STEMS[target]}" if target != "item" else r.var
    expr = "{x} * " + str(factor) if up else "Fraction({x}, " + str(factor) + ")"
    name = b.emit("convert", value, stem, expr, [r], [], desc, hint, [Fraction(factor), Fraction(1, factor)])
    b.move(value=value, node=name, desc=desc)
    b.feature("convert", f"{r.kind}>{target}")
    return 1


def _mixed(b: Builder, budget: int) -> bool:
    """Whether an add/subtract states its amount in the smaller unit (a conversion first)."""
    r = b.cur
    return (r.kind in ("mass", "volume") and r.unit == UNIT_PAIRS[r.kind][1] and budget >= 2
            and not b.must_merge and b.rng.random() < 0.35)


def op_add(b: Builder, budget: int) -> int:
    r = b.cur
    if r.kind not in STOCK or not r.stock or r.unit == "dozen":
        return 0
    mixed = _mixed(b, budget)
    unit = UNIT_PAIRS[r.kind][0] if mixed else r.unit
    base = r.value * (UNITS[r.unit][3] // UNITS[unit][3])
    n = b.pick(SMALL[unit], lambda n: base + n, r.kind)
    if n is None:
        return 0
    used = convert(b, unit) if mixed else 0
    r = b.cur
    if r.kind == "money":
        variants = ["{h} earn~ another {amt}.", "Later, {h} get~ {amt} from {q}.", "{h} find~ {amt} more."]
    elif r.kind == "count":
        variants = ["{h} then get~ another {amt}.", "Later, {h} get~ {amt} from {q}.", "{h} buy~ {amt} more."]
    else:
        variants = ["{h} then get~ another {amt}.", "Later, {h} get~ {amt} from {q}.", "{h} add~ {amt}."]
    i = b.rng.randrange(len(variants))
    b.say(variants[i], amt=amount(n, r.kind, unit, r.thing), q=b.other_person().name)
    b.feature("add", r.kind, i)
    g = b.given(n, "the amount added")
    desc = fill("the {w} {h} {has} now", r.holder, w=r.what)
    name = b.emit("add", base + n, f"{r.var}_now", "{x} + " + str(n), [r], [g], desc, f"add {n}")
    b.move(value=base + n, node=name, desc=desc, ask=ask("How many {what} {does} {h} have now?", r.holder))
    return used + 1


def op_subtract(b: Builder, budget: int) -> int:
    r = b.cur
    if r.kind not in STOCK or not r.stock or r.unit == "dozen":
        return 0
    mixed = _mixed(b, budget)
    unit = UNIT_PAIRS[r.kind][0] if mixed else r.unit
    base = r.value * (UNITS[r.unit][3] // UNITS[unit][3])
    n = b.pick([n for n in SMALL[unit] if n < base], lambda n: base - n, r.kind)
    if n is None:
        return 0
    used = convert(b, unit) if mixed else 0
    r = b.cur
    if r.kind == "money":
        variants = ["{h} give~ {amt} to {q}.", "{h} spend~ {amt} on lunch.", "{h} pay~ {amt} for a ticket."]
    else:
        variants = ["{h} give~ {amt} to {q}.", "{h} use~ {amt}.", "{h} lose~ {amt}."]
    i = b.rng.randrange(len(variants))
    b.say(variants[i], amt=amount(n, r.kind, unit, r.thing), q=b.other_person().name)
    b.feature("subtract", r.kind, i)
    g = b.given(n, "the amount taken away")
    desc = fill("the {w} {h} {has} left", r.holder, w=r.what)
    name = b.emit("subtract", base - n, f"{r.var}_left", "{x} - " + str(n), [r], [g], desc,
                  f"subtract {n}")
    b.move(value=base - n, node=name, desc=desc, ask=ask("How many {what} {does} {h} have left?", r.holder))
    return used + 1


PERCENT_VARIANTS: dict[tuple[str, str], list[str]] = {
    ("percent_decrease", "count"): ["{h} sell~ {p}% of them.", "{h} give~ away {p}% of them.",
                                    "{p}% of them get lost."],
    ("percent_decrease", "money"): ["{h} spend~ {p}% of it.", "{h} donate~ {p}% of it.",
                                    "{h} pay~ {p}% of it in rent."],
    ("percent_decrease", "other"): ["{h} use~ {p}% of it.", "{h} spill~ {p}% of it.", "{p}% of it goes to waste."],
    ("percent_increase", "count"): ["{h} get~ {p}% more {label}.", "The number of {label} {h} {has} grows by {p}%."],
    ("percent_increase", "money"): ["{h} invest~ it and it grows by {p}%.", "{gen} savings grow by {p}%."],
    ("percent_increase", "other"): ["{h} add~ {p}% more {label}.", "The amount of {label} grows by {p}%."],
    ("percent_of", "count"): ["{h} keep~ {p}% of them and give~ the rest away.",
                              "Only {p}% of them are good, and {h} keep~ just those."],
    ("percent_of", "money"): ["{h} save~ {p}% of it.", "{h} put~ {p}% of it in the bank."],
    ("percent_of", "other"): ["{h} keep~ {p}% of it and sell~ the rest.", "{h} keep~ only {p}% of it."],
}


def op_percent(b: Builder, budget: int, op: str) -> int:
    r = b.cur
    if r.kind not in STOCK or not r.stock or r.unit == "dozen" or (op == "percent_of" and b.must_merge):
        return 0
    factor = {"percent_decrease": lambda p: 100 - p, "percent_increase": lambda p: 100 + p,
              "percent_of": lambda p: p}[op]
    p = b.pick(list(PERCENTS), lambda p: r.value * factor(p) / 100, r.kind)
    if p is None:
        return 0
    variants = PERCENT_VARIANTS[(op, r.kind if r.kind in ("count", "money") else "other")]
    i = b.rng.randrange(len(variants))
    b.say(variants[i], p=p, label=stuff(r), gen="their" if r.holder.plural else f"{r.holder.name}'s")
    b.feature(op, r.kind, i)
    g = b.given(p, "the percentage")
    value = r.value * factor(p) / 100
    if op == "percent_of":
        verb = "save" if r.kind == "money" else "keep"
        desc = fill("the {w} {h} " + verb + "~", r.holder, w=r.what)
        question = ask("How many {what} {does} {h} " + verb + "?", r.holder)
        hint, stem = f"multiply by {p}/100", f"{r.var}_kept"
    elif op == "percent_decrease":
        desc = fill("the {w} {h} {has} left", r.holder, w=r.what)
        question = ask("How many {what} {does} {h} have left?", r.holder)
        hint, stem = f"keep {100 - p}% of it, since {p}% goes", f"{r.var}_left"
    else:
        desc = fill("the {w} {h} {has} now", r.holder, w=r.what)
        question = ask("How many {what} {does} {h} have now?", r.holder)
        hint, stem = f"multiply by (100 + {p})/100 for a {p}% rise", f"{r.var}_now"
    x = r.value
    aux = [Fraction(p, 100), Fraction(factor(p), 100), Fraction(factor(p)), x * p / 100, x * p, x / 100,
           x * factor(p), x * (100 - p) / 100]
    name = b.emit(op, value, stem, "{x} * Fraction(" + ("100 - " if op == "percent_decrease" else "100 + " if
                  op == "percent_increase" else "") + f"{p}, 100)", [r], [g], desc, hint, aux)
    b.move(value=value, node=name, desc=desc, ask=question)
    return 1


def op_divide(b: Builder, budget: int) -> int:
    r = b.cur
    if r.kind not in STOCK or not r.stock or r.unit == "dozen" or b.must_merge:
        return 0
    n = b.pick(list(range(2, 13)), lambda n: r.value / n, r.kind)
    if n is None:
        return 0
    group, member = b.rng.choice(GROUPS)
    variants = ["{h} share~ {them} equally among {n} {g}.", "{h} split~ {them} evenly between {n} {g}.",
                "{h} divide~ {them} equally among {n} {g}."]
    i = b.rng.randrange(len(variants))
    b.say(variants[i], them=them(r), n=n, g=group)
    b.feature("divide", r.kind, i)
    g = b.given(n, "the number of equal parts")
    each = Holder(f"each {member}", "their", False, person=False)
    desc = fill("the {w} {h} get~", each, w=r.what)
    name = b.emit("divide", r.value / n, f"{r.var}_each", "Fraction({x}, " + str(n) + ")", [r], [g], desc,
                  f"divide by {n}", [Fraction(1, n)])
    b.move(value=r.value / n, node=name, desc=desc, holder=each, ask=ask("How many {what} {does} {h} get?", each))
    b.prev = None
    return 1


def op_switch(b: Builder, budget: int, op: str) -> int:
    """Multiply or ratio: another person holds a multiple of the current amount."""
    r = b.cur
    if r.kind not in STOCK or not r.stock or r.unit == "dozen" or b.must_merge:
        return 0
    q = b.other_person()
    many = "many" if r.kind == "count" else "much"
    # "they" (after a merge) reads badly in a comparison: name the pair instead
    ref = Holder("the two of them", "their", True, person=False) if r.holder.plural else r.holder
    if op == "multiply":
        k = b.pick(list(range(2, 7)), lambda k: r.value * k, r.kind)
        if k is None:
            return 0
        a, c = 1, k
        variants = ["{q} has {k} times as {many} {s} as {h}.", "{q} has {k} times the {s} that {h} {has}."]
        i = b.rng.randrange(len(variants))
        b.say(variants[i], ref, q=q.name, k=k, many=many, s=stuff(r))
        givens = [b.given(k, "the multiple")]
        expr, hint, aux = "{x} * " + str(k), f"multiply by {k}", []
    else:
        pairs = [(a, c) for a in range(2, 9) for c in range(2, 9) if a != c]
        pair = b.pick(pairs, lambda ac: r.value * ac[1] / ac[0], r.kind)
        if pair is None:
            return 0
        a, c = pair
        variants = ["For every {a} {s} {h} {has}, {q} has {c}.", "The ratio of {h}'s {s} to {q}'s is {a} to {c}."]
        i = b.rng.randrange(len(variants) if r.holder.person else 1)   # "each friend's" reads badly
        b.say(variants[i], ref, q=q.name, a=a, c=c, s=r.what)
        givens = [b.given(a, "the first ratio term"), b.given(c, "the second ratio term")]
        expr, hint = "{x} * Fraction(" + f"{c}, {a})", f"multiply by {c}/{a}"
        aux = [r.value / a, r.value * c, Fraction(c, a), Fraction(a, c)]
    b.feature(op, r.kind, i)
    value = r.value * c / a
    desc = fill("the {w} {h} {has}", q, w=r.what)
    name = b.emit(op, value, f"{q.name}_{r.var}", expr, [r], givens, desc, hint, aux)
    old = r
    b.move(value=value, node=name, desc=desc, holder=q, ask=ask("How many {what} {does} {h} have?", q))
    b.prev = old if old.holder.person else None
    return 1


def op_restart(b: Builder, budget: int) -> int:
    """A second person with their own amount of the same thing; a merge must follow. Adds no
    node (the amount is stated), so it returns 0 and the composer checks `must_merge`."""
    r = b.cur
    q = b.other_person()
    n = b.pick(SMALL[r.unit] if r.unit in SMALL else [], lambda n: Fraction(n * 3), r.kind)
    if n is None:
        return 0
    n *= 3   # comparable in size to the first person's amount
    variants = ["{h} {has} {amt}.", "Meanwhile, {h} " + ("save~" if r.kind == "money" else "buy~") + " {amt}."]
    i = b.rng.randrange(len(variants))
    b.say(variants[i], q, amt=amount(n, r.kind, r.unit, r.thing))
    b.feature("second", r.kind, i)
    g = b.given(n, "the second person's amount")
    b.prev = r
    var = f"{q.name}_{r.label or 'money'}"
    b.cur = Running(Fraction(n), r.kind, r.unit, r.thing, q, ask("How many {what} {does} {h} have?", q),
                    var, fill("the {w} {h} {has}", q, w=r.what), r.one, r.label, True, None, g)
    b.must_merge, b.shape = True, "merge"
    return 0
