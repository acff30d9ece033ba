"""The main job, `score-distill run`: the whole SCoRe pipeline on the embedded world.

The run is a declared table of stages (`STAGES`), each writing into its own folder of the
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
rollout and tools. `train_tasks` replaces a suite's generated train set with a task file. `run_state.json` records the stages done, so a rerun skips them; `--only STAGE`
enters one stage, `--from STAGE` it and every later one (their inputs must be done; a stage
entered again finds its work on disk: delete its folder to redo it). The report covers every
stage evaluated so far and is written again after each evaluation, so a run cut off keeps it.

The resolved config is saved as `config.yaml`; a rerun into the same directory resumes only
under the same settings (`RESUME_FREE` may differ) and is refused otherwise, naming the
fields that differ, since every stage would reuse work made under the old ones.

    score-distill run --preset demo              # SmolLM2-135M student, reference teacher
    score-distill run --preset smoke --out runs/smoke --n-eval 16 --from bc_full
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from score_distill.agent.rollout import RolloutConfig
from score_distill.config import UsageError, option
from score_distill.devices import HELP as DEVICE_HELP
from score_distill.devices import resolve_device, training_device
from score_distill.memory import release_memory
from score_distill.models.load import ENGINE_HELP, engine_settings
from score_distill.precision import Bf16
from score_distill.rundir import open_run_dir
from score_distill.stages.mps import mps_rollout_config
from score_distill.storage import atomic_write_json
from score_distill.tools.config import ToolConfig
from score_distill.train.rl import RLOptions
from score_distill.train.sft import SFTOptions
from score_distill.types import Task, read_jsonl, write_jsonl

# Settings that change speed, logging or which extra stages run, not the results of a stage.
RESUME_FREE = ("ablations", "eval_rollout.batch_size", "mps_rollout.batch_size", "rl.rollout.batch_size",
               "sft.logging_steps", "sft.checkpoint_every_s", "rl.cpu_threads", "rl.save_every",
               "rl.samples_per_step")


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
    device: str = option("auto", DEVICE_HELP)
    engine: str = option("local", ENGINE_HELP + "; for evaluation, MPS and RL (vllm: RL on one GPU, "
                                  "vLLM colocated with the trainer)")
    inference_bf16: Bf16 = option("auto", "load the student in bf16 when it only generates (evaluation, MPS); "
                                          "auto: where the hardware computes bf16 natively (precision.py)")
    ablations: list = option([], "extra stages through the same code: any of grpo, rl_no_short_horizon, rl_no_key_step")
    train_tasks: dict = option({}, "suite -> a task JSONL file (our task format) used as that suite's train set "
                                   "instead of the generated one: your own training questions")
    benchmarks: dict = option({}, "benchmark name -> its data file (any format `score-distill benchmarks` lists), "
                                  "evaluated after every stage beside eval_splits, scored as the paper scores it")
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
    done: list[str] = field(default_factory=list)  # stages finished (and evaluated), in order
    models: dict[str, str] = field(default_factory=dict)  # the model each finished stage made
    base: str = ""  # the untrained student's weights
    device: str = "cpu"  # the run's device, resolved here
    teacher: Any = None

    @property
    def train(self) -> list[Task]:
        return [t for s in self.cfg.suites for t in self.sets[f"{s}:train"]]

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Adds the wall time of the `with` block to `wall[name]` (stored: across resumed runs).
        The block starts with the memory the last stage freed given back to the system
        (memory.py: otherwise one stage's freed blocks add to the next one's peak)."""
        release_memory()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.wall[name] = round(self.wall.get(name, 0.0) + time.perf_counter() - t0, 1)


