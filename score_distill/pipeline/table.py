"""The run's stages: each one's work (reading and writing its own folder of the run) and
`STAGES`, the table that orders them, says what each reads from and which are evaluated or
ablations. The runner (`pipeline/__init__.py`) only walks the table."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from score_distill.models.load import engine_settings
from score_distill.storage import atomic_write_json
from score_distill.types import Task, read_jsonl, write_jsonl

if TYPE_CHECKING:
    from score_distill.pipeline.config import RunState


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
