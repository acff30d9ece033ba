"""Composing word problems for the `math` suite: rates and merges (the operations that
change the kind of quantity or join two people's amounts), distractors, and `build_problem`,
which chains operations from `math_ops` until a problem has exactly the asked number.

    >>> import random
    >>> p = build_problem(random.Random(0), n_ops=3)
    >>> len([n for n in p.nodes if n.op != "given"]), p.question.endswith("?")
    (3, True)
"""

from __future__ import annotations

import random
from fractions import Fraction

from score_distill.tasks.math_grammar import (OBJECTS, PURCHASES, UNIT_PAIRS, UNITS, Builder, Holder, Node,
                                              Problem, amount, fill, phrase)
from score_distill.tasks.math_ops import (STOCK, Op, ask, convert, op_add, op_divide, op_percent, op_restart,
                                          op_subtract, op_switch, start, stuff)


def op_merge(b: Builder, budget: int, op: str) -> int:
    """Join the two people's amounts: put together, or ask how many more one has."""
    r, p = b.cur, b.prev
    if p is None or (p.kind, p.unit, p.thing) != (r.kind, r.unit, r.thing) or not r.holder.person:
        return 0
    if op == "merge_add":
        variants = ["{p} and {q} put their {s} together.", "{p} and {q} combine their {s}."]
        i = b.rng.randrange(len(variants))
        b.say(variants[i], p=p.holder.name, q=r.holder.name, s=stuff(r))
        they = Holder("they", "their", True, person=False)
        desc = fill("the {w} they have together", they, w=r.what)
        value, inputs, stem, hint = p.value + r.value, [p, r], f"total_{r.var}", "add the two amounts"
        question, holder = ask("How many {what} do they have together?", they), they
    else:
        big, small = (p, r) if p.value > r.value else (r, p)
        if big.value == small.value:
            return 0
        i = 0
        desc = f"how many more {r.what} {big.holder.name} has than {small.holder.name}"
        value, inputs, stem, hint = big.value - small.value, [big, small], "difference", "subtract the smaller amount"
        question = ask("How many more {what} does {b} have than {s}?", r.holder, b=big.holder.name,
                       s=small.holder.name)
        holder = r.holder
        b.closed = True   # only a unit conversion may follow a difference
    b.feature(op, r.kind, i)
    name = b.emit(op, value, stem, "{x} + {y}" if op == "merge_add" else "{x} - {y}", inputs, [], desc, hint)
    b.move(value=value, node=name, desc=desc, holder=holder, ask=question)
    b.prev, b.must_merge = None, False
    return 1


def op_rate(b: Builder, budget: int, op: str) -> int:
    """Price, weight or time per object: a count becomes money, a mass or a time."""
    r = b.cur
    if r.kind != "count" or r.unit != "item" or not r.one or b.must_merge:
        return 0
    rng = b.rng
    if op == "price":
        i = rng.randrange(3)
        unit = "cent" if i == 2 else "dollar"
        rate = rng.randrange(15, 100, 5) if unit == "cent" else rng.randint(2, 15)
        sentence = ["Each {one} costs ${r}.", "{h} sell~ each {one} for ${r}.", "Each {one} costs {r} cents."][i]
        question = ("How many {what} {does} {h} earn?" if i == 1 else f"How many {{what}} do all the {r.thing} cost?")
        kind, var, desc = "money", "earnings" if i == 1 else "cost", "the money for all of them"
        stock = i == 1    # money earned is held; a price tag is not
    elif op == "weight":
        i, unit, rate = rng.randrange(2), "g", rng.randrange(20, 501, 10)
        sentence = ["Each {one} weighs {r} grams.", "One {one} weighs {r} grams."][i]
        question = f"How many {{what}} do the {r.thing} weigh in total?"
        kind, var, desc, stock = "mass", "weight", "the total weight", False
    else:
        i, unit, rate = rng.randrange(2), "min", rng.randint(2, 15)
        sentence = ["It takes {h} {r} minutes to wrap each {one}.", "{h} need~ {r} minutes to pack each {one}."][i]
        question = ["How many {what} does it take {h} to wrap all of them?",
                    "How many {what} {does} {h} need to pack all of them?"][i]
        kind, var, desc, stock = "time", "time", "the total time", False
    b.say(sentence, one=r.one, r=rate)
    b.feature(op, r.kind, i)
    g = b.given(rate, "the rate")
    value = r.value * rate
    b.move(kind=kind, unit=unit)
    name = b.emit(op, value, var, "{x} * " + str(rate), [r], [g], desc, f"multiply the count by {rate}")
    b.move(value=value, node=name, desc=desc, thing="", var=var, one="", stock=stock, ask=ask(question, r.holder))
    return 1