def world_stage(state: RunState) -> None:
    """Generate every split of every suite into out/tasks/<suite>-<split>.jsonl and check
    a sample of reference solutions (each must reach its gold answer)."""
    from score_distill.tasks.load import generate_suite
    from score_distill.tasks.references import run_reference

    from score_distill.tasks.benchmarks import read_benchmark
    from score_distill.tasks.load import load_tasks

    cfg = state.cfg
    generated = []
    for suite in cfg.suites:
        for split in ["train", *cfg.eval_splits]:
            if split == "train" and suite in cfg.train_tasks:
                state.sets[f"{suite}:train"] = load_tasks(cfg.train_tasks[suite], corpus=cfg.tools.search.local_corpus())
                continue
            path = state.out / "tasks" / f"{suite}-{split}.jsonl"
            if not path.exists():
                n = cfg.n_train if split == "train" else cfg.n_eval
                write_jsonl(path, generate_suite(suite, split, n, cfg.seed, **cfg.difficulty.get(suite, {})))
            state.sets[f"{suite}:{split}"] = read_jsonl(path, Task)
            generated.append(f"{suite}:{split}")
    for name, data in cfg.benchmarks.items():
        state.sets[f"{name}:{BENCHMARK_SPLIT}"] = read_benchmark(data, name)
    check = state.out / "tasks" / "reference_check.json"
    if not check.exists():  # the generated sets: their reference solutions are ours to check
        result = {}
        for name, tasks in ((n, state.sets[n]) for n in generated):
            sample = tasks[: cfg.n_reference_check]
            result[name] = {"checked": len(sample), "reached_gold": sum(run_reference(t, cfg.tools) for t in sample)}
        atomic_write_json(check, result)
    refs = json.loads(check.read_text())
    bad = {k: v for k, v in refs.items() if v["reached_gold"] != v["checked"]}
    if bad:
        raise RuntimeError(f"reference solutions that miss their gold answer: {bad}")
    state.extra["reference_check"] = refs


BENCHMARK_SPLIT = "benchmark"  # the eval sets read from benchmark files are named <benchmark>:benchmark


def check_inputs(cfg: RunConfig) -> list[str]:
    """Everything a run reads from outside, checked before any work, as one-line usage
    errors: the student, the train task files and the benchmark files (each read whole).
    Returns what was found, one line each, for `run --check`."""
    from score_distill.models.builtin import is_builtin
    from score_distill.tasks.benchmarks import benchmark, read_benchmark
    from score_distill.tasks.load import TaskFileError, load_tasks

    from score_distill.tools.config import require_no_fetch

    require_no_fetch(cfg.tools)
    found = []
    if not is_builtin(cfg.student) and not (Path(cfg.student) / "config.json").is_file():
        raise UsageError(f"student {cfg.student!r}: not a built-in model nor a Hugging Face model directory "
                         "(config.json missing)")
    found.append(f"student: {cfg.student}")
    for suite, path in cfg.train_tasks.items():
        if suite not in cfg.suites:
            raise UsageError(f"train_tasks.{suite}: not one of the run's suites {cfg.suites}")
        try:
            n = len(load_tasks(path, corpus=cfg.tools.search.local_corpus()))
        except TaskFileError as e:
            raise UsageError(f"train_tasks.{suite}: {e}") from None
        found.append(f"train_tasks.{suite}: {path} ({n} tasks)")
    for name, path in cfg.benchmarks.items():
        try:
            bench = benchmark(name)
        except ValueError as e:
            raise UsageError(f"benchmarks.{name}: {e}") from None
        if bench.scorer == "llm":
            raise UsageError(f"benchmarks.{name}: scored by an LLM judge, which the run does not hold; evaluate "
                             f"its checkpoints with score-distill eval --benchmark {name} --judge ...")
        try:
            n = len(read_benchmark(path, name))
        except TaskFileError as e:
            raise UsageError(f"benchmarks.{name}: {e}") from None
        found.append(f"benchmarks.{name}: {path} ({n} tasks)")
    return found


def _inference_engine(state: RunState, model: str) -> dict[str, object]:
    """A student that only generates: bf16 weights where the device computes bf16 natively."""
    return engine_settings(model, state.device, state.cfg.inference_bf16, state.cfg.engine)


