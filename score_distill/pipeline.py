"""The main job, `score-distill run`: build the embedded world and run the stages on it.

Today it is an end-to-end sanity run of what exists: generate both task suites, execute a
sample of reference solutions in the sandbox (each must reach its gold answer), and evaluate
the untrained student on `test` and `ood` of both suites. Each stage writes its files and is
skipped on a rerun when its outputs exist, so a killed run resumes.

    score-distill run --preset demo              # SmolLM2-135M student
    score-distill run --preset smoke --out runs/smoke   # tiny model, a minute or two
    score-distill run --preset demo rollout.max_new_tokens=128 n_eval=16
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from score_distill.agent.rollout import RolloutConfig
from score_distill.config import option
from score_distill.tools.config import ToolConfig
from score_distill.types import Task, write_jsonl


@dataclass
class RunConfig:
    student: str = option("smollm2-135m", "student model: built-in name, local directory, or openai:<model>@<url>")
    seed: int = option(0, "seed of the worlds, splits and sampling")
    suites: list = option(["math", "search"], "task suites to run")
    eval_splits: list = option(["test", "ood"], "splits every stage is evaluated on")
    n_train: int = option(200, "training tasks generated per suite")
    n_eval: int = option(32, "evaluation tasks per suite and split")
    n_reference_check: int = option(20, "reference solutions executed per suite and split as a sanity check")
    rollout: RolloutConfig = field(default_factory=RolloutConfig, metadata={"help": "agent loop"})
    tools: ToolConfig = field(default_factory=ToolConfig, metadata={"help": "sandbox and search"})


def build_world(cfg: RunConfig, out: Path) -> dict[str, list[Task]]:
    """Generate every split of every suite into out/tasks/<suite>-<split>.jsonl."""
    from score_distill.tasks.load import generate_suite
    from score_distill.types import read_jsonl

    sets: dict[str, list[Task]] = {}
    for suite in cfg.suites:
        for split in ["train", *cfg.eval_splits]:
            path = out / "tasks" / f"{suite}-{split}.jsonl"
            if not path.exists():
                n = cfg.n_train if split == "train" else cfg.n_eval
                write_jsonl(path, generate_suite(suite, split, n, cfg.seed))
            sets[f"{suite}:{split}"] = read_jsonl(path, Task)
    return sets


def check_references(cfg: RunConfig, sets: dict[str, list[Task]], out: Path) -> dict:
    """Execute a sample of reference solutions; every one must end at its gold answer."""
    from score_distill.tasks.references import run_reference

    path = out / "reference_check.json"
    if path.exists():
        return json.loads(path.read_text())
    result = {}
    for name, tasks in sets.items():
        sample = tasks[: cfg.n_reference_check]
        ok = sum(run_reference(t, cfg.tools) for t in sample)
        result[name] = {"checked": len(sample), "reached_gold": ok}
    path.write_text(json.dumps(result, indent=2))
    return result


def run(cfg: RunConfig, out_dir: str | Path) -> dict:
    from score_distill.evaluate import evaluate
    from score_distill.models.load import load_model
    from score_distill.report import write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sets = build_world(cfg, out)
    refs = check_references(cfg, sets, out)
    timings["world"] = round(time.perf_counter() - t0, 2)
    bad = {k: v for k, v in refs.items() if v["reached_gold"] != v["checked"]}
    if bad:
        raise RuntimeError(f"reference solutions that miss their gold answer: {bad}")
    stages: dict[str, dict] = {}
    t0 = time.perf_counter()
    model = load_model(cfg.student)
    stages["untrained"] = {}
    for name, tasks in sets.items():
        if name.endswith(":train"):
            continue
        m = evaluate(model, tasks, out / "eval" / "untrained" / name.replace(":", "-"), cfg.tools, cfg.rollout,
                     desc=f"untrained {name}")
        stages["untrained"][name] = {"accuracy": m["accuracy"], "ci95": m["ci95"], "n": m["n"]}
    timings["eval_untrained"] = round(time.perf_counter() - t0, 2)
    report = {"stages": stages, "teacher_tokens": {}, "wall_time_s": timings, "reference_check": refs,
              "student": cfg.student}
    write_report(report, out)
    return report