def op_unit_rate(b: Builder, budget: int, op: str) -> int:
    """Money per kilogram, liter or hour (`pay`), or packing into equal containers (`pack`):
    needs the running quantity in one unit, converting it first when it is in the other."""
    r = b.cur
    if b.must_merge or b.closed:
        return 0
    if op == "pay" and r.kind in ("mass", "volume", "time"):
        need = UNIT_PAIRS[r.kind][1]
        options = list(range(2, 31))
    elif op == "pack" and r.kind in ("mass", "volume", "money") and r.stock:
        need = "dollar" if r.kind == "money" else UNIT_PAIRS[r.kind][0]
        options = list(range(2, 21)) if r.kind == "money" else list(range(50, 1001, 50))
    else:
        return 0
    factor = Fraction(UNITS[r.unit][3], UNITS[need][3])
    base = r.value * factor
    cost = 1 + (r.unit != need)
    if cost > budget:
        return 0
    rate = b.pick(options, (lambda n: base * n) if op == "pay" else (lambda n: base / n),
                  "money" if op == "pay" else "count")
    if rate is None:
        return 0
    if r.unit != need:
        convert(b, need)
        r = b.cur
    per = UNITS[need][0]
    if op == "pay":
        variants = (["{h} {is_} paid ${r} per hour for this work."] if r.kind == "time" else
                    ["{h} pay~ ${r} per {per} for the {label}.", "The price is ${r} per {per}."])
        question = ("How many {what} {does} {h} earn for this work?" if r.kind == "time" else
                    f"How many {{what}} {{does}} {{h}} pay for the {r.label}?")
        thing, var, kind, unit, value = "", "pay", "money", "dollar", base * rate
        desc, hint = "the amount paid", f"multiply by the {rate} dollars per {per}"
        stock = r.kind == "time"    # wages are held; money paid out is not
    else:
        containers = ("bags", "boxes") if r.kind == "mass" else ("bottles", "cups")
        thing = b.rng.choice(PURCHASES if r.kind == "money" else containers)
        verb = "pour~" if r.kind == "volume" else "pack~"
        variants = (["{h} spend~ all of it on {t} that cost ${r} each."] if r.kind == "money" else
                    ["{h} fill~ {t} with {r} {u} each.", "{h} " + verb + " it into {t} of {r} {u} each."])
        question = "How many {what} {does} {h} " + ("buy?" if r.kind == "money" else "fill?")
        var, kind, unit, value, stock = thing, "count", "item", base / rate, True
        desc = f"the number of {thing}"
        hint = (f"divide by the price of {rate} dollars" if r.kind == "money" else
                f"divide by the {rate} {UNITS[need][1]} in each")
    i = b.rng.randrange(len(variants))
    b.say(variants[i], r=rate, per=per, label=r.label, t=thing, u=UNITS[need][1])
    b.feature(op, r.kind, i)
    g = b.given(rate, "the rate")
    b.move(kind=kind, unit=unit)
    expr = "{x} * " + str(rate) if op == "pay" else "Fraction({x}, " + str(rate) + ")"
    name = b.emit(op, value, var, expr, [r], [g], desc, hint, [Fraction(1, rate)])
    b.move(value=value, node=name, desc=desc, thing=thing, var=var, one="", stock=stock, label=thing or r.label,
           ask=ask(question, r.holder))
    return cost


def op_final_convert(b: Builder, budget: int) -> int:
    """The question asks in the other unit of the quantity's kind."""
    r = b.cur
    if r.kind == "count" or budget != 1 or b.must_merge:
        return 0
    small, big = UNIT_PAIRS[r.kind]
    target = big if r.unit == small else small
    if not b.ok_value(r.value * UNITS[r.unit][3] / UNITS[target][3], r.kind):
        return 0
    return convert(b, target)


def _ops() -> list[tuple[str, float, Op]]:
    """(name, weight, function) of every operation the composer may pick."""
    def bind(f: object, name: str) -> Op:
        return lambda b, budget: f(b, budget, name)  # type: ignore[operator]

    return [
        ("add", 1.0, op_add), ("subtract", 1.0, op_subtract),
        ("percent_decrease", 1.0, bind(op_percent, "percent_decrease")),
        ("percent_increase", 0.7, bind(op_percent, "percent_increase")),
        ("percent_of", 0.8, bind(op_percent, "percent_of")),
        ("divide", 1.0, op_divide), ("multiply", 0.8, bind(op_switch, "multiply")),
        ("ratio", 0.8, bind(op_switch, "ratio")),
        ("merge_add", 1.5, bind(op_merge, "merge_add")), ("merge_sub", 0.8, bind(op_merge, "merge_sub")),
        ("price", 0.9, bind(op_rate, "price")), ("weight", 0.5, bind(op_rate, "weight")),
        ("time", 0.4, bind(op_rate, "time")), ("pay", 0.8, bind(op_unit_rate, "pay")),
        ("pack", 0.6, bind(op_unit_rate, "pack")),
    ]


