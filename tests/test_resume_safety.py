"""Resume never loses or mixes data: a file torn anywhere in its last line (even inside a
character) resumes, every rewrite is atomic (killed or failing midway, the old file stays
whole), and a rerun into an output directory with other settings is refused, naming them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from score_distill.agent.rollout import RolloutConfig
from score_distill.cli import main
from score_distill.evaluate import evaluate
from score_distill.rundir import RecordLog
from score_distill.types import MentorRecord
from score_distill.rundir import RunDirConflict, open_run_dir
from score_distill.storage import atomic_write_text
from score_distill.teachers.cache import CacheError, CachedReply, TeacherCache
from score_distill.tools.config import ToolConfig
from score_distill.tools.sandbox import SandboxConfig
from score_distill.types import SchemaError, Step, Task, Trajectory, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ToolConfig(sandbox=SandboxConfig(timeout_s=5.0))


def traj(i: int) -> Trajectory:
    text = f"réponse {i}: 6 × 7 = 42 ✓ \U0001f600 中文"  # 2-, 3- and 4-byte characters
    return Trajectory(task_id=f"t{i}", steps=[Step(kind="plan", thought=text)], final_answer=text, meta={"sample": 0})


# -- a torn last line -----------------------------------------------------------------------


def test_a_last_line_torn_at_any_byte_is_dropped(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [traj(0), traj(1)])
    data = path.read_bytes()
    start = data.rindex(b"\n", 0, len(data) - 1) + 1
    torn_in_a_character = 0
    for cut in range(start, len(data) - 1):  # the last byte is the newline
        path.write_bytes(data[:cut])
        try:
            data[start:cut].decode("utf-8")
        except UnicodeDecodeError:
            torn_in_a_character += 1
        assert read_jsonl(path, Trajectory) == [traj(0)], cut
    assert torn_in_a_character > 5  # the cuts did land inside multi-byte characters
    path.write_bytes(data[:-1])  # only the newline lost: the last record is whole and kept
    assert read_jsonl(path, Trajectory) == [traj(0), traj(1)]


def test_invalid_utf8_in_a_complete_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [traj(0), traj(1), traj(2)])
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace("é".encode(), b"\xe9", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(SchemaError, match=r"t\.jsonl:2: not UTF-8"):
        read_jsonl(path, Trajectory)
    log = tmp_path / "records.jsonl"
    log.write_bytes(b'{"a": 1}\n\xff\xfe\n')
    with pytest.raises(SchemaError, match=r"records\.jsonl:2: not UTF-8"):
        RecordLog(log, MentorRecord, key=lambda r: r.task_id).load()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "teacher_calls.jsonl").write_bytes(b"\x80\n")
    with pytest.raises(CacheError, match=r"teacher_calls\.jsonl:1: not UTF-8"):
        TeacherCache(tmp_path / "cache")


def test_record_log_and_cache_cut_a_tail_torn_inside_a_character(tmp_path: Path):
    cache = TeacherCache(tmp_path)
    cache.put("k1", CachedReply("é✓\U0001f600"))
    cache.put("k2", CachedReply("中文" * 10))
    path = tmp_path / "teacher_calls.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex("中".encode()) + 1])  # inside the last character
    again = TeacherCache(tmp_path)
    assert len(again) == 1 and again.get("k1") == CachedReply("é✓\U0001f600")
    again.put("k3", CachedReply("x"))
    assert len(TeacherCache(tmp_path)) == 2


def scripted(messages):
    if sum(m["role"] == "assistant" for m in messages) == 0:
        return "<first_thought>répondre ✓</first_thought>"
    return "<thought>réponse ✓</thought>\n<code>\nfinal_answer('quarante-deux ✓ \U0001f600')\n</code>"


TASKS = [Task(id=f"t{i}", question=f"q{i} ✓", answer="42", suite="math") for i in range(3)]


def test_eval_resumes_from_a_file_torn_inside_a_character(tmp_path: Path):
    from score_distill.models.scripted import ScriptedModel

    evaluate(ScriptedModel(scripted), TASKS, tmp_path, TOOLS, RolloutConfig())
    path = tmp_path / "trajectories.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex("✓".encode()) + 1])
    model = ScriptedModel(scripted)
    assert evaluate(model, TASKS, tmp_path, TOOLS, RolloutConfig())["n"] == 3
    assert len(model.batch_sizes) == 2  # only the torn trajectory ran again (a plan and an action turn)
    assert sorted(t.task_id for t in read_jsonl(path, Trajectory)) == ["t0", "t1", "t2"]


def test_rl_log_trim_after_a_tear_inside_a_character(tmp_path: Path):
    from score_distill.train.rl_dir import trim_jsonl

    path = tmp_path / "samples.jsonl"
    lines = [f'{{"step": {i}, "text": "é✓\U0001f600"}}' for i in range(4)]
    path.write_bytes(("\n".join(lines) + "\n").encode()[:-4])  # torn inside the last emoji
    trim_jsonl(path, lambda r: r["step"] <= 1)
    assert path.read_text(encoding="utf-8") == lines[0] + "\n" + lines[1] + "\n"


# -- atomic rewrites --------------------------------------------------------------------------


def test_a_rewrite_that_fails_midway_keeps_the_old_file(tmp_path: Path, monkeypatch):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [traj(i) for i in range(5)])
    old = path.read_bytes()

    def records():
        yield traj(7)
        raise RuntimeError("the writer died")

    with pytest.raises(RuntimeError, match="the writer died"):
        write_jsonl(path, records())
    assert path.read_bytes() == old

    def no_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="disk full"):
        write_jsonl(path, [traj(8)])
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]  # no temporary file is left behind


def test_eval_resume_rewrite_interrupted_keeps_every_trajectory(tmp_path: Path, monkeypatch):
    from score_distill.models.scripted import ScriptedModel

    evaluate(ScriptedModel(scripted), TASKS, tmp_path, TOOLS, RolloutConfig())
    path = tmp_path / "trajectories.jsonl"
    old = path.read_bytes()
    path.write_bytes(old[:-7])  # a torn last line: the resume rewrites the file

    def killed(src, dst):
        raise KeyboardInterrupt  # stands for the process dying at this moment

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate(ScriptedModel(scripted), TASKS, tmp_path, TOOLS, RolloutConfig())
    assert path.read_bytes() == old[:-7]


KILL_DRIVER = """
import sys
from score_distill.types import Step, Trajectory, write_jsonl
path, n = sys.argv[1], int(sys.argv[2])
records = [Trajectory(task_id=f"t{i}", steps=[Step(kind="plan", thought="é" * 200)]) for i in range(n)]
write_jsonl(path, records)
print("ready", flush=True)
while True:
    write_jsonl(path, records)
