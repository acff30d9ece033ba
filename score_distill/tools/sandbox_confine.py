"""Confinement of the sandbox interpreter: what `sandbox_child.py` does, still privileged,
before it runs any model code. Standard library only (the child starts with `python -S`).

`start(settings)` runs, in order:
1. with namespaces (we are pid 1 of fresh network, pid and mount namespaces made by
   `unshare`): remount every mount read-only (our private copies: the parent's view stays
   as it was), hide home directories (/root, /home, the parent's $HOME) behind empty
   read-only tmpfs, and mount a private tmpfs of `disk_mb` on the working directory;
2. resource limits: address space, file size, processes, CPU time, no core dumps;
3. drop privileges: switch to the sandbox's own uid (when started as root), or, as root of a
   user namespace, clear every capability and the bounding set; then no_new_privs (setuid
   programs grant nothing) and, with namespaces, a parent-death signal;
4. a seccomp filter: socket() fails with EACCES for every family but AF_UNIX, io_uring_setup
   with ENOSYS (io_uring could open sockets without calling socket());
5. keep Python's own directories importable through descriptors opened in step 1
   (`/proc/self/fd/N`), since the sandbox uid may not reach them by path (e.g. under /root).

Only `disk_mb`, `memory_mb`, `cpu_time_s`, `cpu_total_s`, `nproc`, `uid`, `workdir`,
`masks`, `paths`, `mode` and `seccomp` of the settings are read here.

    >>> sorted(_mount_flags("ro,nosuid,relatime") & f for f in (MS_RDONLY, MS_NOSUID, MS_NODEV))
    [0, 1, 2]
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import resource
import signal
import sys

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any

# Linux constants (the same on x86_64 and aarch64).
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOSYMFOLLOW, MS_NOATIME, MS_NODIRATIME, MS_BIND = 32, 256, 1024, 2048, 4096
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 22, 38
SECCOMP_MODE_FILTER = 2
_MOUNT_OPTION_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                       "nosymfollow": MS_NOSYMFOLLOW, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                       "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
# (audit arch, socket syscall number) per machine; io_uring_setup is 425 on both.
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
_IO_URING_SETUP = 425

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int, arg3: int = 0) -> None:
    _check(_libc.prctl(option, arg, arg3, 0, 0), f"prctl({option})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _mount_flags(options: str) -> int:
    """The MS_* flags of a mount's per-mount options (field 6 of mountinfo)."""
    flags = 0
    for opt in options.split(","):
        flags |= _MOUNT_OPTION_FLAGS.get(opt, 0)
    return flags