OPS = _ops()


def compose(b: Builder, n_ops: int, merge_rate: float = 0.25, convert_rate: float = 0.3,
            prefer: frozenset[str] = frozenset()) -> bool:
    """Start a story and apply operations until exactly `n_ops` nodes; False if stuck."""
    start(b)
    used = convert(b, "item") if b.cur.unit == "dozen" else 0
    while used < n_ops:
        budget = n_ops - used
        if (b.shape == "chain" and b.prev is None and used >= 1 and budget >= 2 and b.cur.holder.person
                and b.cur.stock and b.cur.kind in STOCK and b.rng.random() < merge_rate):
            op_restart(b, budget)
        if budget == 1 and not b.must_merge and b.rng.random() < convert_rate and op_final_convert(b, budget):
            used += 1
            continue
        names = [("merge_add", "merge_sub")] if b.must_merge and budget == 1 else None
        step = _apply_one(b, budget - (1 if b.must_merge and budget > 1 else 0), prefer, names)
        if step == 0:
            return False
        used += step
    return used == n_ops and not b.must_merge


def _apply_one(b: Builder, budget: int, prefer: frozenset[str], only: list[tuple[str, ...]] | None) -> int:
    """Try operations in a weighted random order; return the nodes the first that applies added."""
    last = b.ops[-1] if b.ops else ""
    pool = [(name, w, f) for name, w, f in OPS if b.closed is False and (only is None or name in only[0])]
    boost = 1.0
    if prefer:   # boost preferred operations until the problem has one preferred feature
        so_far = set(b.features) | {":".join(f.split(":")[:2]) for f in b.features}
        so_far |= {f"pair:{a}>{c}" for a, c in zip(b.ops, b.ops[1:])}
        boost = 1.0 if prefer & so_far else 6.0
    weights = []
    for name, w, _ in pool:
        wanted = f"{name}:{b.cur.kind}" in prefer or f"pair:{last}>{name}" in prefer
        # a repeated operation reads as padding: make it rarer
        weights.append(w * (boost if wanted else 1.0) * (0.3 if name == last else 1.0))
    while pool:
        k = b.rng.choices(range(len(pool)), weights=weights)[0]
        name, _, f = pool.pop(k)
        weights.pop(k)
        n = f(b, budget) if budget >= 1 else 0
        if n:
            return n
    return 0


def distractor(b: Builder) -> str:
    """A sentence with a number no solution needs."""
    rng, first = b.rng, b.first
    used = {f for f in b.features if f.startswith("distractor:")}
    i = rng.choice([i for i in range(4) if f"distractor:{i}" not in used] or [0])
    if i == 0:
        n, text = rng.randint(8, 70), "{h} is {n} years old."
    elif i == 1:
        n, text = rng.randint(2, 40), "{q} has {n} " + rng.choice(OBJECTS)[0] + "."
    elif i == 2:
        n, text = rng.randint(2, 30), "The shop is {n} kilometers from {poss} home."
    else:
        n = int(first.value) + rng.randint(1, 20)
        text = "Last year, {h} had " + amount(n, first.kind, first.unit, first.thing) + "."
    b.given(n, "a number not needed", distractor=True)
    b.features.append(f"distractor:{i}")
    return phrase(text, first.holder, n=n, q=b.people[-1].name)


def build_problem(rng: random.Random, n_ops: int, distractors: int = 1, fraction_rate: float = 0.35,
                  merge_rate: float = 0.25, convert_rate: float = 0.3,
                  prefer: frozenset[str] = frozenset()) -> Problem:
    """One problem with exactly `n_ops` computed nodes and `distractors` unneeded numbers.
    `prefer` up-weights operations producing these features (the OOD split asks for its
    reserved ones)."""
    for _ in range(500):
        b = Builder(rng, fraction_rate)
        if compose(b, n_ops, merge_rate, convert_rate, prefer):
            return _finish(b, distractors)
    raise RuntimeError(f"could not compose a problem with {n_ops} operations")  # our bug: ops too narrow


def _finish(b: Builder, distractors: int) -> Problem:
    """Insert the distractors, ask the question, and sign the composition."""
    sentences = list(b.sentences)
    for _ in range(distractors):
        sentences.insert(b.rng.randint(1, len(sentences)), distractor(b))
    question = " ".join(sentences + [b.cur.ask.format(what=b.cur.what)])
    op_features = [f for f in b.features if not f.startswith("distractor")]
    features = sorted(set(op_features + [":".join(f.split(":")[:2]) for f in op_features] +
                          [f"pair:{a}>{c}" for a, c in zip(b.ops, b.ops[1:])]))
    signature = "|".join([b.shape] + op_features)
    nodes: list[Node] = b.nodes
    return Problem(question, nodes, b.cur.node or "", list(b.ops), features, b.shape, signature)
