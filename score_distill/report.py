"""The run report: `report.json` (machine-readable), `report.md` (the table a person reads)
and two plots: `accuracy.png` (accuracy per stage and task set, with 95% intervals) and
`rl_reward.png` (each RL stage's reward curve and the share of groups that carry a gradient).
`report.md` also says how each stage's students fail and what each RL stage had to learn
from (`diagnostics`): the numbers to read when a stage does not beat another."""

from __future__ import annotations

import json
from pathlib import Path

from score_distill.storage import atomic_path, atomic_write_json, atomic_write_text


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.0f}, {100 * hi:.0f}] (n={entry['n']})"


def markdown_table(report: dict) -> str:
    """Accuracy (%) with its 95% interval per stage and task set, plus the teacher tokens
    spent to produce each stage's model (cumulative) and the stage's wall time.

    >>> r = {"stages": {"bc": {"math:test": {"accuracy": 0.5, "ci95": [0.3, 0.7], "n": 20}}}}
    >>> print(markdown_table(r))
    | stage | math:test | teacher tokens | wall time (s) |
    |---|---|---|---|
    | bc | 50.0 [30, 70] (n=20) | - | - |
    """
    stages = report["stages"]
    columns = sorted({k for s in stages.values() for k in s})
    spent = report.get("teacher_tokens_cumulative", report.get("teacher_tokens", {}))
    wall = report.get("wall_time_s", {})
    lines = ["| stage | " + " | ".join(columns) + " | teacher tokens | wall time (s) |",
             "|---|" + "---|" * (len(columns) + 2)]
    for name, entries in stages.items():
        tokens = spent.get(name, "-")
        seconds = wall.get(name, 0) + wall.get(f"eval_{name}", 0) if name in wall or f"eval_{name}" in wall else "-"
        lines.append(f"| {name} | " + " | ".join(_cell(entries.get(c)) for c in columns) + f" | {tokens} | "
                     + (f"{seconds:.0f}" if seconds != "-" else "-") + " |")
    return "\n".join(lines)


def sandbox_line(report: dict) -> str:
    """One line on the sandboxes of every evaluation: how many trajectories ran with
    namespaces, and, loudly, how many fell back to process isolation and why.

    >>> ok = {"isolation": {"namespaces": 4}, "fallbacks": {}}
    >>> sandbox_line({"stages": {"bc": {"math:test": {"sandbox": ok}}}})
    'Sandboxes: all 4 evaluation trajectories ran with namespaces isolation.'
    >>> fell = {"isolation": {"namespaces": 3, "process": 1}, "fallbacks": {"the start timed out twice": 1}}
    >>> line = sandbox_line({"stages": {"bc": {"math:test": {"sandbox": fell}}}})
    >>> line.startswith("**Sandboxes: 1 of 4 evaluation trajectories fell back to process isolation**")
    True
    >>> line.endswith("causes: the start timed out twice (1). By isolation: namespaces 3, process 1.")
    True
    """
    modes: dict[str, int] = {}
    causes: dict[str, int] = {}
    for entries in report.get("stages", {}).values():
        for entry in entries.values():
            record = (entry or {}).get("sandbox") or {}
            for key, total in (("isolation", modes), ("fallbacks", causes)):
                for name, n in record.get(key, {}).items():
                    total[name] = total.get(name, 0) + n
    n = sum(modes.values())
    if not n:
        return "Sandboxes: no isolation recorded."
    fell = sum(causes.values())
    by_mode = ", ".join(f"{k} {v}" for k, v in sorted(modes.items()))
    if fell:
        listed = "; ".join(f"{k} ({v})" for k, v in sorted(causes.items(), key=lambda kv: -kv[1]))
        return (f"**Sandboxes: {fell} of {n} evaluation trajectories fell back to process isolation** (weaker: see "
                f"the sandbox docstring); causes: {listed}. By isolation: {by_mode}.")
    if len(modes) == 1:
        return f"Sandboxes: all {n} evaluation trajectories ran with {next(iter(modes))} isolation."
    return f"Sandboxes: by isolation: {by_mode}."


