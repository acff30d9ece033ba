"""The generated `math` suite: determinism, disjoint splits, exact answers, the DAG in meta,
and reference solutions that solve their tasks."""

from __future__ import annotations

import ast
from fractions import Fraction

import pytest

from score_distill.tasks.math_grammar import Node
from score_distill.tasks.math_suite import (OOD_FEATURES, SPLITS, canonical, generate, parse_exact, score,
                                            split_of)
from score_distill.types import Task

N = 300


@pytest.fixture(scope="module")
def splits() -> dict[str, list[Task]]:
    return {s: generate(s, N, seed=7) for s in SPLITS}


def test_deterministic_and_prefix_stable() -> None:
    a = generate("train", 40, seed=3)
    b = generate("train", 40, seed=3)
    assert [t.to_json() for t in a] == [t.to_json() for t in b]
    assert [t.to_json() for t in generate("train", 10, seed=3)] == [t.to_json() for t in a[:10]]
    assert [t.question for t in generate("train", 40, seed=4)] != [t.question for t in a]


def test_ids_and_meta(splits: dict[str, list[Task]]) -> None:
    for split, tasks in splits.items():
        assert [t.id for t in tasks] == [f"math-7-{split}-{i}" for i in range(N)]
        for t in tasks:
            assert t.suite == "math" and t.meta["split"] == split
            assert t.meta["n_ops"] == len(t.meta["ops"]) == len([n for n in t.meta["nodes"] if n["op"] != "given"])
            assert t.reference and t.reference[0].kind == "plan"
            assert all(s.author == "teacher" for s in t.reference)


def test_splits_never_share_a_question_or_composition(splits: dict[str, list[Task]]) -> None:
    questions = {s: {t.question for t in ts} for s, ts in splits.items()}
    assert all(len(q) == N for q in questions.values())   # no duplicate within a split either
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not questions[a] & questions[b], (a, b)
    signatures = {s: {t.meta["signature"] for t in ts} for s, ts in splits.items() if s != "ood"}
    assert not signatures["train"] & (signatures["dev"] | signatures["test"])
    for split in ("train", "dev", "test"):
        assert all(split_of(sig) == split for sig in signatures[split])
        assert not any(OOD_FEATURES & set(t.meta["features"]) for t in splits[split])
    assert all(OOD_FEATURES & set(t.meta["features"]) for t in splits["ood"])


def test_held_out_compositions_reuse_seen_parts(splits: dict[str, list[Task]]) -> None:
    """Test problems are new compositions, but nearly every part (operation on a kind of
    quantity, with its phrasing) also occurs in train."""
    seen = {f for t in splits["train"] for f in t.meta["signature"].split("|")[1:]}
    parts = [f for t in splits["test"] for f in t.meta["signature"].split("|")[1:]]
    assert sum(f in seen for f in parts) / len(parts) > 0.95


def test_ood_is_longer(splits: dict[str, list[Task]]) -> None:
    """By default train/dev/test have 2-3 operations and ood 3-4: every ood problem has an
    unseen feature, and about half of them also one operation more than any train problem."""
    assert all(2 <= t.meta["n_ops"] <= 3 for s in ("train", "dev", "test") for t in splits[s])
    ood = [t.meta["n_ops"] for t in splits["ood"]]
    assert all(3 <= n <= 4 for n in ood) and 0.25 < ood.count(4) / len(ood) < 0.75


def test_answers_are_canonical_exact(splits: dict[str, list[Task]]) -> None:
    answers = [t.answer for ts in splits.values() for t in ts]
    assert all(canonical(a) == a for a in answers)
    assert all(Fraction(a) > 0 for a in answers)
    fractional = sum("/" in a for a in answers) / len(answers)
    assert 0.1 < fractional < 0.6


def _evaluate(nodes: list[Node]) -> dict[str, Fraction]:
    """Evaluate each node's expression in plain Python (outside any sandbox)."""
    values: dict[str, Fraction] = {}
    for n in nodes:
        if n.op == "given":
            continue
        values[n.name] = eval(n.expr.format(*[f"values[{a!r}]" for a in n.args]),  # noqa: S307 (our own code)
                              {"Fraction": Fraction, "values": values})
    return values


def test_dag_values_and_dependencies(splits: dict[str, list[Task]]) -> None:
    for t in splits["train"][:100] + splits["ood"][:100]:
        nodes = [Node.from_dict(d) for d in t.meta["nodes"]]
        values = _evaluate(nodes)
        assert all(values[n.name] == n.value for n in nodes if n.op != "given")
        assert str(values[t.meta["answer_node"]]) == t.answer
        order = [n.name for n in nodes]
        for n in nodes:   # inputs come before the node that reads them
            assert all(order.index(a) < order.index(n.name) for a in n.args + n.givens)
        stated = [n for n in nodes if n.op == "given"]
        for g in stated:   # every given number is in the question text
            assert str(g.value) in t.question
        used = {g for n in nodes for g in n.givens}
        assert all((g.name in used) != g.distractor for g in stated)


def test_reference_code_reads_only_defined_names(splits: dict[str, list[Task]]) -> None:
    for t in splits["test"][:100]:
        defined = {"Fraction", "print", "final_answer"}
        for step in t.reference[1:]:
            tree = ast.parse(step.code)
            loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            assert loads <= defined | {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}, step.code
            defined |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        assert t.reference[-1].final_answer == t.answer
        assert "final_answer(" in t.reference[-1].code


def test_difficulty_dials() -> None:
    long = generate("train", 30, seed=1, min_ops=4, max_ops=4, distractors=(2, 2))
    assert all(t.meta["n_ops"] == 4 for t in long)
    assert all(sum(n["distractor"] for n in t.meta["nodes"]) == 2 for t in long)
    whole = generate("test", 60, seed=1, fraction_rate=0.0)
    assert sum("/" in t.answer for t in whole) < sum("/" in t.answer for t in generate("test", 60, seed=1))
    with pytest.raises(ValueError, match="unknown difficulty"):
        generate("train", 1, seed=0, n_steps=3)
    with pytest.raises(ValueError, match="unknown math split"):
        generate("validation", 1, seed=0)


@pytest.mark.parametrize("text,value", [
    ("17/4", "17/4"), ("4.25", "17/4"), ("\\frac{17}{4}", "17/4"), ("\\dfrac{-3}{6}", "-1/2"),
    ("$\\boxed{42}$", "42"), (" 42. ", "42"), ("1,234", "1234"), ("$6.75", "27/4"), ("12 kg", "12"),
    ("Fraction(9, 2)", "9/2"), ("-0.5", "-1/2"), ("8.0", "8"),
])
def test_parse_exact_reads_exact_forms(text: str, value: str) -> None:
    assert str(parse_exact(text)) == value


@pytest.mark.parametrize("text", ["", "abc", "4 1/4", "1/0", "\\frac{1}{0}", "12,34", "nan", "inf", "3 + 4"])
def test_parse_exact_refuses_the_rest(text: str) -> None:
    assert parse_exact(text) is None


def test_score_is_exact() -> None:
    assert score("4.25", "17/4") == 1.0
    assert score("0.3333333333333333", "1/3") == 0.0
    assert score("17/4", "17/4") == 1.0 and score("17/5", "17/4") == 0.0
