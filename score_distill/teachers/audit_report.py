"""The teacher audit's numbers, with 95% Wilson intervals: OUT/report.json and OUT/report.md.

    metrics = audit_metrics(records)             # from teachers/audit.py's records
    write_report(out, records, teacher="reference", config=cfg)

Every rate is k of n cases with its interval (metrics.wilson_interval). A teacher call that
failed (its reply stayed unusable after the teacher's retries, or its endpoint failed) is a
miss wherever a right answer was needed: it found no error, repaired nothing, settled no
equivalence. The two rates where lower is better, false alarms and answer leaks, are over
the calls that answered, and the failed calls have their own rows. Nothing is dropped.

What each number means (`better`: which way is good):
- first_error_exact: planted trajectories whose blamed step is the planted step;
- first_error_within_one: ... a step at most one away from it;
- errors_missed: planted trajectories judged correct (lower is better);
- false_alarms: correct trajectories judged wrong (lower is better);
- repair_to_gold: planted trajectories whose repair at the planted step runs without an error
  and, followed by the reference steps after it, reaches the gold answer;
- answer_leaks: repairs that write down the gold answer before the steps so far showed it;
- equivalence_agreement: equivalence answers that match execution;
- failed_calls: teacher calls (judge, repair, equivalence) that gave no usable answer.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from score_distill.config import to_dict
from score_distill.metrics import wilson_interval
from score_distill.storage import atomic_write_json, atomic_write_text
from score_distill.teachers.audit import AuditRecord

HIGHER, LOWER = "higher", "lower"
TITLES = {
    "first_error_exact": "first error found, exact step",
    "first_error_within_one": "first error found, within one step",
    "errors_missed": "planted errors judged correct",
    "false_alarms": "correct trajectories judged wrong",
    "repair_to_gold": "repairs reaching gold with the reference remainder",
    "answer_leaks": "repairs leaking the answer",
    "equivalence_agreement": "equivalence answers agreeing with execution",
    "failed_calls": "teacher calls with no usable answer",
}


def rate(k: int, n: int, better: str) -> dict[str, Any]:
    """k of n with its 95% Wilson interval.

    >>> rate(3, 4, "higher")["ci95"]
    [0.301, 0.954]
    """
    lo, hi = wilson_interval(k, n)
    return {"rate": round(k / n, 4) if n else None, "ci95": [round(lo, 3), round(hi, 3)], "k": k, "n": n,
            "better": better}


def _count(records: list[AuditRecord], hit: Callable[[AuditRecord], bool], better: str) -> dict[str, Any]:
    return rate(sum(hit(r) for r in records), len(records), better)


def _exact(r: AuditRecord) -> bool:
    return r.said_correct is False and r.said_step == r.planted_step


def _within_one(r: AuditRecord) -> bool:
    return r.said_correct is False and r.said_step is not None and abs(r.said_step - (r.planted_step or 0)) <= 1


def _failures(records: list[AuditRecord]) -> dict[str, dict[str, int]]:
    """Per operation: calls made and calls that gave no usable answer (malformed repairs:
    an answer that could not stand as a step)."""
    planted = [r for r in records if r.planted_step is not None]
    checks = [e for r in planted for e in r.equivalence]
    failed_repair = [r for r in planted if r.repair_failure is not None]
    return {
        "judge": {"calls": len(records), "failed": sum(r.judge_failure is not None for r in records)},
        "repair": {"calls": len(planted), "failed": len(failed_repair),
                   "malformed": sum((r.repair_failure or "").startswith("malformed") for r in failed_repair)},
        "equivalence": {"calls": len(checks), "failed": sum(e.failure is not None for e in checks)},
    }


def audit_metrics(records: list[AuditRecord]) -> dict[str, Any]:
    """The audit's rates (see the module docstring) over all cases, and per kind."""
    planted = [r for r in records if r.planted_step is not None]
    correct = [r for r in records if r.planted_step is None]
    judged = [r for r in correct if r.said_correct is not None]
    repaired = [r for r in planted if r.repair_leaks is not None]
    checks = [e for r in planted for e in r.equivalence]
    failures = _failures(records)
    calls = sum(f["calls"] for f in failures.values())
    metrics = {
        "first_error_exact": _count(planted, _exact, HIGHER),
        "first_error_within_one": _count(planted, _within_one, HIGHER),
        "errors_missed": _count(planted, lambda r: r.said_correct is True, LOWER),
        "false_alarms": _count(judged, lambda r: r.said_correct is False, LOWER),
        "repair_to_gold": _count(planted, lambda r: r.repair_solved is True, HIGHER),
        "answer_leaks": _count(repaired, lambda r: r.repair_leaks is True, LOWER),
        "equivalence_agreement": rate(sum(e.said == e.truth for e in checks), len(checks), HIGHER),
        "failed_calls": rate(sum(f["failed"] for f in failures.values()), calls, LOWER),
    }
    by_kind: dict[str, list[AuditRecord]] = defaultdict(list)
    for r in records:
        by_kind[r.kind].append(r)
    kinds = {}
    for kind, group in sorted(by_kind.items(), key=lambda kv: (kv[1][0].planted_step is None, kv[0])):  # planted first
        # Lower-is-better rates over the calls that answered, as overall.
        if group[0].planted_step is None:
            kinds[kind] = {"planted": False, "false_alarms": _count([r for r in group if r.said_correct is not None],
                                                                    lambda r: r.said_correct is False, LOWER)}
        else:
            kinds[kind] = {"planted": True, "first_error_exact": _count(group, _exact, HIGHER),
                           "first_error_within_one": _count(group, _within_one, HIGHER),
                           "repair_to_gold": _count(group, lambda r: r.repair_solved is True, HIGHER),
                           "answer_leaks": _count([r for r in group if r.repair_leaks is not None],
                                                  lambda r: r.repair_leaks is True, LOWER)}
    pairs = {name: rate(sum(e.said == e.truth for e in checks if e.name == name),
                        sum(e.name == name for e in checks), HIGHER) for name in sorted({e.name for e in checks})}
    tasks = len({r.task_id for r in records})
    tokens = sum(r.teacher_tokens for r in records)
    return {"n_tasks": tasks, "n_cases": len(records), "metrics": metrics, "by_kind": kinds, "equivalence_by_pair": pairs,
            "failures": failures, "teacher_usage": {"calls": sum(r.teacher_calls for r in records), "tokens": tokens,
                                               "tokens_per_task": round(tokens / tasks, 1) if tasks else 0.0}}


