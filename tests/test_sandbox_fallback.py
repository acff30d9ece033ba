"""isolation="auto" falls back to process isolation per sandbox and for a stated cause: a slow
start is tried again and never moves later sandboxes; only a cause that holds for the whole
process is remembered; the isolation used, and why, reaches each trajectory record, the
metrics and the report. Interpreter starts are faked to fail (the real one runs otherwise)."""

from __future__ import annotations

import functools
import logging
from typing import Iterator

import pytest

from score_distill.agent.rollout import Episode, RolloutConfig, rollout
from score_distill.metrics import summarize
from score_distill.models.scripted import ScriptedModel
from score_distill.report import sandbox_line
from score_distill.tasks.scoring import Score
from score_distill.tools import sandbox as sandbox_module
from score_distill.tools import sandbox_fallback
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import Sandbox, SandboxConfig
from score_distill.tools.sandbox_process import Interpreter, SandboxStartError
from score_distill.types import Task

SLOW = "no answer in 60 s"
REFUSED = "the interpreter exited with code 1; it printed: unshare: unshare failed: Operation not permitted"


class FlakyStarts:
    """Stands in for Interpreter: the first `failures` starts of the given modes raise, the
    others start a real interpreter. `modes` lists every start tried, in order."""

    def __init__(self, failures: list[SandboxStartError], modes: tuple[str, ...] = ("namespaces",)) -> None:
        self.failures, self.failing_modes = list(failures), modes
        self.modes: list[str] = []

    def __call__(self, argv: list[str], env: dict[str, str], settings: dict[str, object], uid: int | None,
                 namespaces: bool) -> Interpreter:
        mode = "namespaces" if namespaces else "process"
        self.modes.append(mode)
        if mode in self.failing_modes and self.failures:
            raise self.failures.pop(0)
        return Interpreter(argv, env, settings, uid, namespaces)


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyStarts]:
    flaky = FlakyStarts([])
    monkeypatch.setattr(sandbox_module, "Interpreter", flaky)
    monkeypatch.setattr(sandbox_fallback, "_namespaces_unusable", None)  # restored afterwards
    yield flaky


@pytest.fixture
def made() -> Iterator[list[Sandbox]]:
    boxes: list[Sandbox] = []
    yield boxes
    for box in boxes:
        box.close()


@functools.cache
def namespaces_work() -> bool:
    with pytest.MonkeyPatch.context() as patch:  # a real start, whatever a test has faked
        patch.setattr(sandbox_module, "Interpreter", Interpreter)
        try:
            with Sandbox(SandboxConfig(isolation="namespaces")):
                return True
        except SandboxStartError:
            return False


def needs_namespaces() -> None:
    if not namespaces_work():
        pytest.skip("Linux namespaces are not usable on this machine: nothing to fall back from")


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "using process isolation" in r.getMessage()]


