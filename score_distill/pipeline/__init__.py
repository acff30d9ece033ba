"""The main job, `score-distill run`: the whole SCoRe pipeline on the embedded world.

The run is a declared table of stages (`STAGES`, in `table.py` with each stage's work; the
settings and shared state in `config.py`), each writing into its own folder of the
output directory and resuming from it, so a killed run picks up where it stopped:

    world      generate train/test/ood of both suites; execute a sample of reference solutions
    untrained  the student as it comes (evaluated only)
    bc         the teacher solves `bc_fraction` of the train tasks; SFT of the student on them
    mps        mentored problem-solving of the BC student on the other train tasks
    split      the solved MPS tasks -> the SFT set and the RL items (by question)
    score_sft  SFT of the BC student on the SFT set
    score_rl   short-horizon GRPO with the key-step reward on the RL items, from SCoRe-SFT
    bc_full    baseline: the teacher solves every train task; SFT of the student on them
    ablations  optional, same code: grpo (outcome reward from the question, from the BC
               model), rl_no_short_horizon, rl_no_key_step (both from the SCoRe-SFT model)

Each model a stage makes is evaluated on `eval_splits` of every suite, and on the
`benchmarks` given (files of the paper's benchmarks: `configs/paper.yaml`), with the same
rollout and tools. `train_tasks` replaces a suite's generated train set with a task file.
`run_state.json` records the stages done, so a rerun skips them; `--only STAGE` enters one
stage, `--from STAGE` it and every later one (their inputs must be done; a stage entered
again finds its work on disk: delete its folder to redo it). The report covers every stage
evaluated so far and is written again after each evaluation, so a run cut off keeps it.

The resolved config is saved as `config.yaml`; a rerun into the same directory resumes only
under the same settings (`RESUME_FREE` may differ) and is refused otherwise, naming the
fields that differ, since every stage would reuse work made under the old ones.

    score-distill run --preset demo              # SmolLM2-135M student, reference teacher
    score-distill run --preset smoke --out runs/smoke --n-eval 16 --from bc_full
"""

from __future__ import annotations

import json
from pathlib import Path

from score_distill.config import UsageError
from score_distill.devices import resolve_device, training_device
from score_distill.pipeline.config import RESUME_FREE, RunConfig, RunState, check_inputs, running_wall
from score_distill.pipeline.table import (ABLATIONS, BY_NAME, STAGES, cumulative_tokens, evaluate_stage, lineage,
                                         world_stage)
from score_distill.rundir import open_run_dir
from score_distill.storage import atomic_write_json

__all__ = ["ABLATIONS", "BY_NAME", "RESUME_FREE", "STAGES", "RunConfig", "RunState", "check_inputs", "lineage",
           "plan", "run_pipeline", "world_stage"]


def plan(cfg: RunConfig, only: str | None = None, start: str | None = None) -> list[str]:
    """The stages this invocation enters, in order: every stage of the run (the ablations
    `cfg.ablations` names), or just `only`, or `start` and every later one.

    >>> plan(RunConfig(), start="score_rl")
    ['score_rl', 'bc_full']
    """
    unknown = [a for a in cfg.ablations if a not in ABLATIONS]
    if unknown:
        raise UsageError(f"unknown ablations {unknown}; known: {', '.join(ABLATIONS)}")
    names = [s.name for s in STAGES if not s.ablation or s.name in cfg.ablations]
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in names:
            hint = " (an ablation: add it to --ablations)" if value in ABLATIONS else ""
            raise UsageError(f"{flag} {value}: not a stage of this run{hint}; stages: {', '.join(names)}")
    if only is not None and start is not None:
        raise UsageError("--only and --from exclude each other")
    if only is not None:
        return [only]
    return names[names.index(start):] if start is not None else names


