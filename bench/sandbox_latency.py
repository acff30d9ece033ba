"""Sandbox step latency: what a CodeAct step costs on top of the model code itself.

    .venv/bin/python bench/sandbox_latency.py > bench/sandbox_latency.txt

Measured for each isolation the machine offers ("namespaces" and "process"):
- fresh step: a new Sandbox (process start, confinement) and its first cell; close apart;
  also the CPU time its processes used (user + sys), which does not depend on the load;
- warm step: one more cell in a live interpreter that already holds state;
- rebuild: `replay` of a 6-cell prefix (fresh interpreter + 6 cells, as MPS and RL do);
- side by side: N warm sandboxes each running one cell at once from N threads (as the
  batched rollout does), per round and per step; and N fresh starts at once.
The cells are trivial on purpose: this is overhead, not model code. Times are medians (p90
in brackets) of wall-clock milliseconds. A bare interpreter start is measured alongside, and
the load average printed, because the numbers move with whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from score_distill.tools.sandbox import Sandbox, SandboxConfig

HEADER = "{:48s}median     [p90]"
PREFIX = [
    "import math\nfrom fractions import Fraction",
    "a = Fraction(3, 4)\nb = Fraction(5, 6)",
    "s = a + b\nprint(s)",
    "def f(n):\n    return sum(i * i for i in range(n))",
    "vals = [f(n) for n in range(20)]\nprint(vals[-1])",
    "print(math.gcd(s.numerator, s.denominator))",
]


def timed(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def fmt(samples: list[float]) -> str:
    """Median and p90 in milliseconds."""
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{1000 * statistics.median(ordered):8.1f} ms  [{1000 * p90:7.1f}]"


def bench(isolation: str, reps: int, width: int) -> list[tuple[str, str]]:
    config = SandboxConfig(isolation=isolation)
    rows = []

    closes: list[float] = []

    def fresh() -> None:
        sb = Sandbox(config)
        sb.run("x = 1")
        t0 = time.perf_counter()
        sb.close()
        closes.append(time.perf_counter() - t0)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows.append(("fresh step (new sandbox + first cell)", fmt(timed(fresh, reps))))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / reps
    rows.append(("close", fmt(closes)))
    rows.append(("CPU time of its processes, start to close", f"{1000 * cpu:8.1f} ms  (mean)"))
    with Sandbox(config) as sb:
        sb.replay(PREFIX)
        warm = timed(lambda: sb.run("x = len(vals) + 1"), 10 * reps)
        rows.append(("warm step (cell in a live interpreter)", fmt(warm)))
        rows.append(("rebuild: replay of a 6-cell prefix", fmt(timed(lambda: sb.replay(PREFIX), reps))))
    boxes = [Sandbox(config) for _ in range(width)]
    try:
        with ThreadPoolExecutor(width) as pool:
            for b in boxes:
                b.run("x = 0")
            rounds = timed(lambda: list(pool.map(lambda b: b.run("x += 1"), boxes)), 2 * reps)
            rows.append((f"{width} side by side: one round of {width} steps", fmt(rounds)))
            rows.append((f"{width} side by side: per step (round / {width})", fmt([r / width for r in rounds])))
            starts = timed(lambda: [b.close() for b in pool.map(lambda _: Sandbox(config), range(width))], 3)
            rows.append((f"{width} fresh sandboxes started at once (all)", fmt(starts)))
    finally:
        for b in boxes:
            b.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="samples per measurement")
    ap.add_argument("--width", type=int, default=16, help="sandboxes side by side")
    args = ap.parse_args()
    print(" ".join(["# .venv/bin/python bench/sandbox_latency.py", *sys.argv[1:], "> bench/sandbox_latency.txt"]))
    print(f"# {os.cpu_count()} CPUs, load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"running as uid {os.geteuid()}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    bare = timed(lambda: subprocess.run([sys.executable, "-S", "-c", "pass"], check=True), args.reps)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / args.reps
    print(f"\n{HEADER.format('baseline')}\n  {'bare interpreter start (python -S -c pass)':45s} {fmt(bare)}")
    print(f"  {'CPU time of that interpreter, start to exit':45s} {1000 * cpu:8.1f} ms  (mean)")
    for isolation in ("namespaces", "process"):
        rows = bench(isolation, args.reps, args.width)
        print(f"\n{HEADER.format('isolation=' + isolation)}")
        for name, value in rows:
            print(f"  {name:45s} {value}")
    print(f"\n# load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
