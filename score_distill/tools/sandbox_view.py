"""The file system a sandbox with namespaces sees: a root built for it, nothing else of the
host. Standard library only (imported by the child interpreter, which starts with `python -S`).

`build(settings)` runs in the child while it is still privileged pid 1 of fresh mount, pid
and IPC namespaces, before any model code. It mounts a small tmpfs as the new root and fills it:
- `expose`, bound read-only at their own paths: the system trees (/usr, /lib...: programs
  and shared libraries), a few files of /etc, the interpreter's library directory (its
  standard library), and each allow-listed package alone, not the site-packages around it;
- `hide`, covered by an empty tmpfs where they lie inside an exposed tree: every
  site-packages and dist-packages directory (an allow-listed package in one is bound again
  on top), our checkout, the model cache, home directories, the parent's working directory;
- /dev with null, zero, full, random and urandom only; /proc of its own pid namespace;
- the work dir and /dev/shm: two directories of one tmpfs of `disk_mb`, so that what model
  code stores in files, POSIX shared memory included, is bounded in total.
Then it moves into that root (pivot_root) and detaches the old one, so no path and no open
descriptor reaches the host's tree (/tmp, /root, /home, /work, run directories, caches),
and remounts every mount read-only except the two writable directories.

    >>> sorted(mount_flags("ro,nosuid,relatime") & f for f in (MS_RDONLY, MS_NOSUID, MS_NODEV))
    [0, 1, 2]
    >>> inside("/usr/lib/x", ["/usr"]), inside("/usrx", ["/usr"]), inside("/", ["/"])
    (True, False, True)
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any

# Linux constants (the same on x86_64 and aarch64).
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOSYMFOLLOW, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 256, 1024, 2048, 4096, 16384
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
MNT_DETACH = 2
_MOUNT_OPTION_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                       "nosymfollow": MS_NOSYMFOLLOW, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
                       "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}  # no libc wrapper
DEVICES = ("null", "zero", "full", "random", "urandom")
DEVICE_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"))
SHM = "/dev/shm"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def mount_flags(options: str) -> int:
    """The MS_* flags of a mount's per-mount options (field 6 of mountinfo)."""
    flags = 0
    for opt in options.split(","):
        flags |= _MOUNT_OPTION_FLAGS.get(opt, 0)
    return flags


def mounts() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) of every mount we can see, parents first."""
    seen, out = set(), []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            if point not in seen:
                seen.add(point)
                out.append((point, mount_flags(fields[5])))
    return out


def remount_read_only(point: str, flags: int) -> None:
    # MS_BIND with MS_REMOUNT changes this mount only, never the file system under it, and
    # the mount is our namespace's own: the parent's view stays as it was. The mount's other
    # flags are kept: a user namespace may not clear locked ones.
    mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def inside(path: str, trees: list[str]) -> bool:
    """Whether `path` is one of `trees` or lies below one."""
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in trees)


class _Root:
    """The new root under construction at `base`: what is shown, what is hidden."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.shown: list[tuple[str, str]] = []  # (real path, where it is bound)
        self.hidden: list[str] = []  # real paths

    def covered(self, real: str) -> bool:
        return inside(real, [r for r, _ in self.shown]) and not inside(real, self.hidden)

    def show(self, path: str, hops: int = 40) -> None:
        """Bind `path` read-only at its own path (a symbolic link: the link, then what it
        points to, link by link, as far as the kernel would follow them)."""
        path = os.path.normpath(path)
        real, target = os.path.realpath(path), self.base + path
        if not os.path.lexists(path):
            return
        if os.path.islink(path):
            link = os.readlink(path)
            if not self.covered(os.path.realpath(os.path.dirname(path))):  # else it shows already
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if not os.path.lexists(target):
                    os.symlink(link, target)
            if hops > 0:
                self.show(os.path.join(os.path.dirname(path), link), hops - 1)
            return
        if self.covered(real):
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        # Recursive: a user namespace may not bind a mount without the mounts locked under it.
        mount(path, target, None, MS_BIND | MS_REC)
        self.shown.append((real, target))

    def hide(self, path: str) -> None:
        """Cover `path` with an empty tmpfs if it lies strictly inside a shown tree."""
        real = os.path.realpath(path)
        trees = [(r, t) for r, t in self.shown if real != r and inside(real, [r])]
        if not trees or not os.path.isdir(real) or inside(real, self.hidden):
            return
        tree, target = max(trees, key=lambda rt: len(rt[0]))  # the innermost
        mount("none", target + real[len(tree):], "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=64k,mode=755")
        self.hidden.append(real)


def _devices(base: str) -> None:
    dev = base + "/dev"
    os.makedirs(dev + "/shm")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            os.close(os.open(f"{dev}/{name}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in DEVICE_LINKS:
        os.symlink(target, f"{dev}/{name}")


def _writable(base: str, settings: dict[str, Any]) -> None:
    """The work dir and /dev/shm: two directories of one tmpfs, bound in place."""
    store, uid = base + "/.store", settings["uid"]
    os.mkdir(store)
    mount("none", store, "tmpfs", MS_NOSUID | MS_NODEV, f"size={settings['disk_mb']}m,mode=700")
    for name, target in (("work", base + settings["workdir"]), ("shm", base + SHM)):
        os.mkdir(f"{store}/{name}", 0o700)
        if uid is not None:
            os.chown(f"{store}/{name}", uid, uid)
        os.makedirs(target, exist_ok=True)
        mount(f"{store}/{name}", target, None, MS_BIND)
    _check(_libc.umount2(store.encode(), MNT_DETACH), "umount the store")  # its two binds keep it
    os.rmdir(store)


def _pivot(base: str) -> None:
    """Make `base` the root and detach the old one (the sequence container runtimes use)."""
    old = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    new = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        _check(_libc.syscall(_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
        os.fchdir(old)  # the old root now lies over the new one, at "/"
        _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")
    finally:
        os.close(old)
        os.close(new)
    os.chdir("/")


def build(settings: dict[str, Any]) -> None:
    """Make the sandbox's root (see the module docstring) and move into it."""
    os.umask(0o022)
    base = settings["workdir"]  # an empty directory of ours: where the new root is made
    mount("none", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    root = _Root(base)
    expose = list(settings["expose"]) + [p for p in sys.path if os.path.isdir(p)] + ["/proc"]  # + the stdlib
    # Outer paths first: a tree is bound before what it hides, a hidden directory is covered
    # before an allow-listed package inside it is bound again (a stable sort: ties keep order).
    steps = [(root.show, p) for p in expose] + [(root.hide, h) for h in settings["hide"]]
    for step, path in sorted(steps, key=lambda s: len(os.path.realpath(s[1]))):
        step(path)
    _devices(base)
    _writable(base, settings)
    _pivot(base)
    for point, flags in mounts():
        if point not in (settings["workdir"], SHM) and (os.path.isdir(point) or os.path.isfile(point)):
            remount_read_only(point, flags)
