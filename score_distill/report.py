"""The run report: `report.json` (machine-readable), `report.md` (the table a person reads)
and two plots: `accuracy.png` (accuracy per stage and task set, with 95% intervals) and
`rl_reward.png` (the SCoRe-RL reward curve and the share of groups that carry a gradient)."""

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


def plot_rl(log_path: Path, path: Path) -> bool:
    """The RL reward curve from an `rl_log.jsonl`; False when there is no log."""
    if not log_path.exists():
        return False
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["reward"] for r in rows], label="mean reward")
    ax.plot(steps, [r["signal"] for r in rows], label="groups with a gradient", linestyle="--")
    ax.plot(steps, [r["r1.0"] for r in rows], label="share of reward 1.0", linestyle=":")
    ax.set_xlabel("RL step")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("SCoRe-RL")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def write_report(report: dict, out: Path) -> None:
    atomic_write_json(out / "report.json", report)
    plot_accuracy(report, out / "accuracy.png")
    has_rl = plot_rl(out / "score_rl" / "rl_log.jsonl", out / "rl_reward.png")
    parts = [f"# score-distill run: {out.name}", "",
             f"Student `{report.get('student', '?')}`, teacher `{report.get('teacher', '?')}`.", "",
             "Accuracy in % with its 95% Wilson interval. Teacher tokens: spent to produce the stage's "
             "model (SCoRe stages cumulative: BC data + MPS + RL judging). Wall time: the stage plus "
             "its evaluation.", "", markdown_table(report), "", "![accuracy](accuracy.png)", ""]
    if has_rl:
        parts += ["![SCoRe-RL reward](rl_reward.png)", ""]
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
