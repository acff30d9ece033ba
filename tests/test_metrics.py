"""Tests of the evaluation metrics: the Wilson interval and `summarize`."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from score_distill.metrics import summarize, wilson_interval
from score_distill.tasks.scoring import Score
from score_distill.types import Step, Trajectory


def test_wilson_known_values() -> None:
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.0 < hi < 0.2
    lo, hi = wilson_interval(20, 20)
    assert 0.8 < lo < 1.0 and hi == 1.0
    wide, narrow = wilson_interval(5, 10), wilson_interval(500, 1000)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    z1 = wilson_interval(5, 10, z=1.0)
    assert z1[1] - z1[0] < wide[1] - wide[0]


@pytest.mark.parametrize("k,n", [(-1, 5), (6, 5), (0, -1)])
def test_wilson_rejects_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(k, n)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_estimate_and_stays_in_unit_interval(kn: tuple[int, int]) -> None:
    k, n = kn
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo - 1e-12 <= k / n <= hi + 1e-12
        assert wilson_interval(n - k, n) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)  # symmetric


def _traj(task_id: str, steps: list[Step] | None = None, answer: str | None = "1", finished: bool = True,
          prompt: int = 0, generated: int = 0, model_s: float = 0.0, tool_s: float = 0.0) -> Trajectory:
    return Trajectory(task_id=task_id, steps=steps or [], final_answer=answer, finished=finished,
                      prompt_tokens=prompt, generated_tokens=generated, model_time_s=model_s, tool_time_s=tool_s)


def _action(**kw: object) -> Step:
    return Step(kind="action", thought="t", code="x", **kw)  # type: ignore[arg-type]


def test_summarize_counts_accuracy_cost_and_errors() -> None:
    plan = Step(kind="plan", thought="p")
    trajs = [
        _traj("a", [plan, _action(final_answer="1")], prompt=100, generated=20, model_s=1.0, tool_s=0.5),
        _traj("b", [plan, _action(parse_error="no <code> block"), _action(error="NameError")], answer="2",
              prompt=200, generated=40, model_s=2.0, tool_s=1.5),
        _traj("c", [plan, _action(timed_out=True), _action(), _action()], answer=None, finished=False,
              prompt=300, generated=60, model_s=3.0, tool_s=2.5),
        _traj("d", [plan, _action(parse_error="empty <code> block", error="ignored: not run")], answer="x"),
    ]
    scores = [Score(1.0, True), Score(0.0, False), Score(0.0, False, "no final answer"),
              Score(0.0, False, "judge failed", judge_failed=True)]
    m = summarize(trajs, scores)
    assert m["n"] == 4 and m["n_tasks"] == 4 and m["samples_per_task"] == 1
    assert m["accuracy"] == 0.25 and m["ci95"] == list(wilson_interval(1, 4))
    assert m["mean_score"] == 0.25
    assert m["mean_turns"] == (2 + 3 + 4 + 2) / 4
    assert m["finish_rate"] == 0.75
    assert m["tokens_per_task"] == {"generated": 30.0, "prompt": 150.0}
    assert m["time_per_task_s"] == pytest.approx({"model": 1.5, "tool": 1.125, "total": 2.625})
    assert m["errors"] == {
        "no_final_answer": 1, "wrong_answer": 2, "judge_failed": 1,
        "parse_error_steps": 2, "tool_error_steps": 2, "timed_out_steps": 1,
        "trajectories_with_parse_error": 2, "trajectories_with_tool_error": 2,
    }
    assert "pass_at_k" not in m
    json.dumps(m)  # metrics.json must be writable as is


def test_summarize_with_samples_reports_any_correct_per_task() -> None:
    trajs = [_traj(t) for t in ["a", "a", "a", "b", "b", "b", "c", "c", "c"]]
    correct = [False, True, False, False, False, False, True, True, True]
    m = summarize(trajs, [Score(float(c), c) for c in correct])
    assert m["n"] == 9 and m["n_tasks"] == 3 and m["samples_per_task"] == 3
    assert m["accuracy"] == pytest.approx(4 / 9)
    assert m["pass_at_k"]["k"] == 3 and m["pass_at_k"]["n"] == 3
    assert m["pass_at_k"]["rate"] == pytest.approx(2 / 3)
    assert m["pass_at_k"]["ci95"] == list(wilson_interval(2, 3))


def test_summarize_graded_scores_show_in_mean_score_not_accuracy() -> None:
    m = summarize([_traj("a"), _traj("b")], [Score(0.8, False), Score(1.0, True)])
    assert m["accuracy"] == 0.5 and m["mean_score"] == pytest.approx(0.9)


def test_summarize_empty_and_mismatched() -> None:
    m = summarize([], [])
    assert m["n"] == 0 and m["accuracy"] == 0.0 and m["ci95"] == [0.0, 1.0] and m["mean_turns"] == 0.0
    with pytest.raises(ValueError, match="2 trajectories but 1 scores"):
        summarize([_traj("a"), _traj("b")], [Score(1.0, True)])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.booleans(), st.booleans(), st.integers(0, 6)), max_size=30))
def test_summarize_invariants(rows: list[tuple[str, bool, bool, int]]) -> None:
    trajs = [_traj(t, [_action()] * turns, answer="1" if answered else None, finished=answered)
             for t, _, answered, turns in rows]
    scores = [Score(float(ok and answered), ok and answered) for _, ok, answered, _ in rows]
    m = summarize(trajs, scores)
    n = len(rows)
    assert m["n"] == n and m["n_tasks"] == len({t for t, *_ in rows})
    if n:
        assert m["ci95"][0] <= m["accuracy"] <= m["ci95"][1]
    errors = m["errors"]
    # every attempt is exactly one of: correct, wrong answer, no answer
    assert round(m["accuracy"] * n) + errors["wrong_answer"] + errors["no_final_answer"] == n
    by_task: dict[str, list[bool]] = {}
    for t, s in zip(trajs, scores):
        by_task.setdefault(t.task_id, []).append(s.correct)
    if any(len(v) > 1 for v in by_task.values()):
        assert m["pass_at_k"]["rate"] == pytest.approx(sum(any(v) for v in by_task.values()) / len(by_task))
    else:
        assert "pass_at_k" not in m