def plot_accuracy(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(report["stages"])
    columns = sorted({k for s in report["stages"].values() for k in s})
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(stages) * max(1, len(columns)) / 2), 4))
    width = 0.8 / max(1, len(columns))
    for j, col in enumerate(columns):
        xs, ys, lo, hi = [], [], [], []
        for i, st in enumerate(stages):
            e = report["stages"][st].get(col)
            if e:
                xs.append(i + j * width)
                ys.append(100 * e["accuracy"])
                lo.append(100 * (e["accuracy"] - e["ci95"][0]))
                hi.append(100 * (e["ci95"][1] - e["accuracy"]))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=col)
    ax.set_xticks([i + width * (len(columns) - 1) / 2 for i in range(len(stages))], stages)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy per stage (95% Wilson intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def read_rl_log(path: Path) -> list[dict]:
    """The records of an `rl_log.jsonl` ([] when absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_rl(logs: dict[str, list[dict]], path: Path) -> bool:
    """One panel per RL stage: mean reward, share of groups with a gradient, share of reward
    1.0, per step; False when no stage has a log."""
    logs = {name: rows for name, rows in logs.items() if rows}
    if not logs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(5 * len(logs), 3.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], logs.items()):
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["reward"] for r in rows], label="mean reward")
        ax.plot(steps, [r["signal"] for r in rows], label="groups with a gradient", linestyle="--")
        ax.plot(steps, [r["r1.0"] for r in rows], label="share of reward 1.0", linestyle=":")
        ax.set_xlabel("RL step")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
        ax.set_title(name)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def failure_table(evals: dict[str, dict[str, dict]]) -> str:
    """How each stage's students end, over all its evaluation sets (the sets' metrics.json
    summed): solved, wrong answer, no answer (the turn budget ran out, or the episode was cut
    for format errors or repeats), the share that ever wrote an unparseable step, turns and
    generated tokens per task.

    >>> m = {"n": 10, "accuracy": 0.3, "mean_turns": 3.0, "tokens_per_task": {"generated": 100.0},
    ...      "errors": {"wrong_answer": 3, "no_final_answer": 4, "trajectories_with_parse_error": 2}}
    >>> print(failure_table({"bc": {"math:test": m, "math:ood": m}}))
    | stage | tasks | solved | wrong answer | no answer | any unparseable step | turns | generated tokens |
    |---|---|---|---|---|---|---|---|
    | bc | 20 | 30% | 30% | 40% | 20% | 3.0 | 100 |
    """
    lines = ["| stage | tasks | solved | wrong answer | no answer | any unparseable step | turns | generated tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for name, sets in evals.items():
        n = sum(m["n"] for m in sets.values())
        if not n:
            continue

        def share(key: str) -> str:
            return f"{100 * sum(m.get('errors', {}).get(key, 0) for m in sets.values()) / n:.0f}%"

        def per_task(get) -> float:
            return sum(get(m) * m["n"] for m in sets.values()) / n

        solved = per_task(lambda m: m["accuracy"])
        lines.append(f"| {name} | {n} | {100 * solved:.0f}% | {share('wrong_answer')} | {share('no_final_answer')} | "
                     f"{share('trajectories_with_parse_error')} | {per_task(lambda m: m.get('mean_turns', 0)):.1f} | "
                     f"{per_task(lambda m: m.get('tokens_per_task', {}).get('generated', 0)):.0f} |")
    return "\n".join(lines)


def rl_table(logs: dict[str, list[dict]]) -> str:
    """What each RL stage had to learn from: its steps, the mean reward over the first and
    the last quarter of them, the share of groups whose rollouts earned different rewards
    (only those carry a gradient), the reward shares over all rollouts, the KL to the start
    at the last step ("-" without a KL penalty, which loads no reference) and the sequences
    trained on.

    >>> rows = [{"step": i, "reward": r, "signal": g, "r1.0": r, "r0.5": 0.0, "r0.1": 0.0, "r0": 1 - r,
    ...          "kl": 0.01 * i, "trained_seqs": 4} for i, (r, g) in enumerate([(0.0, 0.0), (0.5, 0.5)], 1)]
    >>> print(rl_table({"score_rl": rows}))
    | stage | steps | reward, first quarter | reward, last quarter | groups with a gradient | rewards 1 / .5 / .1 / 0 | KL at the end | sequences trained |
    |---|---|---|---|---|---|---|---|
    | score_rl | 2 | 0.00 | 0.50 | 25% | 25% / 0% / 0% / 75% | 0.0200 | 8 |
    """
    lines = ["| stage | steps | reward, first quarter | reward, last quarter | groups with a gradient | "
             "rewards 1 / .5 / .1 / 0 | KL at the end | sequences trained |", "|---|---|---|---|---|---|---|---|"]
    for name, rows in logs.items():
        if not rows:
            continue
        q = max(1, len(rows) // 4)
        shares = " / ".join(f"{100 * _mean([r[k] for r in rows]):.0f}%" for k in ("r1.0", "r0.5", "r0.1", "r0"))
        lines.append(f"| {name} | {len(rows)} | {_mean([r['reward'] for r in rows[:q]]):.2f} | "
                     f"{_mean([r['reward'] for r in rows[-q:]]):.2f} | {100 * _mean([r['signal'] for r in rows]):.0f}% | "
                     f"{shares} | {_kl(rows[-1])} | {sum(r.get('trained_seqs', 0) for r in rows)} |")
    return "\n".join(lines)


def _kl(row: dict) -> str:
    """The logged KL to the start, or "-" where it was not measured (no KL penalty, so no
    reference model).

    >>> _kl({"kl": 0.00123}), _kl({"kl": None}), _kl({})
    ('0.0012', '-', '-')
    """
    return "-" if row.get("kl") is None else f"{row['kl']:.4f}"


def read_evals(out: Path, stages: list[str]) -> dict[str, dict[str, dict]]:
    """Each stage's evaluation metrics by set, read from `out/eval/<stage>/<set>/metrics.json`."""
    evals: dict[str, dict[str, dict]] = {}
    for name in stages:
        for path in sorted((out / "eval" / name).glob("*/metrics.json")):
            evals.setdefault(name, {})[path.parent.name.replace("-", ":", 1)] = json.loads(path.read_text())
    return evals


