"""The `eval`, `bc`, `mentor`, `sft` and `rl` commands' settings: what they load (model, teacher, task
file), then the library's config of what they run, all as flat flags and YAML keys.

The library configs (`BCConfig`, `MentorConfig`, `RolloutConfig`) hold only what the library
reads; what a command needs to build its inputs lives here, so the pipeline, which builds
those inputs itself, never fills a field it does not use. Also how `sft` and `rl` find and
read their exported data (`data_file`, `read_data`). Imported by the commands when they run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from score_distill.agent.rollout import RolloutConfig
from score_distill.config import UsageError, option
from score_distill.devices import HELP as DEVICE_HELP
from score_distill.models.load import ENGINE_HELP
from score_distill.precision import Bf16
from score_distill.stages.bc import BCConfig
from score_distill.stages.mps import MentorConfig
from score_distill.stages.split import SplitConfig
from score_distill.tools.config import ToolConfig
from score_distill.train.rl import RLOptions
from score_distill.train.sft import SFTOptions

TEACHER_HELP = "teacher: reference, or openai:<model>@<base-url>"
TASKS_HELP = "SUITE:SPLIT of a built-in suite, or a task JSONL file"
N_HELP = "number of tasks (default: a suite's default size / the whole file)"


@dataclass
class BCCommand(BCConfig):
    """`score-distill bc`: `--seed` seeds the task generator and the choice of tasks."""

    teacher: str = option("reference", TEACHER_HELP)
    tasks: str = option("math:train", TASKS_HELP)
    n: int | None = option(None, N_HELP)


@dataclass
class MentorCommand(MentorConfig):
    """`score-distill mentor`: MPS, then the split of its records into `export/`."""

    student: str = option("smollm2-135m", "student: built-in name, local HF directory, or openai:<model>@<base-url>")
    device: str = option("auto", DEVICE_HELP)
    engine: str = option("local", ENGINE_HELP)
    teacher: str = option("reference", TEACHER_HELP)
    tasks: str = option("math:train", TASKS_HELP)
    n: int | None = option(None, N_HELP)
    seed: int = option(0, "seed of the task generator; also sets rollout.seed and split.seed unless they are given")
    exclude: str | None = option(None, "leave out these tasks: a BC output directory (its chosen_ids.json) "
                                       "or a JSON list of ids")
    split: SplitConfig = field(default_factory=SplitConfig, metadata={"help": "SFT/RL split and exports"})


# What a mentor rerun may change besides MentorConfig's own: the split is rewritten from the records.
MENTOR_RESUME_FREE = ("split",)


@dataclass
class EvalCommand:
    """`score-distill eval`: the model and tasks it loads, then the agent loop it runs."""

    model: str = option("smollm2-135m", "built-in name, local HF directory, or openai:<model>@<base-url>")
    tasks: str = option("math:test", "SUITE:SPLIT of a built-in suite, or a task JSONL file")
    benchmark: str | None = option(None, "evaluate on this benchmark (score-distill benchmarks) read from --data, "
                                         "scored as the paper scores it; --tasks is then not used")
    data: str | None = option(None, "the benchmark's data file, in any format `score-distill benchmarks` lists")
    judge: str | None = option(None, "the LLM judge of the judged benchmarks: openai:<model>@<base-url> "
                                     "(calls cached by content in OUT/judge-cache)")
    n: int | None = option(None, "number of tasks (default: a suite's default size / the whole file)")
    samples: int = option(1, "samples per task (accuracy is over all samples)")
    seed: int = option(0, "seed of the task generator and of sampling")
    device: str = option("auto", DEVICE_HELP)
    engine: str = option("local", ENGINE_HELP)
    bf16: Bf16 = option("auto", "a local model's weights in bf16; auto: where the device computes bf16 natively "
                                "(precision.py), else fp32")
    rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"help": "agent loop"})
    tools: ToolConfig = field(default_factory=ToolConfig, metadata={"help": "sandbox and search"})


# Settings that change speed, not results: a run may be resumed with other values.
EVAL_RESUME_FREE = ("rollout.batch_size",)


def judge_scorer(spec: str, cache_dir: Path) -> Any:
    """An `LLMJudgeScorer` over the OpenAI-compatible judge `spec` (openai:<model>@<base-url>).
    Its calls go through the LLM teacher's cached call (`LLMTeacher.call`): cached by content
    in `cache_dir` under the judge prompt's version, so a rerun asks nothing again and a
    changed prompt is asked afresh, and a first run reads the same text as its replay."""
    from score_distill.tasks.scoring import JUDGE_PROMPT_VERSION, LLMJudgeScorer
    from score_distill.teachers.llm import ChatOptions
    from score_distill.teachers.load import load_teacher

    if not spec.startswith("openai:"):
        raise UsageError(f"--judge {spec!r}: expected openai:<model>@<base-url>")
    judge = load_teacher(spec, cache_dir=cache_dir)
    options = ChatOptions(temperature=0.0, max_tokens=512, json_mode=True)
    return LLMJudgeScorer(lambda messages: judge.call("answer-judge", messages, options, JUDGE_PROMPT_VERSION).text)


@dataclass
class SFTCommand(SFTOptions):
    """`score-distill sft`: the model and the exported SFT set it reads, then the trainer's
    options (flat: `--lr`, `--epochs`)."""

    model: str = option("", "the model to fine-tune: a local HF directory (a built-in name is resolved too)")
    data: str = option("", "the SFT set: a *_trajectories.jsonl file that bc or mentor wrote (bc_trajectories.jsonl, "
                           "export/sft_trajectories.jsonl), or the directory holding one")
    device: str = option("auto", DEVICE_HELP)


# What an sft rerun may change: how often it checkpoints and logs.
SFT_RESUME_FREE = ("checkpoint_every_s", "logging_steps")


@dataclass
class RLCommand(RLOptions):
    """`score-distill rl`: the model, the exported RL items, the teacher that judges key
    steps, then the trainer's options (flat: `--lr`, `--group-size`, `--rollout.max-turns`)."""

    model: str = option("", "the model to train (the SCoRe-SFT checkpoint): a local HF directory or built-in name")
    items: str = option("", "the RL items: an rl_items.jsonl file that mentor wrote (export/rl_items.jsonl), or the "
                            "directory holding one")
    tasks: str | None = option(None, "the items' tasks (SUITE:SPLIT or a task JSONL file, as mentor was given), for "
                                     "what a suite keeps in a task's meta (the reference teacher judges key steps "
                                     "from it); default: the rl_tasks.jsonl mentor wrote beside the items, else "
                                     "tasks made from the items (id, question, answer, suite)")
    n: int | None = option(None, N_HELP)
    task_seed: int = option(0, "seed of the task generator, with --tasks SUITE:SPLIT")
    teacher: str = option("reference", TEACHER_HELP + " (judges key-step equivalence)")
    device: str = option("auto", DEVICE_HELP)
    engine: str = option("local", "rollout engine: local (our engine; several processes under accelerate launch) or "
                                  "vllm (one CUDA GPU, in this process)")
    tools: ToolConfig = field(default_factory=ToolConfig, metadata={"help": "sandbox and search"})


