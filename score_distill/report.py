"""The run report: `report.json` (machine-readable) and `report.md` (the table a person reads)."""

from __future__ import annotations

import json
from pathlib import Path


def _cell(entry: dict | None) -> str:
    if not entry:
        return "-"
    lo, hi = entry["ci95"]
    return f"{100 * entry['accuracy']:.1f} [{100 * lo:.0f}, {100 * hi:.0f}] (n={entry['n']})"


def markdown_table(report: dict) -> str:
    """Accuracy (%) with its 95% interval per stage and task set.

    >>> r = {"stages": {"bc": {"math:test": {"accuracy": 0.5, "ci95": [0.3, 0.7], "n": 20}}}}
    >>> print(markdown_table(r))
    | stage | math:test |
    |---|---|
    | bc | 50.0 [30, 70] (n=20) |
    """
    stages = report["stages"]
    columns = sorted({k for s in stages.values() for k in s})
    lines = ["| stage | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, entries in stages.items():
        lines.append(f"| {name} | " + " | ".join(_cell(entries.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2))
    parts = [f"# score-distill run: {out.name}", "", f"Student: `{report.get('student', '?')}`", "",
             "Accuracy in % with its 95% Wilson interval.", "", markdown_table(report), ""]
    if report.get("teacher_tokens"):
        parts += ["Teacher tokens per stage: " + ", ".join(f"{k} {v}" for k, v in report["teacher_tokens"].items()), ""]
    parts += ["Wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in report["wall_time_s"].items()), ""]
    (out / "report.md").write_text("\n".join(parts))
