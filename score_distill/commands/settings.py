"""The `bc` and `mentor` commands' settings: what they load (student, teacher, task file),
then the library's config of their stage, all as flat flags and YAML keys.

The library configs (`BCConfig`, `MentorConfig`) hold only what their stage reads; what a
command needs to build its inputs lives here, so the pipeline, which builds those inputs
itself, never fills a field it does not use. Imported by the commands when they run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from score_distill.config import option
from score_distill.stages.bc import BCConfig
from score_distill.stages.mps import MentorConfig
from score_distill.stages.split import SplitConfig

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
    teacher: str = option("reference", TEACHER_HELP)
    tasks: str = option("math:train", TASKS_HELP)
    n: int | None = option(None, N_HELP)
    seed: int = option(0, "seed of the task generator; also sets rollout.seed and split.seed unless they are given")
    exclude: str | None = option(None, "leave out these tasks: a BC output directory (its chosen_ids.json) "
                                       "or a JSON list of ids")
    split: SplitConfig = field(default_factory=SplitConfig, metadata={"help": "SFT/RL split and exports"})


# What a mentor rerun may change besides MentorConfig's own: the split is rewritten from the records.
MENTOR_RESUME_FREE = ("split",)
