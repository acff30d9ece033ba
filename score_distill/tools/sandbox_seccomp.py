"""The sandbox's seccomp filter: the system calls model code may not make. Standard library
only (imported by the child interpreter, which starts with `python -S`).

    refused (EPERM unless said)          why
    -----------------------------------  ----------------------------------------------------
    socket() of any family but AF_UNIX   no network (EACCES)
    io_uring_setup (ENOSYS)              io_uring could open sockets without socket()
    clone() with a CLONE_NEW* flag,      no new namespaces: a user namespace would give a
      unshare, setns                       process every capability inside it
    clone3 (ENOSYS)                      its flags sit in memory a filter cannot read; libc
                                           then falls back to clone(), which is checked
    ptrace, process_vm_readv/writev,     no reading or steering another process of the
      kcmp, pidfd_getfd                    sandbox (its pid 1 included)
    memfd_create, memfd_secret (ENOSYS)  memory outside the address-space limit
    io_setup (ENOSYS)                    kernel AIO contexts come from one machine-wide pool
    mount, umount2, pivot_root, chroot,  the file-system view stays as it was built
      open_tree(_attr), move_mount,
      fsopen, fsconfig, fsmount, fspick,
      mount_setattr
    keyctl, add_key, request_key         kernel keyrings are shared beyond the sandbox
    bpf, perf_event_open, userfaultfd    big kernel attack surface, never needed
    kexec_*, init/finit/delete_module,   privileged (they fail anyway); refused before any
      acct, swapon/off, reboot, quotactl,  kernel code looks at them
      syslog, personality, move_pages,
      migrate_pages, name_to_handle_at,
      open_by_handle_at, fanotify_init
    shmget, msgget, semget, mq_open      only where no IPC namespace bounds and removes
                                           them (`deny_ipc`: process isolation)

Every other call is allowed; every call of another ABI of the machine (32-bit, x32) fails
with ENOSYS. Threads and fork() use clone() without namespace flags, so they work. What stays
open, on purpose: files and directories (what the mount namespace or the uid lets it reach),
AF_UNIX sockets and socketpairs, pipes, fork, exec and threads, signals to processes it may
signal, mmap and mprotect (executable memory included: Python's ctypes needs it), ioctl on
its own descriptors, prctl and seccomp (they only narrow), setrlimit (soft limits up to the
hard ones), inotify (per-user instance limits, which are ours without root), System V IPC and
POSIX message queues where an IPC namespace bounds and removes them, and every call that
needs a capability the sandbox does not have.

    >>> program = build_program("x86_64", deny_ipc=False)
    >>> len(program), program[-1] == (RET, 0, 0, ALLOW)
    (111, True)
"""

from __future__ import annotations

import ctypes
import errno
import os

# name -> (x86_64 number, aarch64 number)
_NUMBERS = {
    "socket": (41, 198), "clone": (56, 220), "clone3": (435, 435), "io_uring_setup": (425, 425),
    "io_setup": (206, 0),
    "memfd_create": (319, 279), "memfd_secret": (447, 447),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "pidfd_getfd": (438, 438), "unshare": (272, 97), "setns": (308, 268),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442), "open_tree_attr": (467, 467),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "acct": (163, 89), "swapon": (167, 224),
    "swapoff": (168, 225), "reboot": (169, 142), "quotactl": (179, 60), "syslog": (103, 116),
    "personality": (135, 92), "move_pages": (279, 239), "migrate_pages": (256, 238),
    "name_to_handle_at": (303, 264), "open_by_handle_at": (304, 265), "fanotify_init": (300, 262),
    "shmget": (29, 194), "msgget": (68, 186), "semget": (64, 190), "mq_open": (240, 180),
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_NOT_IMPLEMENTED = ("io_uring_setup", "io_setup", "clone3", "memfd_create", "memfd_secret")
_IPC = ("shmget", "msgget", "semget", "mq_open")
_SPECIAL = ("socket", "clone")  # decided by an argument
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (CLONE_NEWTIME is clone3's only)
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
AF_UNIX = 1

LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|{JEQ,JGE,JSET}|K, BPF_RET|K
ALLOW = 0x7FFF0000
_ERRNO = 0x00050000  # SECCOMP_RET_ERRNO | errno
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
# offsets in struct seccomp_data: the call's number, its ABI, the low word of its first argument
_NR, _ARCH, _ARG0 = 0, 4, 16


def supported() -> bool:
    """Whether this machine's system call numbers are known here."""
    return os.uname().machine in _AUDIT_ARCH


def build_program(machine: str, deny_ipc: bool) -> list[tuple[int, int, int, int]]:
    """The BPF program as (code, jump if true, jump if false, constant) instructions."""
    column = 0 if machine == "x86_64" else 1
    nr = {name: numbers[column] for name, numbers in _NUMBERS.items()}
    enosys, eperm = _ERRNO | errno.ENOSYS, _ERRNO | errno.EPERM
    program = [
        (LD, 0, 0, _ARCH),
        (JEQ, 1, 0, _AUDIT_ARCH[machine]),
        (RET, 0, 0, enosys),                 # another ABI (e.g. 32-bit calls)
        (LD, 0, 0, _NR),
        (JGE, 0, 1, 0x40000000),
        (RET, 0, 0, enosys),                 # x32 calls
    ]
    for name in nr:
        if name in _SPECIAL or (name in _IPC and not deny_ipc):
            continue
        program += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, enosys if name in _NOT_IMPLEMENTED else eperm)]
    program += [
        (JEQ, 0, 4, nr["socket"]),
        (LD, 0, 0, _ARG0),                   # the address family
        (JEQ, 0, 1, AF_UNIX),
        (RET, 0, 0, ALLOW),
        (RET, 0, 0, _ERRNO | errno.EACCES),
        (JEQ, 0, 4, nr["clone"]),
        (LD, 0, 0, _ARG0),                   # the flags (the first argument on both machines)
        (JSET, 0, 1, CLONE_NEW_FLAGS),
        (RET, 0, 0, eperm),
        (RET, 0, 0, ALLOW),
        (RET, 0, 0, ALLOW),
    ]
    return program


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def install(deny_ipc: bool) -> bool:
    """Load the filter into this process (inherited by all it starts; no_new_privs must be
    set). Returns False on a machine whose system call numbers are not known here."""
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        return False
    program = build_program(machine, deny_ipc)
    filters = (_SockFilter * len(program))(*[_SockFilter(*instruction) for instruction in program])
    prog = _SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {os.strerror(err)}")
    return True