def evaluate_stage(state: RunState, stage: str, model_path: str) -> None:
    """Evaluate one checkpoint on every eval set (resumes per set)."""
    from score_distill.evaluate import evaluate_sets
    from score_distill.models.load import load_model

    model = load_model(model_path, **_inference_engine(state, model_path))
    sets = {name: (tasks, state.out / "eval" / stage / name.replace(":", "-")) for name, tasks in state.sets.items()
            if name.split(":")[1] in (*state.cfg.eval_splits, BENCHMARK_SPLIT)}
    with state.timed(f"eval_{stage}"):
        # One rollout over every set: the sets share the batches.
        metrics = evaluate_sets(model, sets, state.cfg.tools, state.cfg.rollout(state.cfg.eval_rollout),
                                desc=f"eval {stage}")
    state.stages[stage] = {name: {"accuracy": m["accuracy"], "ci95": m["ci95"], "n": m["n"],
                                "finish_rate": m.get("finish_rate"), "mean_turns": m.get("mean_turns"),
                                "sandbox": m.get("sandbox")}
                         for name, m in metrics.items()}
    del model


def bc_stage(state: RunState, name: str, fraction: float) -> str:
    """Collect teacher solutions of `fraction` of the train tasks and fine-tune the student on them."""
    from score_distill.exports import read_sft_examples
    from score_distill.stages.bc import BCConfig, collect_bc
    from score_distill.train.sft import train_sft

    folder = state.out / name
    bc_cfg = BCConfig(seed=state.cfg.seed, fraction=fraction, max_turns=state.cfg.max_turns, tools=state.cfg.tools)
    summary = collect_bc(state.teacher, state.train, folder / "data", bc_cfg)
    examples = read_sft_examples(folder / "data" / "bc_trajectories.jsonl")
    final = train_sft(state.base, examples, folder / "sft", state.cfg.sft, device=state.device)
    state.teacher_tokens[name] = int(summary["teacher_tokens"])
    state.extra[f"{name}_data"] = {k: summary[k]
                                   for k in ("chosen", "kept", "rejected", "teacher_calls", "teacher_tokens")}
    return str(final)


def mps_stage(state: RunState) -> None:
    """Mentored problem-solving of the BC student on the train tasks BC did not use."""
    from score_distill.models.load import load_model
    from score_distill.stages.mps import MentorConfig, mentor

    chosen = set(json.loads((state.out / "bc" / "data" / "chosen_ids.json").read_text()))
    tasks = [t for t in state.train if t.id not in chosen]
    cfg = MentorConfig(max_interventions=state.cfg.max_interventions, rollout=state.cfg.rollout(state.cfg.mps_rollout),
                       tools=state.cfg.tools)
    student = load_model(state.models["bc"], **_inference_engine(state, state.models["bc"]))
    summary = mentor(student, state.teacher, tasks, state.out / "mps", cfg)
    state.teacher_tokens["mps"] = int(summary["teacher_tokens"])
    state.extra["mps"] = {k: summary[k] for k in ("tasks", "solved_by_interventions", "hard_to_teach",
                                                "first_error_step_hist", "teacher_calls", "teacher_tokens",
                                                "student_tokens") if k in summary}


def split_stage(state: RunState) -> None:
    """The SFT/RL split of the solved MPS tasks, into mps/export/."""
    from score_distill.stages.split import SplitConfig, read_mps_records, write_split

    counts = write_split(read_mps_records(state.out / "mps"), state.out / "mps" / "export", SplitConfig(seed=state.cfg.seed),
                         state.train)
    state.extra["mps"] = {**state.extra.get("mps", {}), "split": counts}


def score_sft_stage(state: RunState) -> str:
    from score_distill.exports import read_sft_examples
    from score_distill.train.sft import train_sft

    examples = read_sft_examples(state.out / "mps" / "export" / "sft_trajectories.jsonl")
    return str(train_sft(state.models["bc"], examples, state.out / "score_sft", state.cfg.sft, device=state.device))


