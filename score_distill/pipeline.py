"""The main job, `score-distill run`: the whole SCoRe pipeline on the embedded world.

Stages, each writing into its own folder of the output directory and skipped (or resumed)
when rerun, so a killed run picks up where it stopped:

    world      generate train/test/ood of both suites; execute a sample of reference solutions
    untrained  evaluate the student as it comes
    bc         the teacher solves `bc_fraction` of the train tasks; SFT of the student on them
    mps        mentored problem-solving of the BC student on the other train tasks
    score_sft  SFT of the BC student on the SFT half of the solved MPS trajectories
    score_rl   short-horizon GRPO with key-step reward on the RL half, from the SCoRe-SFT model
    bc_full    baseline: the teacher solves every train task; SFT of the student on them
    ablations  optional, same code: grpo (outcome reward from the question, from the BC
               model), rl_no_short_horizon, rl_no_key_step (both from the SCoRe-SFT model)

The resolved config is saved as `config.yaml`; a rerun into the same directory resumes only
under the same settings (`RESUME_FREE` may differ) and is refused otherwise, naming the
fields that differ, since every stage would reuse work made under the old ones.

Every stage's checkpoint is evaluated on `eval_splits` of every suite with the same rollout
and tool settings. The report (report.json, report.md, plots) is written at the end.

    score-distill run --preset demo              # SmolLM2-135M student, reference teacher
    score-distill run --preset smoke --out runs/smoke   # tiny model, a few minutes
    score-distill run --preset demo --n-eval 16 --sft.epochs 1
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from score_distill.agent.rollout import RolloutConfig
from score_distill.config import option
from score_distill.memory import release_memory
from score_distill.precision import Bf16, weights_dtype
from score_distill.rundir import open_run_dir
from score_distill.stages.mps import mps_rollout_config
from score_distill.storage import atomic_write_json
from score_distill.tools.config import ToolConfig
from score_distill.train.rl import RLOptions
from score_distill.train.sft import SFTOptions
from score_distill.types import Task, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

ABLATIONS = ("grpo", "rl_no_short_horizon", "rl_no_key_step")
# Settings that change speed, logging or which extra stages run, not the results of a stage.
RESUME_FREE = ("ablations", "eval_rollout.batch_size", "mps_rollout.batch_size", "rl.rollout.batch_size",
               "sft.logging_steps", "sft.checkpoint_every_s", "rl.cpu_threads", "rl.save_every",
               "rl.samples_per_step")

# The teacher spending behind each stage's model: its own and that of the stages it builds on.
LINEAGE = {"bc": ("bc",), "score_sft": ("bc", "mps"), "score_rl": ("bc", "mps", "score_rl"),
           "bc_full": ("bc_full",), "grpo": ("bc", "grpo"),
           "rl_no_short_horizon": ("bc", "mps", "rl_no_short_horizon"),
           "rl_no_key_step": ("bc", "mps", "rl_no_key_step")}


def cumulative_tokens(spent: dict[str, int], stages: list[str]) -> dict[str, int]:
    """Teacher tokens spent to produce each of `stages`' models (`LINEAGE`).

    >>> cumulative_tokens({"bc": 10, "mps": 5, "grpo": 2}, ["bc", "score_sft", "grpo"])
    {'bc': 10, 'score_sft': 15, 'grpo': 12}
    """
    return {s: sum(spent.get(p, 0) for p in LINEAGE[s]) for s in stages}


@dataclass
class RunConfig:
    student: str = option("smollm2-135m", "student model: built-in name or local directory")
    teacher: str = option("reference", "teacher: reference, or openai:<model>@<base-url>")
    seed: int = option(0, "seed of the worlds, splits and sampling")
    suites: list = option(["math", "search"], "task suites to run")
    eval_splits: list = option(["test", "ood"], "splits every stage is evaluated on")
    n_train: int = option(1000, "training tasks generated per suite")
    n_eval: int = option(32, "evaluation tasks per suite and split")
    n_reference_check: int = option(20, "reference solutions executed per suite and split as a sanity check")
    difficulty: dict = option({}, "generator dials per suite, e.g. {math: {max_ops: 3}, search: {max_hops: 3}} "
                                  "(math_suite.MathDifficulty, search_suite.Difficulty)")
    bc_fraction: float = option(0.2, "share of train tasks the teacher solves for cold-start BC")
    max_interventions: int = option(3, "teacher fixes per MPS task")
    max_turns: int = option(8, "the run's one turn budget, the plan included: every rollout (evaluation, MPS, RL) "
                               "and the longest teacher solution BC keeps")
    inference_bf16: Bf16 = option("auto", "load the student in bf16 when it only generates (evaluation, MPS); "
                                          "auto: where the hardware computes bf16 natively (precision.py)")
    ablations: list = option([], f"extra stages through the same code: any of {', '.join(ABLATIONS)}")
    eval_rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"help": "evaluation agent loop (greedy)"})
    mps_rollout: RolloutConfig = field(default_factory=mps_rollout_config, metadata={"help": "student sampling during MPS"})
    sft: SFTOptions = field(default_factory=SFTOptions, metadata={"help": "SFT of BC, SCoRe-SFT and BC-full"})
    rl: RLOptions = field(default_factory=RLOptions, metadata={"help": "SCoRe-RL and the RL ablations"})
    tools: ToolConfig = field(default_factory=ToolConfig, metadata={"help": "sandbox and search"})

    def __post_init__(self) -> None:
        for name, r in (("eval_rollout", self.eval_rollout), ("mps_rollout", self.mps_rollout),
                        ("rl.rollout", self.rl.rollout)):
            if r.max_turns is not None:
                raise ValueError(f"{name}.max_turns is set ({r.max_turns}): a run has one turn budget, "
                                 f"max_turns (now {self.max_turns}); set that instead")

    def rollout(self, stage: RolloutConfig) -> RolloutConfig:
        """One of the stages' rollout settings under the run's turn budget."""
        return replace(stage, max_turns=self.max_turns)


@dataclass
class RunState:
    """Shared state of one pipeline run: its config, folder, tasks and bookkeeping."""

    cfg: RunConfig
    out: Path
    sets: dict[str, list[Task]] = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)
    teacher_tokens: dict[str, int] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)
    extra: dict[str, dict] = field(default_factory=dict)

    @property
    def train(self) -> list[Task]:
        return [t for s in self.cfg.suites for t in self.sets[f"{s}:train"]]

    def timed(self, name: str):
        return _Timer(self.wall, name)


class _Timer:
    """Adds the wall time of a stage's `with` block to `wall[name]` (across resumed runs:
    stored). The block starts with the memory the last stage freed given back to the system
    (memory.py: otherwise one stage's freed blocks add to the next one's peak)."""

    def __init__(self, wall: dict[str, float], name: str) -> None:
        self.wall, self.name = wall, name

    def __enter__(self) -> None:
        release_memory()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.wall[self.name] = round(self.wall.get(self.name, 0.0) + time.perf_counter() - self.t0, 1)


def world_stage(state: RunState) -> None:
    """Generate every split of every suite into out/tasks/<suite>-<split>.jsonl and check
    a sample of reference solutions (each must reach its gold answer)."""
    from score_distill.tasks.load import generate_suite
    from score_distill.tasks.references import run_reference

    cfg = state.cfg
    for suite in cfg.suites:
        for split in ["train", *cfg.eval_splits]:
            path = state.out / "tasks" / f"{suite}-{split}.jsonl"
            if not path.exists():
                n = cfg.n_train if split == "train" else cfg.n_eval
                write_jsonl(path, generate_suite(suite, split, n, cfg.seed, **cfg.difficulty.get(suite, {})))
            state.sets[f"{suite}:{split}"] = read_jsonl(path, Task)
    check = state.out / "tasks" / "reference_check.json"
    if not check.exists():
        result = {}
        for name, tasks in state.sets.items():
            sample = tasks[: cfg.n_reference_check]
            result[name] = {"checked": len(sample), "reached_gold": sum(run_reference(t, cfg.tools) for t in sample)}
        atomic_write_json(check, result)
    refs = json.loads(check.read_text())
    bad = {k: v for k, v in refs.items() if v["reached_gold"] != v["checked"]}
    if bad:
        raise RuntimeError(f"reference solutions that miss their gold answer: {bad}")
    state.extra["reference_check"] = refs


def _inference_dtype(cfg: RunConfig) -> dict[str, object]:
    """Engine settings for a student that only generates. bf16 weights rather than fp32 weights
    under bf16 autocast: the matmuls are the same bf16 products either way, but autocast
    re-casts every weight at every decoding step (8% of a step for SmolLM2 at batch 32 here)."""
    return {"dtype": weights_dtype(cfg.inference_bf16, "cpu")}


def evaluate_stage(state: RunState, stage: str, model_path: str) -> None:
    """Evaluate one checkpoint on every eval set (resumes per set)."""
    from score_distill.evaluate import evaluate_sets
    from score_distill.models.load import load_model

    model = load_model(model_path, **_inference_dtype(state.cfg))
    sets = {name: (tasks, state.out / "eval" / stage / name.replace(":", "-")) for name, tasks in state.sets.items()
            if name.split(":")[1] in state.cfg.eval_splits}
    with state.timed(f"eval_{stage}"):
        # One rollout over every set: the sets share the batches.
        metrics = evaluate_sets(model, sets, state.cfg.tools, state.cfg.rollout(state.cfg.eval_rollout),
                                desc=f"eval {stage}")
    state.stages[stage] = {name: {"accuracy": m["accuracy"], "ci95": m["ci95"], "n": m["n"],
                                "finish_rate": m.get("finish_rate"), "mean_turns": m.get("mean_turns"),
                                "sandbox": m.get("sandbox")}
                         for name, m in metrics.items()}
    del model


def bc_stage(state: RunState, name: str, fraction: float, base: str, teacher) -> str:
    """Collect teacher solutions of `fraction` of the train tasks and fine-tune `base` on them."""
    from score_distill.exports import read_sft_examples
    from score_distill.stages.bc import BCConfig, collect_bc
    from score_distill.train.sft import train_sft

    folder = state.out / name
    bc_cfg = BCConfig(seed=state.cfg.seed, fraction=fraction, max_turns=state.cfg.max_turns, tools=state.cfg.tools)
    with state.timed(name):
        summary = collect_bc(teacher, state.train, folder / "data", bc_cfg)
        examples = read_sft_examples(folder / "data" / "bc_trajectories.jsonl")
        final = train_sft(base, examples, folder / "sft", state.cfg.sft)
    state.teacher_tokens[name] = int(summary["teacher_tokens"])
    state.extra[f"{name}_data"] = {k: summary[k]
                                   for k in ("chosen", "kept", "rejected", "teacher_calls", "teacher_tokens")}
    return str(final)


def mps_stage(state: RunState, student: str, teacher) -> dict:
    """Mentored problem-solving of `student` on the train tasks BC did not use."""
    from score_distill.models.load import load_model
    from score_distill.stages.mps import MentorConfig, mentor
    from score_distill.stages.split import SplitConfig, read_mps_records, write_split

    chosen = set(json.loads((state.out / "bc" / "data" / "chosen_ids.json").read_text()))
    tasks = [t for t in state.train if t.id not in chosen]
    cfg = MentorConfig(max_interventions=state.cfg.max_interventions, rollout=state.cfg.rollout(state.cfg.mps_rollout),
                       tools=state.cfg.tools)
    with state.timed("mps"):
        summary = mentor(load_model(student, **_inference_dtype(state.cfg)), teacher, tasks, state.out / "mps", cfg)
        records = read_mps_records(state.out / "mps")
        summary["export"] = write_split(records, state.out / "mps" / "export", SplitConfig(seed=state.cfg.seed))
    state.teacher_tokens["mps"] = int(summary["teacher_tokens"])
    state.extra["mps"] = {k: summary[k] for k in ("tasks", "solved_by_interventions", "hard_to_teach",
                                                "first_error_step_hist", "teacher_calls", "teacher_tokens",
                                                "student_tokens") if k in summary}
    # (the summary's wall_time_s is that of the last call, 0 when resumed; state.wall has the stage's)
    return summary


def rl_stage(state: RunState, name: str, base: str, items, teacher, opts: RLOptions) -> str:
    from score_distill.train.rl import train_rl

    tasks_by_id = {t.id: t for t in state.train}
    opts = replace(opts, rollout=state.cfg.rollout(opts.rollout))
    before = teacher.usage.tokens
    with state.timed(name):
        final = train_rl(base, items, tasks_by_id, teacher, state.cfg.tools, state.out / name, opts)
    # Equivalence judgements of this process (a resumed run counts only what it spent).
    state.teacher_tokens[name] = state.teacher_tokens.get(name, 0) + teacher.usage.tokens - before
    return str(final)


def run(cfg: RunConfig, out_dir: str | Path) -> dict:
    """Run every stage (resuming), then write the report; returns report.json's content."""
    from score_distill.exports import read_sft_examples
    from score_distill.models.builtin import builtin_path, is_builtin
    from score_distill.report import write_report
    from score_distill.teachers.llm import LLMTeacherConfig
    from score_distill.teachers.load import load_teacher
    from score_distill.train.rl_items import outcome_items
    from score_distill.train.sft import train_sft
    from score_distill.types import KeyStepItem

    unknown = set(cfg.ablations) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"unknown ablations {sorted(unknown)}; known: {ABLATIONS}")
    out = Path(out_dir)
    open_run_dir(out, cfg, RESUME_FREE)
    state_file = out / "run_state.json"
    prior = json.loads(state_file.read_text()) if state_file.exists() else {}
    state = RunState(cfg, out, teacher_tokens=prior.get("teacher_tokens", {}), wall=prior.get("wall_time_s", {}))

    def save_state() -> None:
        atomic_write_json(state_file, {"teacher_tokens": state.teacher_tokens, "wall_time_s": state.wall})

    with state.timed("world"):
        world_stage(state)
    base = str(builtin_path(cfg.student)) if is_builtin(cfg.student) else cfg.student
    teacher = load_teacher(cfg.teacher, tools=cfg.tools, cache_dir=out / "teacher_cache",
                           config=LLMTeacherConfig(max_turns=cfg.max_turns)) \
        if cfg.teacher != "reference" else load_teacher("reference")
    evaluate_stage(state, "untrained", base)
    bc = bc_stage(state, "bc", cfg.bc_fraction, base, teacher)
    save_state()
    evaluate_stage(state, "bc", bc)
    mps_stage(state, bc, teacher)
    save_state()
    export = out / "mps" / "export"
    with state.timed("score_sft"):
        score_sft = str(train_sft(bc, read_sft_examples(export / "sft_trajectories.jsonl"), out / "score_sft", cfg.sft))
    evaluate_stage(state, "score_sft", score_sft)
    items = read_jsonl(export / "rl_items.jsonl", KeyStepItem)
    score_rl = rl_stage(state, "score_rl", score_sft, items, teacher, cfg.rl)
    save_state()
    evaluate_stage(state, "score_rl", score_rl)
    bc_full = bc_stage(state, "bc_full", 1.0, base, teacher)
    save_state()
    evaluate_stage(state, "bc_full", bc_full)
    for name in cfg.ablations:
        if name == "grpo":
            path = rl_stage(state, name, bc, outcome_items(state.train), teacher,
                            replace(cfg.rl, key_step_reward=False, outcome_only_share=1.0))
        else:
            opts = replace(cfg.rl, short_horizon=False) if name == "rl_no_short_horizon" else replace(cfg.rl, key_step_reward=False)
            path = rl_stage(state, name, score_sft, items, teacher, opts)
        save_state()
        evaluate_stage(state, name, path)
    save_state()
    spent = state.teacher_tokens
    report = {"stages": state.stages, "teacher_tokens": spent,
              "teacher_tokens_cumulative": cumulative_tokens(spent, [s for s in state.stages if s != "untrained"]),
              "wall_time_s": state.wall, "student": cfg.student, "teacher": cfg.teacher, **state.extra}
    write_report(report, out)
    return report