def _pct(m: dict[str, Any]) -> str:
    if m["rate"] is None:
        return "n/a"
    lo, hi = m["ci95"]
    return f"{100 * m['rate']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the rates, per kind, the failed calls and the tokens."""
    cfg = report["config"]
    lines = [f"# Teacher audit: {report['teacher']}", "",
             f"Suite {cfg['suite']}:{cfg['split']}, seed {cfg['seed']}: {report['n_tasks']} tasks, each judged "
             "twice (a correct trajectory and one with an error planted at a known step). Rates in %, "
             "95% Wilson interval, k/n cases.", "",
             "| metric | rate [95% CI] | k/n | better |", "|---|---|---|---|"]
    for name, m in report["metrics"].items():
        lines.append(f"| {TITLES[name]} | {_pct(m)} | {m['k']}/{m['n']} | {m['better']} |")
    lines += ["", "## Per kind", "", "| kind | cases | exact step | within one | repair to gold | leaks | false alarms |",
              "|---|---|---|---|---|---|---|"]
    for kind, m in report["by_kind"].items():
        if m["planted"]:
            cells = [_pct(m[k]) for k in ("first_error_exact", "first_error_within_one", "repair_to_gold", "answer_leaks")]
            lines.append(f"| {kind} | {m['first_error_exact']['n']} | " + " | ".join(cells) + " | |")
        else:
            lines.append(f"| {kind} (correct) | {m['false_alarms']['n']} | | | | | {_pct(m['false_alarms'])} |")
    pairs = "; ".join(f"{name} {_pct(m)} ({m['k']}/{m['n']})" for name, m in report["equivalence_by_pair"].items())
    lines += ["", f"Equivalence by pair (reworded: truly equivalent; mistaken: not): {pairs or 'none asked'}.", ""]
    f, usage = report["failures"], report["teacher_usage"]
    lines += ["## Teacher calls", "",
              f"Judge: {f['judge']['failed']} of {f['judge']['calls']} failed. Repair: {f['repair']['failed']} of "
              f"{f['repair']['calls']} failed ({f['repair']['malformed']} malformed steps). Equivalence: "
              f"{f['equivalence']['failed']} of {f['equivalence']['calls']} failed. A failed call counts as a miss; "
              "the cases in cases.jsonl say why each failed.", "",
              f"Teacher tokens: {usage['tokens']:,} in {usage['calls']:,} calls "
              f"({usage['tokens_per_task']:,} per task).", ""]
    return "\n".join(lines)


def write_report(out: str | Path, records: list[AuditRecord], teacher: str, config: Any) -> dict[str, Any]:
    """OUT/report.json and OUT/report.md of an audit's records; returns the report."""
    report = {"teacher": teacher, "config": to_dict(config), **audit_metrics(records)}
    atomic_write_json(Path(out) / "report.json", report)
    atomic_write_text(Path(out) / "report.md", render_markdown(report))
    return report
