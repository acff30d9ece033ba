"""Peak memory of the pipeline, per stage: the main process and everything it started.

    python bench/demo_memory.py --out runs/memory-demo > bench/demo_memory.txt
    python bench/demo_memory.py --out runs/memory-demo -- --n-train 6 --n-eval 4   # overrides

Runs `score-distill run --preset demo` (plus any setting flags after `--`) in a child
process and samples, every 0.2 s, the resident memory of that process and of all its
descendants (sandbox interpreters included: as root they run under other uids, which /proc
still shows us). Each sample is tagged with the stage that is writing: the top-level folder
of the run directory holding the most recently modified file. At the end the main process's
own high-water mark (VmHWM, what `/usr/bin/time -v` reports as maximum resident set size)
and the peak of the whole tree are printed, and a table of peaks per stage.

A resident-set figure counts shared pages (the model file mapped by several processes, the
interpreter's libraries) once per process, so the tree's sum overstates what the machine
needs; the main process's VmHWM is exact for that process. The overstatement is large at a
sandbox start: the main process forks, and until the fork execs the sandbox's launcher the
child shares (copy-on-write) every page of the parent and counts all of them as its own, so
a peak of the sum taken then counts the main process twice or more. Read the third column as
an upper bound, the main process's figures as the measurement.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        pass
    return 0


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_kib(root: int) -> tuple[int, int]:
    """(resident KiB of `root`, resident KiB of `root` and all its descendants)."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _status_kib(pid, "VmRSS")
        todo.extend(tree.get(pid, []))
    return _status_kib(root, "VmRSS"), total


def current_stage(out: Path) -> str:
    """The top-level folder of `out` with the newest file (the stage that is writing)."""
    best, stage = 0.0, "start"
    if not out.exists():
        return stage
    for top in out.iterdir():
        paths = [top] if top.is_file() else list(top.rglob("*"))
        for p in paths:
            try:
                m = p.stat().st_mtime
            except FileNotFoundError:
                continue
            if m > best:
                best, stage = m, (top.name if top.is_dir() else "report")
    return stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="run directory (reused: a finished stage is not rerun)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for the run")
    args = ap.parse_args()
    out = Path(args.out)
    cmd = [sys.executable, "-m", "score_distill", "run", "--preset", args.preset, "--out", str(out), *args.overrides]
    print("$ python bench/demo_memory.py --out", args.out, "--preset", args.preset, *args.overrides)
    print("# child:", " ".join(cmd[1:]))
    sys.stdout.flush()
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []
    reader = threading.Thread(target=lambda: [tail.append(line) for line in proc.stderr], daemon=True)
    reader.start()
    peaks: dict[str, list[int]] = {}  # stage -> [main peak, tree peak, seconds seen]
    order: list[str] = []
    stage, last_scan, hwm = "start", 0.0, 0
    while proc.poll() is None:
        now = time.time()
        if now - last_scan > 2.0:
            stage, last_scan = current_stage(out), now
        main_kib, total_kib = tree_rss_kib(proc.pid)
        hwm = max(hwm, _status_kib(proc.pid, "VmHWM"))
        if stage not in peaks:
            peaks[stage] = [0, 0, 0]
            order.append(stage)
        p = peaks[stage]
        p[0], p[1] = max(p[0], main_kib), max(p[1], total_kib)
        time.sleep(0.2)
    reader.join(timeout=5)
    wall = time.time() - t0
    print(f"exit code {proc.returncode}, wall {wall / 60:.1f} min")
    if proc.returncode:
        print("".join(tail[-20:]))
    print(f"main process high-water mark (VmHWM): {hwm / 2**20:.2f} GiB")
    print(f"peak of main + descendants (sum of RSS): {max(p[1] for p in peaks.values()) / 2**20:.2f} GiB")
    print()
    print("| stage (folder being written) | main RSS peak GiB | main + children peak GiB |")
    print("|---|---|---|")
    for s in order:
        print(f"| {s} | {peaks[s][0] / 2**20:.2f} | {peaks[s][1] / 2**20:.2f} |")


if __name__ == "__main__":
    main()