# What an rl rerun may change: speed, logging and checkpoint frequency.
RL_RESUME_FREE = ("save_every", "samples_per_step", "judge_concurrency", "cpu_threads")


# How the sft and rl commands find and read their data files, and which process writes.
def data_file(spec: str, name: str) -> Path:
    """The file `spec` names, or the one `name` file in the directory it names.

    >>> data_file("nowhere", "sft_trajectories.jsonl")
    Traceback (most recent call last):
    ...
    score_distill.config.UsageError: nowhere: no such file or directory
    """
    path = Path(spec)
    if path.is_dir():
        found = sorted(path.glob(name))
        if len(found) != 1:
            raise UsageError(f"{spec}: expected one {name} in this directory, found {len(found)}")
        path = found[0]
    if not path.is_file():
        raise UsageError(f"{spec}: no such file or directory")
    return path


def read_data(path: Path, read):  # noqa: ANN001, ANN201
    """`read(path)`, with a malformed file (not JSON, not our records) as a one-line usage
    error naming the file and line."""
    from score_distill.types import SchemaError

    try:
        return read(path)
    except SchemaError as e:
        raise UsageError(str(e)) from None
    except KeyError as e:
        raise UsageError(f"{path}: a record without {e} (expected the *_trajectories.jsonl that bc or mentor "
                         "writes)") from None


def is_main_process() -> bool:
    """Whether this is the launcher's rank 0 (or no launcher at all)."""
    import os

    return int(os.environ.get("RANK", "0") or 0) == 0
