"""Tests of the generated world, its corpus, and the `search` task suite (splits, meta,
reference solutions executed in the sandbox)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest

from score_distill.tasks import search_suite, world as world_mod
from score_distill.tasks.search_suite import HELD_OUT, SPLITS, generate
from score_distill.tasks.world import LINKS, Entity, build_world
from score_distill.tools.search import SearchConfig, bm25_index, make_search
from score_distill.types import Task


def test_world_is_deterministic_fast_and_seeded() -> None:
    build_world.cache_clear()
    start = time.perf_counter()
    w = build_world(3)
    built = time.perf_counter() - start
    build_world.cache_clear()
    again = build_world(3)
    assert w is not again and w.corpus() == again.corpus()
    assert build_world(3) is again  # cached per seed
    assert build_world(4).corpus() != w.corpus()
    assert 3000 <= len(w.corpus()) <= 6000
    assert built < 1.0, f"building the world took {built:.2f} s"


def test_indexing_the_world_is_fast() -> None:
    build_world(5)
    start = time.perf_counter()
    bm25_index("embedded:5")
    assert time.perf_counter() - start < 3.0


def test_documents_are_short_and_state_only_their_own_facts() -> None:
    w = build_world(0)
    for doc in w.corpus():
        e = w.entity(doc["id"])
        sentences = [s for s in re.split(r"(?<=\.)\s+", doc["text"]) if s]
        assert 1 <= len(sentences) <= 3, doc
        assert len(doc["text"]) <= SearchConfig().snippet_chars  # results show whole documents
        assert doc["text"].startswith(e.name) or e.name in doc["text"]
        # Only the entity itself and its outgoing links are named, so a chain of relations
        # needs one search per hop.
        allowed = {e.id} | set(e.links.values())
        named = {m.id for m in w.mentions(doc["text"])}
        assert named <= allowed, (doc, named - allowed)
        assert set(e.links.values()) <= named


def test_names_are_unique_and_composed() -> None:
    w = build_world(0)
    names = [e.name for e in w.entities.values()]
    assert len(set(n.lower() for n in names)) == len(names)
    common = {w_.lower() for w_ in world_mod.ADJECTIVES + world_mod.NOUNS}
    for e in w.entities.values():
        if e.type != "work":  # titles mix English words with invented ones; names never do
            assert not ({t.lower() for t in e.name.split()[:1]} & common), e.name
    assert all(len(e.name.split()) == 2 for e in w.of_type("person"))


def test_links_are_consistent_in_time() -> None:
    w = build_world(0)
    for e in w.of_type("person"):
        if "mentor" in e.links:
            assert w.entity(e.links["mentor"]).year < e.year  # type: ignore[operator]
    for e in w.of_type("work"):
        assert e.year > w.entity(e.links["creator"]).year  # type: ignore[operator]
    for rel, (src, dst) in LINKS.items():
        for e in w.of_type(src):
            if rel in e.links:
                assert w.entity(e.links[rel]).type == dst


def test_bm25_finds_each_entity_by_name_in_the_top_three() -> None:
    w = build_world(0)
    search = make_search(SearchConfig(corpus="embedded:0"))
    rng = random.Random(0)
    sample = [e for t in ("person", "org", "work", "city", "country") for e in rng.sample(w.of_type(t), 20)]
    for e in sample:
        titles = re.findall(r"^\[\d\] (.*)$", search(e.name), flags=re.M)
        assert e.name in titles[:3], (e.name, titles)


def test_generate_ids_meta_and_determinism() -> None:
    tasks = generate("dev", 60, seed=2)
    assert [t.id for t in tasks] == [f"search-2-dev-{i}" for i in range(60)]
    assert [t.to_dict() for t in tasks] == [t.to_dict() for t in generate("dev", 60, seed=2)]
    assert [t.question for t in generate("dev", 30, seed=2)] == [t.question for t in tasks[:30]]
    assert [t.question for t in generate("dev", 30, seed=3)] != [t.question for t in tasks[:30]]
    for t in tasks:
        assert t.suite == "search" and t.meta["split"] == "dev" and t.meta["corpus"] == "embedded:2"
        assert t.meta["form"] in ("bridge", "comparison")
        assert 2 <= t.meta["hops"] <= 4 and t.meta["hops"] == len(t.meta["path"])
        assert Task.from_json(t.to_json()) == t
    assert {t.meta["form"] for t in tasks} == {"bridge", "comparison"}


def _answer_from_world(task: Task) -> str:
    """Recompute the gold answer by walking the world graph."""
    w = build_world(int(task.meta["corpus"].split(":")[1]))
    ends: list[tuple[Entity, int | Entity]] = []
    for side, anchor in enumerate(task.meta["anchors"]):
        cur: Entity | int | None = w.by_name(anchor)
        prev = cur
        for hop in (h for h in task.meta["path"] if h["side"] == side):
            assert isinstance(cur, Entity)
            prev, cur = cur, w.follow(cur, hop["relation"])
            assert cur is not None
        ends.append((prev, cur))  # type: ignore[arg-type]
    if task.meta["form"] == "bridge":
        value = ends[0][1]
        return value.name if isinstance(value, Entity) else str(value)
    (a, ya), (b, yb) = ends
    earlier = a if ya < yb else b  # type: ignore[operator]
    later = b if earlier is a else a
    return (earlier if task.meta["direction"] == "earlier" else later).name


@pytest.mark.parametrize("split", SPLITS)
def test_gold_answers_follow_the_world(split: str) -> None:
    for t in generate(split, 300, seed=0):
        assert t.answer == _answer_from_world(t), t.question


def test_splits_are_disjoint() -> None:
    tasks = {s: generate(s, 1500, seed=0) for s in SPLITS}
    questions = {s: {t.question.lower() for t in ts} for s, ts in tasks.items()}
    anchors = {s: {a for t in ts for a in t.meta["anchors"]} for s, ts in tasks.items()}
    for i, a in enumerate(SPLITS):
        assert len(questions[a]) == len(tasks[a])  # no duplicates inside a split either
        for b in SPLITS[i + 1 :]:
            assert not questions[a] & questions[b], (a, b)
            assert not anchors[a] & anchors[b], (a, b)
    in_dist = {t.meta["template"] for s in ("train", "dev", "test") for t in tasks[s]}
    assert not in_dist & {t.meta["template"] for t in tasks["ood"]}


def _pairs(task: Task) -> set[tuple[str, str]]:
    path = task.meta["path"]
    return {(a["relation"], b["relation"]) for a, b in zip(path, path[1:]) if a["side"] == b["side"]}


def test_ood_is_longer_and_made_of_unseen_combinations() -> None:
    train, ood = generate("train", 1500, seed=0), generate("ood", 1500, seed=0)
    assert all(t.meta["hops"] <= 3 for t in train if t.meta["form"] == "bridge")
    assert not any(_pairs(t) & HELD_OUT for t in train)
    assert {t.meta["direction"] for t in train if t.meta["form"] == "comparison"} == {"earlier"}
    bridges = [t for t in ood if t.meta["form"] == "bridge"]
    assert any(t.meta["hops"] == 4 for t in bridges)
    assert any(t.meta["hops"] < 4 and _pairs(t) & HELD_OUT for t in bridges)
    assert {t.meta["direction"] for t in ood if t.meta["form"] == "comparison"} == {"earlier", "later"}
    train_pairs = set().union(*map(_pairs, train))
    assert all(_pairs(t) - train_pairs or t.meta["hops"] == 4 or t.meta["direction"] == "later"
               or max(Counter(h["side"] for h in t.meta["path"]).values()) == 3 for t in ood)


def test_difficulty_parameters() -> None:
    two = generate("train", 200, seed=0, min_hops=2, max_hops=2, comparison_share=0.0)
    assert {t.meta["hops"] for t in two} == {2} and {t.meta["form"] for t in two} == {"bridge"}
    comps = generate("test", 100, seed=0, comparison_share=1.0)
    assert {t.meta["form"] for t in comps} == {"comparison"}
    with pytest.raises(ValueError, match="ask for fewer"):
        generate("dev", 100_000, seed=0, min_hops=2, max_hops=2, comparison_share=0.0)
    with pytest.raises(ValueError, match="bad search difficulty"):
        generate("train", 1, seed=0, min_hops=3, max_hops=2)
    one = generate("train", 20, seed=0, min_hops=1, max_hops=1)
    assert {t.meta["hops"] for t in one} == {1} and all(len(t.reference or []) == 3 for t in one)
    with pytest.raises(ValueError, match="unknown split"):
        generate("validation", 1, seed=0)
    with pytest.raises(ValueError, match="no ood templates"):
        generate("ood", 1, seed=0, min_hops=9, max_hops=9)


def test_thousands_of_tasks_in_seconds() -> None:
    start = time.perf_counter()
    tasks = generate("train", 3000, seed=11)
    assert len({t.question for t in tasks}) == 3000
    assert time.perf_counter() - start < 10.0


def test_questions_are_phrased_in_varied_ways() -> None:
    tasks = generate("train", 600, seed=0)
    shapes = Counter()
    for t in tasks:
        q = t.question
        for name in sorted({h[k] for h in t.meta["path"] for k in ("source", "value")}, key=len, reverse=True):
            q = q.replace(name, "X")
        shapes[(t.meta["template"], q)] += 1
    per_template = Counter(tpl for tpl, _ in shapes)
    assert sum(n >= 2 for n in per_template.values()) >= 10  # many templates come in several wordings


def test_reference_code_names_facts_in_order() -> None:
    task = next(t for t in generate("train", 50, seed=0) if t.meta["form"] == "bridge" and t.meta["hops"] == 3)
    ref = task.reference
    assert ref is not None and ref[0].kind == "plan" and all(s.author == "teacher" for s in ref)
    assert len(ref) == task.meta["hops"] + 2
    for step, hop in zip(ref[2:], task.meta["path"]):
        assert f'{hop["var"]} = ' in step.code  # the fact read from the previous search, as a literal
    assert ref[-1].code.endswith(f'final_answer({task.meta["path"][-1]["var"]})')
    assert task.answer not in "\n".join(s.code + s.thought for s in ref[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
def test_reference_solutions_run_in_the_sandbox(split: str) -> None:
    """Each search of a reference shows the fact its next step writes down, and the last
    step's final_answer is the gold answer."""
    from score_distill.agent.format import format_observation
    from score_distill.tools.config import ToolConfig, open_sandbox

    tools = ToolConfig()
    for task in generate(split, 30, seed=0):
        assert task.reference is not None
        observations, answer = [], None
        with open_sandbox(tools, task) as sandbox:
            for step in task.reference[1:]:
                r = sandbox.run(step.code)
                assert r.error is None and not r.timed_out, (task.id, step.code, r.error)
                observations.append(format_observation(r.output, r.error, r.timed_out))
                answer = r.final_answer
        assert answer == task.answer, task.id
        for hop, obs in zip(task.meta["path"], observations):  # move i searches hop i
            assert hop["source"] in obs and hop["value"] in obs, (task.id, hop, obs)
