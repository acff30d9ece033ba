"""SandboxConfig: the settings of one sandbox, each with its help text, checked when made.

`Sandbox` (score_distill/tools/sandbox.py) reads them; ToolConfig carries one, so each field
is a CLI flag and a YAML key (`--tools.sandbox.timeout-s 5`). A value out of range is refused
here, before anything starts (sandbox_limits.py has the ranges, sandbox_paths.py the rules
for `packages`).

    >>> SandboxConfig(timeout_s=5).isolation
    'auto'
"""

from __future__ import annotations

from dataclasses import dataclass

from score_distill.config import option
from score_distill.tools.sandbox_limits import check_limit, limit_ranges
from score_distill.tools.sandbox_paths import DEFAULT_PACKAGES, check_packages

ISOLATIONS = ("auto", "namespaces", "process")


@dataclass
class SandboxConfig:
    timeout_s: float = option(10.0, "wall-clock seconds one cell may run; then its interpreter is killed "
                                    "and rebuilt")
    memory_mb: int = option(1024, "address-space limit (RLIMIT_AS) of each interpreter process, MiB")
    cpu_time_s: float = option(30.0, "CPU seconds one cell may use (a soft limit moved before every cell; "
                                     "then CPUTimeLimitExceeded)")
    cpu_total_s: float = option(600.0, "CPU seconds one interpreter may use over its life (hard limit: it is "
                                       "killed, then rebuilt)")
    max_output_chars: int = option(4000, "output cap: head and tail kept, with a '... [N characters cut] ...' "
                                         "marker between")
    isolation: str = option("auto", "auto | namespaces | process: auto uses namespaces where unshare works, "
                                    "else process")
    max_processes: int = option(32, "processes + threads the sandbox may have at once (RLIMIT_NPROC on its "
                                    "own uid)")
    disk_mb: int = option(64, "size of the private work dir (a tmpfs, with namespaces) and of the largest "
                              "file, MiB")
    packages: list[str] = option(DEFAULT_PACKAGES, "top-level names of the installed packages model code may "
                                                   "import besides the standard library (those not installed "
                                                   "are skipped; never score_distill); [] for the standard "
                                                   "library only")

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"SandboxConfig.isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        for name, (kind, low, high, unit) in limit_ranges().items():
            check_limit(f"SandboxConfig.{name}", getattr(self, name), kind, low, high, unit)
        check_packages(self.packages)
