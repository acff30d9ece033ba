"""The rollout loop driven by scripted policies: parse errors, tool errors, timeouts, the
turn budget, prefixes with rebuilt sandbox state, and batches that shrink as episodes end."""

from __future__ import annotations

from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.seeds import derive_seed
from score_distill.models.scripted import ScriptedModel
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import SandboxConfig
from score_distill.types import Step, Task

PLAN = "<first_thought>compute it</first_thought>"


def act(code: str, thought: str = "step") -> str:
    return f"<thought>{thought}</thought>\n<code>\n{code}\n</code>"


def turn(messages: list[dict[str, str]]) -> int:
    """Index of the assistant turn being generated."""
    return sum(m["role"] == "assistant" for m in messages)


def task(i: int = 0, question: str = "q") -> Task:
    return Task(id=f"t{i}", question=question, answer="42", suite="math")


TOOLS = ToolConfig(sandbox=SandboxConfig(timeout_s=2.0))


def script(*turns: str):
    def policy(messages):
        k = turn(messages)
        return turns[min(k, len(turns) - 1)]
    return policy


def test_happy_path_accounting_and_observations():
    model = ScriptedModel(script(PLAN, act("x = 6 * 7\nprint(x)"), act("final_answer(x)")))
    [traj] = rollout(model, [Episode(task())], TOOLS, RolloutConfig())
    assert traj.finished and traj.final_answer == "42"
    assert [s.kind for s in traj.steps] == ["plan", "action", "action"]
    assert traj.steps[1].observation == "42"
    assert all(s.author == "student" for s in traj.steps)
    assert traj.generated_tokens == sum(s.n_tokens for s in traj.steps) > 0
    assert traj.prompt_tokens > 0 and traj.tool_time_s > 0
    assert model.released == [Episode(task()).key]


def test_parse_error_becomes_observation_and_nothing_runs():
    model = ScriptedModel(script(PLAN, "<thought>oops, no code</thought>", act("final_answer(1)")))
    [traj] = rollout(model, [Episode(task())], TOOLS, RolloutConfig())
    bad = traj.steps[1]
    assert bad.parse_error is not None and bad.raw == "<thought>oops, no code</thought>"
    assert bad.observation.startswith("Error: your step could not be parsed")
    assert traj.final_answer == "1"


def test_tool_error_is_shown_and_state_survives():
    model = ScriptedModel(script(PLAN, act("y = 5"), act("1 / 0"), act("final_answer(y)")))
    [traj] = rollout(model, [Episode(task())], TOOLS, RolloutConfig())
    assert "ZeroDivisionError" in traj.steps[2].observation and traj.steps[2].error
    assert traj.final_answer == "5"


def test_timeout_restarts_with_earlier_state():
    model = ScriptedModel(script(PLAN, act("z = 11"), act("while True:\n    pass"), act("final_answer(z)")))
    tools = ToolConfig(sandbox=SandboxConfig(timeout_s=1.0))
    [traj] = rollout(model, [Episode(task())], tools, RolloutConfig())
    assert traj.steps[2].timed_out and "timed out" in traj.steps[2].observation
    assert traj.final_answer == "11"


def test_turn_budget_ends_unfinished_episode():
    model = ScriptedModel(script(PLAN, act("print('thinking')")))
    [traj] = rollout(model, [Episode(task())], TOOLS, RolloutConfig(max_turns=4))
    assert len(traj.steps) == 4 and not traj.finished and traj.final_answer is None


def test_consecutive_format_errors_end_the_episode_when_asked():
    bad = "no tags at all"
    # Two bad turns in a row end it; one bad turn between good ones does not.
    model = ScriptedModel(script(PLAN, bad, act("x = 1"), bad, bad, act("final_answer(x)")))
    [traj] = rollout(model, [Episode(task())], TOOLS, RolloutConfig(max_format_errors=2))
    assert len(traj.steps) == 5 and not traj.finished and traj.meta["stopped"] == "format_errors"
    model = ScriptedModel(script(PLAN, bad, act("x = 1"), bad, bad, act("final_answer(x)")))
    [traj] = rollout(model, [Episode(task())], TOOLS, RolloutConfig(max_format_errors=0))
    assert traj.finished and "stopped" not in traj.meta


def test_repeated_actions_end_the_episode_when_asked():
    # print(1) is repeated with the same output: a loop. x += 1 repeats the code but its
    # output changes, so it is progress, not a repeat.
    turns = (PLAN, act("print(1)"), act("x = 0"), act("x += 1; print(x)"), act("x += 1; print(x)"),
             act("print(1)"), act("print(1)"), act("final_answer(x)"))
    [traj] = rollout(ScriptedModel(script(*turns)), [Episode(task())], TOOLS, RolloutConfig(max_repeats=2))
    assert len(traj.steps) == 7 and not traj.finished and traj.meta["stopped"] == "repeats"
    [traj] = rollout(ScriptedModel(script(*turns)), [Episode(task())], TOOLS, RolloutConfig(max_repeats=3))
    assert traj.finished and traj.final_answer == "2" and "stopped" not in traj.meta


def test_prefix_state_is_rebuilt_and_counts_toward_budget():
    prefix = [Step(kind="plan", thought="p", author="teacher"),
              Step(kind="action", thought="set", code="base = 40", observation="(no output)", author="teacher"),
              Step(kind="action", thought="bad", code="1/0", error="ZeroDivisionError", author="student")]
    seen = []

    def policy(messages):
        seen.append(turn(messages))
        return act("final_answer(base + 2)")

    model = ScriptedModel(policy)
    [traj] = rollout(model, [Episode(task(), prefix=prefix)], TOOLS, RolloutConfig(max_turns=4))
    assert seen == [3]  # the model only writes the turns after the prefix
    assert traj.steps[:3] == prefix and traj.final_answer == "42"
    assert traj.meta["prefix_len"] == 3


def test_finished_episodes_leave_the_batch_and_queue_refills():
    def policy(messages):
        k, q = turn(messages), messages[1]["content"]
        if k == 0:
            return PLAN
        stop_at = int(q)  # question i ends at turn i
        return act("final_answer(0)") if k >= stop_at else act("print(1)")

    model = ScriptedModel(policy)
    tasks = [task(i, question=str(n)) for i, n in enumerate([1, 3, 1, 3, 2])]
    trajs = rollout(model, [Episode(t) for t in tasks], TOOLS, RolloutConfig(batch_size=3))
    assert [t.task_id for t in trajs] == [t.id for t in tasks]
    assert [len(t.steps) for t in trajs] == [2, 4, 2, 4, 3]
    assert max(model.batch_sizes) == 3
    # Work is proportional to the turns actually taken, not batch_size * longest episode.
    assert sum(model.batch_sizes) == sum(len(t.steps) for t in trajs)


def test_samples_get_distinct_seeds_and_keys():
    seeds = []

    def policy(messages):
        return act("final_answer(1)") if turn(messages) else PLAN

    model = ScriptedModel(policy)
    orig = model.generate

    def spy(requests, params):
        seeds.extend(r.seed for r in requests)
        return orig(requests, params)

    model.generate = spy  # type: ignore[method-assign]
    rollout(model, [Episode(task(), sample=k) for k in range(3)], TOOLS, RolloutConfig(seed=7))
    assert len(set(seeds)) == len(seeds) == 6
    assert derive_seed(7, "eval", "t0", 0, 0) in seeds
