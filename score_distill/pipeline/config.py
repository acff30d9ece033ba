"""The settings of a run (`RunConfig`, saved as the run's config.yaml), what the runner and
the stages share while it goes (`RunState`), and the check of everything a run reads from
outside before any work (`check_inputs`)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from score_distill.agent.rollout import RolloutConfig
from score_distill.config import UsageError, option
from score_distill.devices import HELP as DEVICE_HELP
from score_distill.memory import release_memory
from score_distill.models.load import ENGINE_HELP
from score_distill.precision import Bf16
from score_distill.stages.mps import mps_rollout_config
from score_distill.storage import atomic_write_json
from score_distill.tools.config import ToolConfig
from score_distill.train.rl import RLOptions
from score_distill.train.sft import SFTOptions
from score_distill.types import Task

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
        (memory.py: otherwise one stage's freed blocks add to the next one's peak).

        While the block runs, its time so far is written to `RUNNING_WALL` every
        `WALL_BEAT_S` seconds, so a run killed inside a stage (where no `finally` runs)
        keeps that stage's time to within a beat: `running_wall` reads it back, and the
        invocation that resumes the stage adds its own time to it."""
        release_memory()
        before, t0 = self.wall.get(name, 0.0), time.perf_counter()
        path = self.out / RUNNING_WALL
        path.parent.mkdir(parents=True, exist_ok=True)
        stop = threading.Event()

        def beat() -> None:  # every stage's time so far: a stage finished but not yet saved is kept too
            while not stop.wait(WALL_BEAT_S):
                atomic_write_json(path, {**self.wall, name: round(before + time.perf_counter() - t0, 1)})

        thread = threading.Thread(target=beat, name=f"wall-{name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.wall[name] = round(before + time.perf_counter() - t0, 1)
            atomic_write_json(path, self.wall)


# A stage's time so far, written while it runs (`RunState.timed`), and how often.
RUNNING_WALL = "wall_running.json"
WALL_BEAT_S = 30.0


def running_wall(out: Path, wall: dict[str, float]) -> dict[str, float]:
    """`wall` (the stored wall times) with what `timed` last wrote: for each stage the larger
    of the two, so a stage cut off while it ran, or finished but cut off before the run
    saved its state (during its evaluation), keeps its time.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> _ = (out / RUNNING_WALL).write_text('{"score_rl": 1234.5}')
    >>> running_wall(out, {"bc": 10.0, "score_rl": 3.0})
    {'bc': 10.0, 'score_rl': 1234.5}
    """
    path = out / RUNNING_WALL
    found = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {**wall, **{k: max(v, wall.get(k, 0.0)) for k, v in found.items()}}


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
