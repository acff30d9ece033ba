"""Where the BC student of a calibration run goes wrong on `math`: the reference teacher
judges every failed evaluation trajectory, and the first critical error is counted by the
operation the student should have computed at that step (the next quantity of the task's
DAG that the prefix had not established yet).

    .venv/bin/python bench/calibration_failures.py runs/calibration/math-512-e1-s0-.../eval-test

Prints a table: operation, how often it is the first one the student gets wrong, how often
the tasks of that split contain it, and the ratio of the two (a per-operation error rate
with overlaps, not a probability). Also the kinds of first error (a wrong value that is used,
a wrong final answer, no answer at all, a first thought that cannot be parsed).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", help="an eval-<split> folder of bench/calibration.py")
    ap.add_argument("--split", default=None, help="split of the tasks (default: from the folder name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", nargs="*", default=[], metavar="DIAL=VALUE")
    args = ap.parse_args()

    from calibration import parse_dials  # bench/calibration.py, beside this script

    from score_distill.tasks.load import generate_suite
    from score_distill.teachers.math_rules import MathRules, established, problem_of
    from score_distill.teachers.reference import ReferenceTeacher
    from score_distill.types import Trajectory, iter_jsonl

    eval_dir = Path(args.eval_dir)
    split = args.split or eval_dir.name.removeprefix("eval-")
    dials = parse_dials(args.difficulty)
    trajs = list(iter_jsonl(eval_dir / "trajectories.jsonl", Trajectory))
    tasks = {t.id: t for t in generate_suite("math", split, len(trajs), args.seed, **dials)}
    missing = [t.task_id for t in trajs if t.task_id not in tasks]
    if missing:
        raise SystemExit(f"{len(missing)} trajectories are not tasks of math:{split} with these dials "
                         f"(first: {missing[0]}); pass the run's --seed and --difficulty")
    teacher = ReferenceTeacher()
    first_op: collections.Counter[str] = collections.Counter()
    present: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    wrong_at: collections.Counter[str] = collections.Counter()
    n_wrong = 0
    for traj in trajs:
        task = tasks[traj.task_id]
        p = problem_of(task)
        for op in {n.op for n in p.computed}:
            present[op] += 1
        if traj.score == 1.0:
            continue
        n_wrong += 1
        verdict = teacher.judge(task, traj.steps)   # first_error is an index into steps (checked there)
        k = verdict.first_error or 0
        if traj.steps[k].parse_error is not None:
            kind = "unparseable step"
        elif "answers" in verdict.analysis:
            kind = "wrong final answer"
        elif "no final answer" in verdict.analysis:
            kind = "no final answer"
        else:
            kind = "wrong value used later"
        kinds[kind] += 1
        wrong_at["first thought" if k == 0 else f"step {min(k, 4)}{'+' if k >= 4 else ''}"] += 1
        if k == 0:
            first_op["(plan)"] += 1
            continue
        trace = teacher.rules_for(task)._trace(task, traj.steps[:k])   # the judge's replay cache
        nxt = MathRules._next(p, established(p, trace.env_after(k - 1)))
        first_op[nxt.op if nxt is not None else "(final answer)"] += 1
    print(f"# {eval_dir}: {len(trajs)} tasks, {n_wrong} wrong")
    print("| first error | count |\n|---|---|")
    for kind, c in kinds.most_common():
        print(f"| {kind} | {c} |")
    print("\n| first error at | count |\n|---|---|")
    for where, c in sorted(wrong_at.items()):
        print(f"| {where} | {c} |")
    print("\n| operation due at the first error | count | tasks with it | ratio |\n|---|---|---|---|")
    for op, c in first_op.most_common():
        have = present.get(op, 0)
        print(f"| {op} | {c} | {have or '-'} | {c / have:.2f} |" if have else f"| {op} | {c} | - | - |")
    print(json.dumps({"tasks": len(trajs), "wrong": n_wrong}))


if __name__ == "__main__":
    main()