"""


@pytest.mark.slow
def test_sigkill_during_rewrites_of_a_large_file_leaves_it_whole(tmp_path: Path):
    path, n = tmp_path / "trajectories.jsonl", 20_000
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", KILL_DRIVER, str(path), str(n)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        data = path.read_bytes()
        assert data.endswith(b"\n") and data.count(b"\n") == n, delay
        assert len(read_jsonl(path, Trajectory)) == n


# -- a rerun with other settings --------------------------------------------------------------


def eval_args(out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", "scripted", "--tasks", "math:test", "--n", "2", "--tools.sandbox.timeout-s", "5",
            "--out", str(out), *extra]


def test_eval_rerun_with_other_settings_is_refused(tmp_path: Path, monkeypatch, capsys):
    from score_distill.models.scripted import ScriptedModel

    monkeypatch.setattr("score_distill.models.load.load_model", lambda spec, **kw: ScriptedModel(scripted))
    out = tmp_path / "eval"
    assert main(eval_args(out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(eval_args(out, "--rollout.temperature", "1.0", "--rollout.max-turns", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("score-distill eval: ")
    assert "rollout.max_turns unset -> 2" in err and "rollout.temperature 0.0 -> 1.0" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing was touched
    # A setting that changes speed, not results, may differ: the rerun resumes.
    assert main(eval_args(out, "--rollout.batch-size", "3")) == 0
    assert len(read_jsonl(out / "trajectories.jsonl", Trajectory)) == 2


def test_pipeline_rerun_with_other_settings_is_refused_before_any_stage(tmp_path: Path, capsys):
    from score_distill.commands.run import preset_path
    from score_distill.config import load_yaml
    from score_distill.pipeline import RunConfig, run_pipeline

    out = tmp_path / "run"
    open_run_dir(out, load_yaml(RunConfig, preset_path("smoke")))  # as a first run leaves it
    with pytest.raises(RunDirConflict, match=r"n_eval 3 -> 5"):
        run_pipeline(load_yaml(RunConfig, preset_path("smoke"), ["n_eval=5"]), out)
    assert main(["run", "--preset", "smoke", "--out", str(out), "--n-eval", "5", "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n_eval" in err and "seed 0 -> 2" in err
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # no stage ran


def test_run_takes_settings_as_dotted_flags_and_names_the_flag_for_key_value(tmp_path: Path, monkeypatch, capsys):
    """`run` reads its settings as every sub-command does: a flag per dotted config path, in
    either spelling; the old `key=value` form is refused with the flag to write instead."""
    seen = {}

    def pipeline(cfg, out_dir, only=None, start=None):  # stands in for the pipeline: the test is about parsing
        seen["cfg"] = cfg
        return {"stages": {}}

    monkeypatch.setattr("score_distill.pipeline.run_pipeline", pipeline)
    out = str(tmp_path / "run")
    assert main(["run", "--preset", "smoke", "--out", out, "--n-eval", "5", "--sft.epochs", "3",
                 "--eval_rollout.max_new_tokens", "20", "--max-turns", "4", "--suites", "[math]"]) == 0
    cfg = seen["cfg"]
    assert (cfg.n_eval, cfg.sft.epochs, cfg.eval_rollout.max_new_tokens, cfg.suites) == (5, 3.0, 20, ["math"])
    assert cfg.n_train == 10  # the preset's value where no flag was given
    # One turn budget, for every stage's rollouts; a stage's own is refused in one line.
    assert {cfg.rollout(r).max_turns for r in (cfg.eval_rollout, cfg.mps_rollout, cfg.rl.rollout)} == {4}
    capsys.readouterr()
    for flag in ("--eval-rollout.max-turns", "--rl.rollout.max_turns"):
        assert main(["run", "--preset", "smoke", "--out", out, flag, "5"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "a run has one turn budget" in err and "max_turns" in err
    assert main(["run", "--preset", "smoke", "--out", out, "sft.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "write --sft.epochs 3" in err


def test_mentor_and_bc_reruns_with_other_settings_exit_2_with_one_line(tmp_path: Path, monkeypatch, capsys):
    from score_distill.commands.settings import BCCommand, MentorCommand
    from score_distill.models.scripted import ScriptedModel

    monkeypatch.setattr("score_distill.models.load.load_model", lambda spec, **kw: ScriptedModel(scripted))
    open_run_dir(tmp_path / "mps", MentorCommand(n=1, max_interventions=5))
    assert main(["mentor", "--student", "scripted", "--tasks", "math:train", "--n", "1",
                 "--out", str(tmp_path / "mps")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("score-distill mentor: ") and "max_interventions 5 -> 3" in err
    open_run_dir(tmp_path / "bc", BCCommand(n=1, fraction=0.5))
    assert main(["bc", "--tasks", "math:train", "--n", "1", "--out", str(tmp_path / "bc")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fraction 0.5 -> 0.2" in err
    # Refused before the teacher or the student load: nothing but the old config.yaml is there.
    assert sorted(p.name for p in (tmp_path / "mps").iterdir()) == ["config.yaml"]
    assert sorted(p.name for p in (tmp_path / "bc").iterdir()) == ["config.yaml"]


def test_a_missing_or_malformed_exclude_list_is_a_usage_error(tmp_path: Path, capsys):
    (tmp_path / "ids.json").write_text('{"not": "a list"}')
    for spec in (tmp_path / "missing", tmp_path / "ids.json"):
        assert main(["mentor", "--student", "scripted", "--tasks", "math:train", "--n", "1", "--exclude", str(spec),
                     "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("score-distill mentor: --exclude ") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_setting_added_since_the_run_was_made_resumes_at_its_default_only(tmp_path: Path):
    """A run made before a setting existed has no line for it in config.yaml: it resumes
    when the setting is at its default (the run was made with that behaviour), and is
    refused when the rerun sets it otherwise."""
    import yaml

    from score_distill.commands.run import preset_path
    from score_distill.config import load_yaml
    from score_distill.pipeline import RunConfig
    from score_distill.rundir import check_run_dir

    out = tmp_path / "run"
    cfg = load_yaml(RunConfig, preset_path("smoke"))
    open_run_dir(out, cfg)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["tools"]["fetch"], saved["rl"]["judge_concurrency"], saved["benchmarks"]  # as an older version wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    check_run_dir(out, cfg)  # every added setting at its default: resumes
    with pytest.raises(RunDirConflict, match=r"rl.judge_concurrency unset -> 3"):
        check_run_dir(out, load_yaml(RunConfig, preset_path("smoke"), ["rl.judge_concurrency=3"]))
    saved["n_eval"] = 4  # a setting the old run did have is still compared as before
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(RunDirConflict, match=r"n_eval 4 -> 3"):
        check_run_dir(out, cfg)