def write_report(report: dict, out: Path) -> None:
    atomic_write_json(out / "report.json", report)
    plot_accuracy(report, out / "accuracy.png")
    logs = {name: read_rl_log(out / name / "rl_log.jsonl") for name in report["stages"]}
    logs = {name: rows for name, rows in logs.items() if rows}
    has_rl = plot_rl(logs, out / "rl_reward.png")
    parts = [f"# score-distill run: {out.name}", "",
             f"Student `{report.get('student', '?')}`, teacher `{report.get('teacher', '?')}`.", "",
             "Accuracy in % with its 95% Wilson interval. Teacher tokens: spent to produce the stage's "
             "model (SCoRe stages cumulative: BC data + MPS + RL judging). Wall time: the stage plus "
             "its evaluation.", "", markdown_table(report), "", "![accuracy](accuracy.png)", ""]
    if has_rl:
        parts += ["![RL reward](rl_reward.png)", ""]
    evals = read_evals(out, list(report["stages"]))
    if evals:
        parts += ["How the students end (every evaluation set of the stage together; no answer: the turn "
                  "budget ran out or the episode was cut for format errors or repeated actions):", "",
                  failure_table(evals), ""]
    if logs:
        parts += ["What RL learnt from (a group's rollouts carry a gradient only when their rewards differ):", "",
                  rl_table(logs), ""]
    if "mps" in report:
        parts += ["MPS summary: `" + json.dumps(report["mps"]) + "`", ""]
    parts += [sandbox_line(report), ""]
    wall = report["wall_time_s"]
    parts += [f"Wall time: {sum(wall.values()) / 60:.1f} min in all; per step (s): "
              + ", ".join(f"{k} {v}" for k, v in wall.items()), ""]
    atomic_write_text(out / "report.md", "\n".join(parts))


def benchmark_summary(evals: list[dict]) -> str:
    """The paper's table of benchmark evaluations, in markdown: one row per model, a column
    per benchmark, the average of the four math and four factual benchmarks (the paper's
    8-benchmark average) and that of the four judged ones. Each of `evals` holds `model`,
    `benchmark` and `metrics` (an eval directory's metrics.json). The score is the paper's:
    accuracy for the math and judged benchmarks, mean token F1 (`mean_score`) for the
    factual ones, in %; an average over benchmarks a model lacks is left out ("-").

    >>> rows = [{"model": "m", "benchmark": "aime24", "metrics": {"accuracy": 0.5, "mean_score": 0.5, "n": 30}},
    ...         {"model": "m", "benchmark": "hotpotqa", "metrics": {"accuracy": 0.2, "mean_score": 0.4, "n": 100}}]
    >>> print(benchmark_summary(rows))
    | model | aime24 | hotpotqa | average of 8 | average of judged 4 |
    |---|---|---|---|---|
    | m | 50.0 | 40.0 | - | - |
    """
    from score_distill.tasks.scoring import BENCHMARKS

    names = [b for b in BENCHMARKS if any(e["benchmark"] == b for e in evals)]
    models = list(dict.fromkeys(e["model"] for e in evals))
    score = {(e["model"], e["benchmark"]): 100 * (e["metrics"]["mean_score"] if BENCHMARKS[e["benchmark"]].scorer == "f1"
                                                  else e["metrics"]["accuracy"]) for e in evals}

    def average(model: str, groups: tuple[str, ...]) -> str:
        wanted = [b.name for b in BENCHMARKS.values() if b.group in groups]
        got = [score.get((model, b)) for b in wanted]
        return "-" if any(v is None for v in got) else f"{sum(got) / len(got):.1f}"  # type: ignore[arg-type]

    lines = ["| model | " + " | ".join(names) + " | average of 8 | average of judged 4 |",
             "|---" * (len(names) + 3) + "|"]
    for m in models:
        cells = [f"{score[(m, b)]:.1f}" if (m, b) in score else "-" for b in names]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {average(m, ('math', 'factual'))} | {average(m, ('judged',))} |")
    return "\n".join(lines)