def _mounts() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) of every mount we can see, parents first."""
    seen, out = set(), []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            flags = _mount_flags(fields[5])
            if point not in seen:
                seen.add(point)
                out.append((point, flags))
    return out


def _remount_read_only(point: str, flags: int) -> None:
    # MS_BIND with MS_REMOUNT changes this mount only, never the file system under it,
    # and the mount is our namespace's private copy: the parent's view stays writable.
    # The mount's other flags are kept: a user namespace may not clear locked ones.
    _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def setup_filesystem(settings: dict[str, Any]) -> list[tuple[str, int]]:
    """Make the whole tree read-only except a fresh tmpfs on the working directory, and hide
    home directories. Returns descriptors of the Python directories, opened in between."""
    for point, flags in _mounts():
        if os.path.isdir(point) or os.path.isfile(point):
            _remount_read_only(point, flags)
    fds = open_python_dirs()  # after the remount, so they too reach read-only mounts only
    workdir, uid = settings["workdir"], settings["uid"]
    masks = [m for m in settings["masks"] if os.path.isdir(m)]
    for mask in masks:
        _mount("none", mask, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=755")
    os.makedirs(workdir, exist_ok=True)  # inside a mask when the work dir lies under one
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    _mount("none", workdir, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={settings['disk_mb']}m,mode=700{owner}")
    for mask in masks:
        _remount_read_only(mask, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    return fds


def open_python_dirs() -> list[tuple[str, int]]:
    """(path, descriptor) of the directories on sys.path: the sandbox uid may not reach them."""
    return [(path, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            for path in sys.path if os.path.isdir(path)]


def reach_python_dirs(dirs: list[tuple[str, int]]) -> None:
    """After the drop: replace sys.path entries the sandbox can no longer list with their
    /proc/self/fd/N twins (a magic link skips the permission checks on the path above it),
    and do the same for the __path__ of packages already imported (e.g. encodings)."""
    swaps: dict[str, str] = {}
    kept = []
    for path, fd in dirs:
        try:
            os.listdir(path)
            kept.append(path)
            os.close(fd)
        except OSError:
            swaps[path] = f"/proc/self/fd/{fd}"
            kept.append(swaps[path])
    sys.path[:] = kept
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
    total = math.ceil(settings["cpu_total_s"])
    limit(resource.RLIMIT_CPU, min(total, math.ceil(settings["cpu_time_s"])), total)


def drop_privileges(uid: int | None) -> None:
    """Become the sandbox uid, or (root of a user namespace) lose every capability."""
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        # A uid change makes the process undumpable, which hides /proc/self/fd from it;
        # the Python directories are reached through there.
        _prctl(PR_SET_DUMPABLE, 1)
    elif os.geteuid() == 0:
        last = int(open("/proc/sys/kernel/cap_last_cap", encoding="ascii").read())
        for cap in range(last + 1):  # or exec() of any program would grant them again
            _prctl(PR_CAPBSET_DROP, cap)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable (x2): all empty
        _check(_libc.capset(header, data), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_supported() -> bool:
    """Whether install_seccomp() knows this machine's system call numbers."""
    return os.uname().machine in _SECCOMP_ARCH


def install_seccomp() -> bool:
    """Refuse socket() for every family but AF_UNIX (EACCES) and io_uring_setup (ENOSYS).
    Returns False on a machine whose syscall numbers we do not know."""
    arch = _SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return False
    audit_arch, socket_nr = arch
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny_net, deny_all = 0x7FFF0000, 0x00050000 | 13, 0x00050000 | 38  # ERRNO(EACCES), ERRNO(ENOSYS)
    program = [
        (ld, 0, 0, 4),                      # 0: arch
        (jeq, 0, 8, audit_arch),            # 1: another ABI (e.g. 32-bit calls) -> 10
        (ld, 0, 0, 0),                      # 2: syscall number
        (jge, 6, 0, 0x40000000),            # 3: x32 calls -> 10
        (jeq, 5, 0, _IO_URING_SETUP),       # 4: -> 10
        (jeq, 0, 2, socket_nr),             # 5: not socket() -> 8
        (ld, 0, 0, 16),                     # 6: low word of args[0], the address family
        (jeq, 0, 1, 1),                     # 7: AF_UNIX -> 8, else -> 9
        (ret, 0, 0, allow),                 # 8
        (ret, 0, 0, deny_net),              # 9
        (ret, 0, 0, deny_all),              # 10
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(c, t, f, k) for c, t, f, k in program])
    prog = _SockFprog(len(program), filters)
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
    return True



def start(settings: dict[str, Any]) -> None:
    """Everything between exec and the first cell (see the module docstring)."""
    sys.path.extend(p for p in settings["paths"] if p not in sys.path)  # site-packages
    if settings["mode"] == "namespaces":
        dirs = setup_filesystem(settings)
    else:
        dirs = open_python_dirs()
    set_limits(settings)
    drop_privileges(settings["uid"])
    if settings["seccomp"] and not install_seccomp():
        raise OSError(f"no seccomp filter for machine {os.uname().machine!r}")
    if settings["mode"] == "namespaces":
        # Die with unshare: the uid change cleared what its --kill-child set. (Not in process
        # mode: the parent there is our thread that started us, which may end any time; the
        # interpreter's watchdog thread notices the parent's death instead.)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    reach_python_dirs(dirs)
    os.chdir(settings["workdir"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file is an OSError, not death
