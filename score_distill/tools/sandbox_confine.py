"""Confinement of the sandbox interpreter: what `sandbox_child.py` does, still privileged,
before it runs any model code. Standard library only (the child starts with `python -S`).

`start(settings)` runs, in order:
1. with namespaces (we are pid 1 of fresh network, pid, IPC and mount namespaces made by
   `unshare`): cap System V IPC in our IPC namespace (`limit_ipc`), then build the file
   system model code sees and move into it (sandbox_view.py: the standard library, the
   system's programs and libraries and the allow-listed packages, read-only; a private work
   dir and /dev/shm sharing one tmpfs of `disk_mb`; nothing else of the host);
2. resource limits: address space, file size, processes, CPU time, no core dumps;
3. drop privileges: switch to the sandbox's own uid (when started as root), or, as root of a
   user namespace, clear every capability and the bounding set; then no_new_privs (setuid
   programs grant nothing) and, with namespaces, a parent-death signal;
4. a seccomp filter (sandbox_seccomp.py: no sockets but AF_UNIX, no new namespaces, no
   ptrace, no memfd, no mounts, ...);
5. imports: sys.path holds the standard library only, and `AllowedPackages` finds the
   allow-listed packages (`packages`: name -> the directory holding it) and nothing else
   there; directories the sandbox uid cannot reach by path (e.g. under /root, in process
   mode) are reached through descriptors opened before step 3 (`/proc/self/fd/N`).

Only `disk_mb`, `memory_mb`, `cpu_time_s`, `cpu_total_s`, `nproc`, `uid`, `workdir`,
`packages`, `expose`, `hide`, `mode`, `seccomp` and `deny_ipc` of the settings are read here.

    >>> AllowedPackages({"json": os.path.dirname(os.__file__)}).find_spec("json").name
    'json'
    >>> AllowedPackages({}).find_spec("json") is None
    True
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import math
import os
import resource
import signal
import sys

if __package__:  # imported by the parent, as part of score_distill.tools
    from . import sandbox_seccomp, sandbox_view
else:  # in the child, from its own directory
    import sandbox_seccomp
    import sandbox_view

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
# System V IPC of one sandbox (per IPC namespace): shared memory up to disk_mb in all, in 64
# segments at most; 16 message queues of the default 16 KiB; 16 POSIX message queues.
SHM_SEGMENTS, MSG_QUEUES, POSIX_QUEUES = 64, 16, 16
MSGQUEUE_BYTES = 819200  # RLIMIT_MSGQUEUE, the kernel's default, so that a cell cannot raise it

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

seccomp_supported = sandbox_seccomp.supported  # for the parent


def _prctl(option: int, arg: int, arg3: int = 0) -> None:
    if _libc.prctl(option, arg, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


class AllowedPackages:
    """A meta-path finder for the allow-listed top-level names only, each from its own
    directory: sys.path itself holds the standard library alone."""

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dict(dirs)

    def find_spec(self, name: str, path: object = None, target: object = None) -> Any:
        where = self.dirs.get(name)
        if where is None or path is not None:  # submodules come from their package's __path__
            return None
        return importlib.machinery.PathFinder.find_spec(name, [where])


def limit_ipc(disk_mb: int) -> bool:
    """Cap System V IPC in our own IPC namespace (its limits are its own). False where the
    kernel does not let us (then the seccomp filter refuses System V IPC instead)."""
    pages = (disk_mb << 20) // os.sysconf("SC_PAGE_SIZE")
    caps = (("kernel/shmmax", disk_mb << 20), ("kernel/shmall", pages), ("kernel/shmmni", SHM_SEGMENTS),
            ("kernel/msgmni", MSG_QUEUES), ("fs/mqueue/queues_max", POSIX_QUEUES))
    try:
        for name, value in caps:
            with open(f"/proc/sys/{name}", "w", encoding="ascii") as f:
                f.write(str(value))
    except PermissionError:
        return False
    return True


def open_python_dirs(paths: list[str]) -> list[tuple[str, int]]:
    """(path, descriptor) of the import directories: the sandbox uid may not reach them."""
    return [(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            for path in dict.fromkeys(paths) if os.path.isdir(path)]


def reach_python_dirs(dirs: list[tuple[str, int]], packages: AllowedPackages) -> None:
    """After the drop: replace import directories the sandbox can no longer list with their
    /proc/self/fd/N twins (a magic link skips the permission checks on the path above it), in
    sys.path, in the allow-list and in the __path__ of packages already imported (encodings)."""
    swaps: dict[str, str] = {}
    for path, fd in dirs:
        try:
            os.listdir(path)
            os.close(fd)
        except OSError:
            swaps[path] = f"/proc/self/fd/{fd}"
    sys.path[:] = [swaps.get(p, p) for p in sys.path]
    packages.dirs = {name: swaps.get(p, p) for name, p in packages.dirs.items()}
    sys.path_importer_cache.clear()
    for module in list(sys.modules.values()):
        paths = module.__dict__.get("__path__")  # packages only; a namespace package's is no list
        if isinstance(paths, list):
            for i, p in enumerate(paths):
                for old, new in swaps.items():
                    if p == old or p.startswith(old + os.sep):
                        paths[i] = new + p[len(old):]


def set_limits(settings: dict[str, Any]) -> None:
    """Resource limits; a user that is not root cannot raise a hard limit, so clamp to it."""
    mb = 1 << 20

    def limit(kind: int, soft: int, hard: int) -> None:
        current = resource.getrlimit(kind)[1]
        if current != resource.RLIM_INFINITY and os.geteuid() != 0:
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(kind, (soft, hard))

    limit(resource.RLIMIT_AS, settings["memory_mb"] * mb, settings["memory_mb"] * mb)
    limit(resource.RLIMIT_FSIZE, settings["disk_mb"] * mb, settings["disk_mb"] * mb)
    limit(resource.RLIMIT_CORE, 0, 0)
    limit(resource.RLIMIT_NPROC, settings["nproc"], settings["nproc"])
    limit(resource.RLIMIT_MSGQUEUE, MSGQUEUE_BYTES, MSGQUEUE_BYTES)
    total = math.ceil(settings["cpu_total_s"])
    limit(resource.RLIMIT_CPU, min(total, math.ceil(settings["cpu_time_s"])), total)


def drop_privileges(uid: int | None) -> None:
    """Become the sandbox uid, or (root of a user namespace) lose every capability."""
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        # A uid change makes the process undumpable, which hides /proc/self/fd from it;
        # the import directories may be reached through there.
        _prctl(PR_SET_DUMPABLE, 1)
    elif os.geteuid() == 0:
        last = int(open("/proc/sys/kernel/cap_last_cap", encoding="ascii").read())
        for cap in range(last + 1):  # or exec() of any program would grant them again
            _prctl(PR_CAPBSET_DROP, cap)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2): all empty
        if _libc.capset(header, data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"capset: {os.strerror(err)}")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def undumpable() -> None:
    """For the namespace's pid 1: no other process of the sandbox may open its /proc/1/mem
    or attach to it, though they share its uid."""
    _prctl(PR_SET_DUMPABLE, 0)


def start(settings: dict[str, Any]) -> None:
    """Everything between exec and the first cell (see the module docstring)."""
    packages = AllowedPackages(settings["packages"])
    deny_ipc = settings["deny_ipc"]
    if settings["mode"] == "namespaces":
        deny_ipc = deny_ipc or not limit_ipc(settings["disk_mb"])
        sandbox_view.build(settings)
    dirs = open_python_dirs(sys.path + list(packages.dirs.values()))
    set_limits(settings)
    drop_privileges(settings["uid"])
    if settings["seccomp"] and not sandbox_seccomp.install(deny_ipc):
        raise OSError(f"no seccomp filter for machine {os.uname().machine!r}")
    if settings["mode"] == "namespaces":
        # Die with unshare: the uid change cleared what its --kill-child set. (Not in process
        # mode: the parent there is our thread that started us, which may end any time; the
        # interpreter's watchdog thread notices the parent's death instead.)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    reach_python_dirs(dirs, packages)
    sys.meta_path.append(packages)
    os.chdir(settings["workdir"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file is an OSError, not death
