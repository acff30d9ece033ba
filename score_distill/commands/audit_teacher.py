"""`score-distill audit-teacher`: can this teacher do SCoRe? Its judgements, repairs and
equivalence answers measured on trajectories with errors planted at known steps.

    score-distill audit-teacher --teacher reference --suite math --n 20 --out runs/audit-reference
    score-distill audit-teacher --teacher openai:qwen2.5-72b@http://127.0.0.1:8000/v1 --suite search \
        --n 100 --out runs/audit-qwen-search

Writes DIR/cases.jsonl (per trajectory: what was planted, what the teacher said, what its
repair did), DIR/report.json and DIR/report.md (rates with 95% intervals, per kind), and
DIR/config.yaml, then prints the headline rates. Rerunning the same command resumes: finished
cases are kept, and cases whose teacher could not be reached are redone. A teacher whose
endpoint fails `--teacher-down-after` calls in a row stops the audit with one line and exit
code 3. teachers/audit.py says how each case is run, teachers/audit_report.py what each
number means.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from score_distill.config import option
from score_distill.teachers.audit import AuditConfig

HELP = "audit a teacher on trajectories with planted errors: first-error step, false alarms, repairs, leaks, equivalence"


@dataclass
class AuditCommand(AuditConfig):
    """`score-distill audit-teacher`: the teacher it loads, then the audit it runs."""

    teacher: str = option("reference", "teacher: reference, or openai:<model>@<base-url>")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from score_distill.config import add_command_arguments

    add_command_arguments(parser, AuditCommand)


def run(args: argparse.Namespace) -> int:
    from score_distill.config import UsageError, command_config
    from score_distill.rundir import check_run_dir
    from score_distill.teachers.audit import RESUME_FREE, audit, per_task_teachers
    from score_distill.teachers.audit_report import write_report

    cfg = command_config(args, AuditCommand)
    check_run_dir(args.out, cfg, RESUME_FREE)  # refused before a teacher is loaded
    try:
        make_teacher = per_task_teachers(cfg.teacher, cfg.tools)
    except ValueError as e:  # an unknown or malformed spec
        raise UsageError(f"--teacher: {e}") from None
    # A teacher that stays down raises TeacherDown: `cli.main` turns it into one line, exit 3.
    records = audit(make_teacher, cfg, args.out)
    report = write_report(args.out, records, cfg.teacher, cfg)
    print(json.dumps({name: [m["rate"], m["ci95"], f"{m['k']}/{m['n']}"] for name, m in report["metrics"].items()}))
    return 0
