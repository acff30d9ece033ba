"""Where a study run's students win and lose, from its run directory alone (no model is
loaded, nothing is written): the numbers issue "prove the method" asks for when SCoRe does
not beat its baselines.

    python bench/study/diagnose.py runs/study/seed0 [--split dev]

Prints, as Markdown:
- MPS: tasks by the interventions they needed, where the first critical errors sat, teacher
  cost; the split into SFT and RL halves;
- every RL run (SCoRe-RL, the grpo ablation): per step the mean reward, the shares of the
  rewards 1 / 0.5 / 0.1 / 0, the share of groups with mixed rewards (the only ones that
  train), finish rate, turns, gradient norm; and the first half of the steps against the
  second;
- every evaluated stage on `--split` (dev by default: the split choices are made on): how
  each trajectory ended (correct, a wrong final answer, stopped for unparseable turns or
  repeated actions, out of turns), code errors, tokens written, and one short failed example
  per way of failing;
- the same stages by the shape of the question (from the run's task files): math by the
  number of operations it takes, search by form (bridge or comparison), the direction a
  comparison asks for, and hops. On `ood` this says which of the new shapes a stage solves;
  for comparisons, whether a wrong answer named the other entity compared or neither, and how
  many right answers came after fewer searches than the question needs (guesses).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
from pathlib import Path

SHARES = ("r1.0", "r0.5", "r0.1", "r0")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mps_section(run: Path) -> list[str]:
    summary_path = run / "mps" / "summary.json"
    if not summary_path.is_file():
        return ["## MPS", "", "not run yet", ""]
    s = json.loads(summary_path.read_text(encoding="utf-8"))
    out = ["## MPS", "", f"{s['tasks']} tasks; teacher tokens {s['teacher_tokens']:,} in {s['teacher_calls']} calls; "
           f"student tokens {s['student_tokens']:,}; hard to teach {s['hard_to_teach']}", "",
           "| interventions needed | tasks |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in s["solved_by_interventions"].items()]
    out += ["", "| first critical error at step | tasks |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in sorted(s["first_error_step_hist"].items(), key=lambda kv: int(kv[0]))]
    split = run / "mps" / "export" / "split.json"
    if split.is_file():
        c = json.loads(split.read_text(encoding="utf-8"))["counts"]
        out += ["", f"split: SFT half {c['sft_tasks']} tasks -> {c['sft_examples']} trajectories; RL half "
                f"{c['rl_tasks']} tasks -> {c['rl_items']} items, {c['rl_outcome_only']} of them outcome-only"]
    return out + [""]


def rl_section(name: str, log: Path) -> list[str]:
    rows = read_jsonl(log)
    if not rows:
        return [f"## RL: {name}", "", "no step logged yet", ""]
    out = [f"## RL: {name} ({len(rows)} steps logged)", "",
           "| step | reward | 1 | 0.5 | 0.1 | 0 | mixed groups | finished | turns | grad norm | loss |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shares = " | ".join(f"{r.get(k, 0.0):.0%}" for k in SHARES)
        out.append(f"| {r['step']} | {r['reward']:.3f} | {shares} | {r['signal']:.0%} | {r['finished']:.0%} | "
                   f"{r['turns']:.2f} | {r['grad_norm']:.3g} | {r['loss']:.3g} |")
    if len(rows) >= 4:
        half = len(rows) // 2
        mean = lambda part, k: statistics.fmean(r[k] for r in part)  # noqa: E731
        out += ["", "| steps | mean reward | mixed groups | finished |", "|---|---|---|---|"]
        for label, part in ((f"1-{half}", rows[:half]), (f"{half + 1}-{len(rows)}", rows[half:])):
            out.append(f"| {label} | {mean(part, 'reward'):.3f} | {mean(part, 'signal'):.0%} | "
                       f"{mean(part, 'finished'):.0%} |")
    return out + [""]


def ending(t: dict) -> str:
    if t["meta"].get("correct"):
        return "correct"
    if t.get("final_answer") is not None:
        return "wrong final answer"
    stopped = t["meta"].get("stopped")
    if stopped:
        return {"format_errors": "stopped: unparseable turns", "repeats": "stopped: repeated action"}.get(
            stopped, f"stopped: {stopped}")  # the rollout's two early stops
    return "out of turns"


def short(t: dict, width: int = 160) -> str:
    """The trajectory's steps in one line each, cut to `width` characters."""
    lines = []
    for i, s in enumerate(t["steps"]):
        text = s.get("code") or s.get("thought") or s.get("raw") or ""
        note = (s.get("parse_error") or s.get("error") or "").strip().split("\n")[0]  # the error's first line
        line = f"{i}. {text!r}" + (f" -> {note}" if note else "")
        lines.append("    " + (line if len(line) <= width else line[: width - 3] + "..."))
    return "\n".join(lines)