def test_a_slow_start_is_tried_again_with_namespaces(starts: FlakyStarts, made: list[Sandbox],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    needs_namespaces()
    starts.failures = [SandboxStartError(SLOW, transient=True)]
    made.append(Sandbox())
    assert made[0].isolation_record == {"isolation": "namespaces", "fallback": None}
    assert starts.modes == ["namespaces", "namespaces"]
    assert made[0].run("print(6 * 7)").output == "42\n"
    assert not fallback_warnings(caplog) and any("trying once more" in r.getMessage() for r in caplog.records)


def test_a_sandbox_that_starts_slowly_twice_falls_back_alone(starts: FlakyStarts, made: list[Sandbox],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    needs_namespaces()
    starts.failures = [SandboxStartError(SLOW, transient=True), SandboxStartError(SLOW, transient=True)]
    made.append(Sandbox())
    assert made[0].isolation == "process"
    assert made[0].fallback == f"the start timed out twice ({SLOW})"
    assert made[0].run("print(1 + 1)").output == "2\n"
    [warning] = fallback_warnings(caplog)
    assert "this sandbox only" in warning and "timed out" in warning
    # The next sandbox is not poisoned: it tries namespaces again, and gets them.
    made.append(Sandbox())
    assert made[1].isolation_record == {"isolation": "namespaces", "fallback": None}
    assert starts.modes == ["namespaces", "namespaces", "process", "namespaces"]
    assert sandbox_fallback._namespaces_unusable is None


def test_unshare_refused_is_remembered_with_its_cause(starts: FlakyStarts, made: list[Sandbox],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    starts.failures = [SandboxStartError(REFUSED), SandboxStartError(REFUSED)]
    made += [Sandbox(), Sandbox()]
    cause = "unshare is not permitted here (unshare: unshare failed: Operation not permitted)"
    assert [b.isolation_record for b in made] == [{"isolation": "process", "fallback": cause}] * 2
    assert starts.modes == ["namespaces", "process", "process"]  # the second did not try again
    [warning] = fallback_warnings(caplog)
    assert cause in warning and "every sandbox of this process" in warning and "lost" in warning
    # An explicit request is not answered from memory: it tries, and fails loudly.
    with pytest.raises(SandboxStartError, match="unshare failed"):
        Sandbox(SandboxConfig(isolation="namespaces"))


def test_explicit_namespaces_raise_instead_of_falling_back(starts: FlakyStarts) -> None:
    starts.failures = [SandboxStartError(SLOW, transient=True), SandboxStartError(SLOW, transient=True)]
    with pytest.raises(SandboxStartError, match="no answer"):
        Sandbox(SandboxConfig(isolation="namespaces"))
    assert starts.modes == ["namespaces", "namespaces"]  # tried once more, never in process mode
    starts.failures = [SandboxStartError("the interpreter exited with code 1")]
    with pytest.raises(SandboxStartError, match="exited"):
        Sandbox(SandboxConfig(isolation="namespaces"))
    assert starts.modes[2:] == ["namespaces"]  # a failure that is not slowness is not retried


def test_a_start_failing_in_both_modes_is_not_blamed_on_namespaces(
        starts: FlakyStarts, caplog: pytest.LogCaptureFixture) -> None:
    broken = "the interpreter exited with code 1; it printed: OverflowError: Python int too large"
    starts.failures, starts.failing_modes = [SandboxStartError(broken)] * 2, ("namespaces", "process")
    with pytest.raises(SandboxStartError, match=r"OverflowError.*\(with namespaces first: the namespaces start failed"):
        Sandbox()
    assert starts.modes == ["namespaces", "process"]
    assert not fallback_warnings(caplog) and sandbox_fallback._namespaces_unusable is None


def test_rollout_records_metrics_and_report_say_which_isolation_and_why(starts: FlakyStarts) -> None:
    needs_namespaces()
    starts.failures = [SandboxStartError(SLOW, transient=True), SandboxStartError(SLOW, transient=True)]
    model = ScriptedModel(lambda messages: "<first_thought>p</first_thought>" if len(messages) < 3
                          else "<thought>t</thought>\n<code>\nfinal_answer(42)\n</code>")
    tasks = [Task(id=f"t{i}", question="q", answer="42", suite="math") for i in range(3)]
    trajs = rollout(model, [Episode(t) for t in tasks], ToolConfig(sandbox=SandboxConfig(timeout_s=5.0)),
                    RolloutConfig(batch_size=1))
    cause = f"the start timed out twice ({SLOW})"
    assert [t.meta["sandbox"] for t in trajs] == [{"isolation": "process", "fallback": cause},
                                                  {"isolation": "namespaces", "fallback": None},
                                                  {"isolation": "namespaces", "fallback": None}]
    assert all(t.final_answer == "42" for t in trajs)
    metrics = summarize(trajs, [Score(1.0, True)] * 3)
    assert metrics["sandbox"] == {"isolation": {"namespaces": 2, "process": 1}, "fallbacks": {cause: 1}}
    line = sandbox_line({"stages": {"untrained": {"math:test": {"sandbox": metrics["sandbox"]}}}})
    assert line.startswith("**Sandboxes: 1 of 3 evaluation trajectories fell back to process isolation**")
    assert cause in line


def test_a_clean_run_reports_no_fallback(made: list[Sandbox], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    made.append(Sandbox(SandboxConfig(isolation="process")))
    assert made[0].isolation_record == {"isolation": "process", "fallback": None}  # asked for: no fallback
    line = sandbox_line({"stages": {"bc": {"math:test": {"sandbox": {"isolation": {"namespaces": 5},
                                                                     "fallbacks": {}}}}}})
    assert line == "Sandboxes: all 5 evaluation trajectories ran with namespaces isolation."
    assert not fallback_warnings(caplog)