def _load_state(cfg: RunConfig, out: Path) -> RunState:
    """The run's state as earlier invocations recorded it in run_state.json (and, for a stage
    cut off while it ran, in `RUNNING_WALL`)."""
    path = out / "run_state.json"
    prior = json.loads(path.read_text()) if path.exists() else {}
    models = {k: str(out / v) if not Path(v).is_absolute() else v for k, v in prior.get("models", {}).items()}
    return RunState(cfg, out, stages=prior.get("stages", {}), teacher_tokens=prior.get("teacher_tokens", {}),
                    wall=running_wall(out, prior.get("wall_time_s", {})), extra=prior.get("extra", {}),
                    done=prior.get("done", []),
                    models=models)


def _save_state(state: RunState) -> None:
    def stored(path: str) -> str:
        p = Path(path)
        return str(p.relative_to(state.out)) if p.is_relative_to(state.out) else path

    atomic_write_json(state.out / "run_state.json", {
        "done": state.done, "models": {k: stored(v) for k, v in state.models.items()}, "stages": state.stages,
        "teacher_tokens": state.teacher_tokens, "wall_time_s": state.wall, "extra": state.extra})


def run_pipeline(cfg: RunConfig, out_dir: str | Path, only: str | None = None, start: str | None = None) -> dict:
    """Enter the stages `plan` gives (each resuming from its own files), writing the report of
    every stage evaluated so far after each evaluation and at the end (unless the last stage
    entered was just evaluated: nothing has changed since); returns report.json's content.

    A stage done in an earlier invocation is skipped unless `only`/`start` names it (then it
    is entered again and finds its work on disk); a stage entered before the stages it reads
    from are done is refused. The world stage always runs: it loads the task sets (and makes
    them once)."""
    from score_distill.models.builtin import builtin_path, is_builtin
    from score_distill.teachers.llm import LLMTeacherConfig
    from score_distill.teachers.load import load_teacher

    todo = plan(cfg, only, start)
    device, _ = resolve_device(cfg.device), training_device(cfg.device)  # absent: refused before any work
    check_inputs(cfg)
    out = Path(out_dir)
    open_run_dir(out, cfg, RESUME_FREE)
    state = _load_state(cfg, out)
    state.device = device
    state.base = str(builtin_path(cfg.student)) if is_builtin(cfg.student) else cfg.student
    state.teacher = load_teacher(cfg.teacher, tools=cfg.tools, cache_dir=out / "teacher_cache",
                                 config=LLMTeacherConfig(max_turns=cfg.max_turns)) \
        if cfg.teacher != "reference" else load_teacher("reference")
    forced = set(todo) if only is not None or start is not None else set()
    report = None  # the report as last written, while nothing has changed since
    for stage in (BY_NAME[n] for n in ["world"] + [n for n in todo if n != "world"]):
        if stage.name in state.done and stage.name not in forced and stage.name != "world":
            continue
        missing = [i for i in stage.inputs if i not in state.done and i != "world"]
        if missing:
            raise UsageError(f"stage {stage.name} reads from {', '.join(missing)}, not done in {out}: "
                             f"run --from {missing[0]} (or the whole run) first")
        with state.timed(stage.name):
            model = stage.run(state)
        if model is not None:
            state.models[stage.name] = model
        if stage.evaluated:
            evaluate_stage(state, stage.name, model)
        if stage.name not in state.done:
            state.done.append(stage.name)
        _save_state(state)
        # A long run shows what it has so far, and a run cut off keeps it; an unevaluated
        # stage changes the report too (its wall time, teacher tokens, data counts).
        report = _write_report(state) if stage.evaluated else None
    return report if report is not None else _write_report(state)


def _write_report(state: RunState) -> dict:
    """Write the report (report.json, report.md, plots) of every stage evaluated so far; return it."""
    from score_distill.report import write_report

    spent = state.teacher_tokens
    evaluated = [s.name for s in STAGES if s.name in state.stages]
    report = {"stages": {s: state.stages[s] for s in evaluated}, "teacher_tokens": spent,
              "teacher_tokens_cumulative": cumulative_tokens(spent, [s for s in evaluated if s != "untrained"]),
              "wall_time_s": state.wall, "student": state.cfg.student, "teacher": state.cfg.teacher, **state.extra}
    write_report(report, state.out)
    return report