def rl_stage(state: RunState, name: str, base: str, outcome_only: bool = False, **changes: object) -> str:
    """GRPO from `base` into out/<name>: on the split's RL items, or (`outcome_only`) on every
    train task from its question; `changes` are the ablation's RLOptions."""
    from score_distill.train.rl import train_rl
    from score_distill.train.rl_items import outcome_items
    from score_distill.types import KeyStepItem

    items = outcome_items(state.train) if outcome_only else \
        read_jsonl(state.out / "mps" / "export" / "rl_items.jsonl", KeyStepItem)
    opts = replace(state.cfg.rl, **changes)
    opts = replace(opts, rollout=state.cfg.rollout(opts.rollout))
    tasks_by_id = {t.id: t for t in state.train}
    before = state.teacher.usage.tokens
    final = train_rl(base, items, tasks_by_id, state.teacher, state.cfg.tools, state.out / name, opts,
                     device=state.device, engine=state.cfg.engine)
    # Equivalence judgements of this process (a resumed run counts only what it spent).
    state.teacher_tokens[name] = state.teacher_tokens.get(name, 0) + state.teacher.usage.tokens - before
    return str(final)


@dataclass(frozen=True)
class Stage:
    """One stage: the stages it reads from, its work (returning the model it made, or None),
    whether that model is evaluated, whether it is an ablation (run when `ablations` names it)."""

    name: str
    inputs: tuple[str, ...]
    run: Callable[[RunState], str | None]
    evaluated: bool = True
    ablation: bool = False


# The run, in order. Resume, timing, `--only/--from` and the cumulative teacher tokens of a
# stage's model (its own spending and that of every stage it reads from) follow from it.
STAGES = (
    Stage("world", (), world_stage, evaluated=False),
    Stage("untrained", ("world",), lambda s: s.base),
    Stage("bc", ("world",), lambda s: bc_stage(s, "bc", s.cfg.bc_fraction)),
    Stage("mps", ("bc",), mps_stage, evaluated=False),
    Stage("split", ("mps",), split_stage, evaluated=False),
    Stage("score_sft", ("bc", "split"), score_sft_stage),
    Stage("score_rl", ("score_sft", "split"), lambda s: rl_stage(s, "score_rl", s.models["score_sft"])),
    Stage("bc_full", ("world",), lambda s: bc_stage(s, "bc_full", 1.0)),
    Stage("grpo", ("bc",), lambda s: rl_stage(s, "grpo", s.models["bc"], outcome_only=True, use_key_step=False,
                                              outcome_only_share=1.0), ablation=True),
    Stage("rl_no_short_horizon", ("score_sft", "split"),
          lambda s: rl_stage(s, "rl_no_short_horizon", s.models["score_sft"], short_horizon=False), ablation=True),
    Stage("rl_no_key_step", ("score_sft", "split"),
          lambda s: rl_stage(s, "rl_no_key_step", s.models["score_sft"], use_key_step=False), ablation=True),
)
BY_NAME = {s.name: s for s in STAGES}
ABLATIONS = tuple(s.name for s in STAGES if s.ablation)


def lineage(name: str) -> set[str]:
    """The stage and every stage it reads from, directly or not.

    >>> sorted(lineage("score_rl"))
    ['bc', 'mps', 'score_rl', 'score_sft', 'split', 'world']
    """
    out = {name}
    for parent in BY_NAME[name].inputs:
        out |= lineage(parent)
    return out


def cumulative_tokens(spent: dict[str, int], stages: list[str]) -> dict[str, int]:
    """Teacher tokens spent to produce each of `stages`' models (`lineage`).

    >>> cumulative_tokens({"bc": 10, "mps": 5, "grpo": 2, "bc_full": 40}, ["bc", "score_sft", "grpo"])
    {'bc': 10, 'score_sft': 15, 'grpo': 12}
    """
    return {s: sum(spent.get(p, 0) for p in lineage(s)) for s in stages}


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
    """The run's state as earlier invocations recorded it in run_state.json."""
    path = out / "run_state.json"
    prior = json.loads(path.read_text()) if path.exists() else {}
    models = {k: str(out / v) if not Path(v).is_absolute() else v for k, v in prior.get("models", {}).items()}
    return RunState(cfg, out, stages=prior.get("stages", {}), teacher_tokens=prior.get("teacher_tokens", {}),
                    wall=prior.get("wall_time_s", {}), extra=prior.get("extra", {}), done=prior.get("done", []),
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
    every stage evaluated so far after each evaluation and at the end; returns report.json's
    content.

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
        if stage.evaluated:  # a long run shows what it has so far, and a run cut off keeps it
            _write_report(state)
    return _write_report(state)


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