def evaluations(run: Path, split: str) -> list[tuple[str, str, list[dict]]]:
    """(stage, set, trajectories) of every evaluated stage's sets of `split`, read once."""
    stages = sorted(p for p in (run / "eval").iterdir() if p.is_dir()) if (run / "eval").is_dir() else []
    return [(stage.name, suite_dir.name, read_jsonl(suite_dir / "trajectories.jsonl"))
            for stage in stages for suite_dir in sorted(stage.glob(f"*-{split}"))
            if (suite_dir / "trajectories.jsonl").is_file()]


def eval_section(evaluated: list[tuple[str, str, list[dict]]], split: str) -> list[str]:
    out = [f"## Evaluations on {split}", ""]
    # Every kind ending() gives (the rollout stops early for these two reasons only).
    order = ["correct", "wrong final answer", "stopped: unparseable turns", "stopped: repeated action", "out of turns"]
    examples = []
    for stage, suite, trajs in evaluated:
        ends = collections.Counter(ending(t) for t in trajs)
        code_err = sum(any(s.get("error") for s in t["steps"]) for t in trajs)
        tokens = statistics.fmean(t["generated_tokens"] for t in trajs) if trajs else 0.0
        turns = statistics.fmean(len(t["steps"]) for t in trajs) if trajs else 0.0
        cells = " | ".join(f"{ends.get(k, 0) / max(1, len(trajs)):.0%}" for k in order)
        out.append(f"| {stage} | {suite} | {len(trajs)} | {cells} | {code_err / max(1, len(trajs)):.0%} "
                   f"| {turns:.2f} | {tokens:.0f} |")
        for kind in order[1:]:
            sample = next((t for t in trajs if ending(t) == kind), None)
            if sample is not None:
                examples.append(f"{stage} {suite}, {kind} ({sample['task_id']}):\n{short(sample)}")
    if len(out) == 2:
        return out + ["no evaluation yet", ""]
    header = ["| stage | set | n | " + " | ".join(order) + " | code error | turns | tokens |",
              "|---|---|---|" + "---|" * len(order) + "---|---|---|"]
    return out[:2] + header + out[2:] + ["", "One failed trajectory per way of failing (first of each):", "",
                                         "```", "\n\n".join(examples), "```", ""]


def shape(task: dict) -> str:
    """The question's shape, read from its generator's meta: what separates ood from train."""
    meta = task.get("meta", {})
    if "n_ops" in meta:
        return f"{meta['n_ops']} operation" + ("s" if meta["n_ops"] != 1 else "")
    if "form" in meta:
        way = f" ({meta['direction']})" if meta.get("direction") else ""
        return f"{meta['form']}{way}, {meta.get('hops', '?')} hops"
    return "unknown"


def shape_section(run: Path, evaluated: list[tuple[str, str, list[dict]]], split: str) -> list[str]:
    rows, picks = [], []
    for path in sorted((run / "tasks").glob(f"*-{split}.jsonl")) if (run / "tasks").is_dir() else []:
        suite = path.stem
        tasks = {t["id"]: t for t in read_jsonl(path)}
        for stage, _, trajs in (e for e in evaluated if e[1] == suite):
            tally: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
            named = collections.Counter()
            for t in trajs:
                task = tasks.get(t["task_id"], {})
                right = bool(t["meta"].get("correct"))  # as the evaluation scored it
                cell = tally[shape(task)]
                cell[0] += right
                cell[1] += 1
                compared = task.get("meta", {}).get("compared")
                if task.get("meta", {}).get("form") == "comparison" and compared:
                    named["right" if right else "other" if str(t.get("final_answer")) in map(str, compared)
                          else "neither"] += 1
                    searches = sum("web_search" in (s.get("code") or "") for s in t["steps"])
                    named["right, fewer searches"] += right and searches < task["meta"].get("hops", 0)
            cells = "; ".join(f"{k}: {a}/{n}" for k, (a, n) in sorted(tally.items()))
            rows.append(f"| {stage} | {suite} | {cells} |")
            if named:
                picks.append(f"| {stage} | {suite} | {named['right']} | {named['other']} | {named['neither']} "
                             f"| {named['right, fewer searches']} |")
    if not rows:
        return []
    out = [f"## Solved on {split}, by the shape of the question", "", "| stage | set | solved / tasks, by shape |",
           "|---|---|---|", *rows, ""]
    if picks:
        out += ["Comparisons: which entity the final answer names (the right one, the other one compared, "
                "neither), and how many right answers came after fewer searches than the question's hops "
                "(a guess):", "", "| stage | set | right | the other | neither | right, fewer searches |",
                "|---|---|---|---|---|---|", *picks, ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory of `score-distill run --preset study`")
    ap.add_argument("--split", default="dev", help="the evaluation split to read (default dev)")
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "run_state.json").is_file():
        raise SystemExit(f"{run}: not a run directory (no run_state.json)")
    out = [f"# Diagnostics of {run}", ""] + mps_section(run)
    for name in ("score_rl", "grpo"):
        log = run / name / "rl_log.jsonl"
        if log.is_file():
            out += rl_section(name, log)
    evaluated = evaluations(run, args.split)
    out += eval_section(evaluated, args.split)
    out += shape_section(run, evaluated, args.split)
    print("\n".join(out))


if __name__ == "__main__":
    main()
