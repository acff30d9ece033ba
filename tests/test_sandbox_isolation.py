"""The sandbox against a student that looks for the answers, and against what escaped it
before: shared IPC, memory outside the address-space limit, ptrace and new namespaces.

Each attack runs under every isolation this machine offers ("auto": namespaces where unshare
works; "process"); where the module docstring documents a weaker fallback, the test asserts
that fallback exactly, so the docstring stays true.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from score_distill.tools import sandbox_paths, sandbox_seccomp
from score_distill.tools.sandbox import Sandbox, SandboxConfig
from score_distill.tools.sandbox_paths import PROJECT_ROOT
from tests.sandbox_fixtures import MakeSandbox, isolation, make, protected  # noqa: F401 (fixtures)

GOLD = "GOLD-ANSWER-7a1f"  # planted in every file a student must not read
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"






def run_ok(sandbox: Sandbox, code: str) -> str:
    r = sandbox.run(code)
    assert r.error is None, r.error
    return r.output


def probe(paths: list[str]) -> str:
    """Cell code printing, per path, what open() and os.listdir() gave (a word each)."""
    return ("import os\nfor p in %r:\n"
            "    try:\n        got = open(p, errors='replace').read() if os.path.isfile(p) else os.listdir(p)\n"
            "        print(p, 'READ', got)\n"
            "    except OSError as e:\n        print(p, 'DENIED', type(e).__name__)\n") % paths


# ---------------------------------------------------------------- no answers


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """A run directory (its task file, its teacher cache) and a model cache, outside the
    checkout, each holding the gold answer; world-readable, so that only the sandbox stands
    in the way of another uid."""
    top = Path(tempfile.mkdtemp(prefix="score-distill-answers-"))
    top.chmod(0o755)
    run = top / "runs" / "demo"
    (run / "tasks").mkdir(parents=True)
    (run / "teacher-cache").mkdir()
    task = run / "tasks" / "math-test.jsonl"
    task.write_text(json.dumps({"id": "m1", "question": "2+2?", "answer": GOLD}) + "\n")
    teacher = run / "teacher-cache" / "teacher_calls.jsonl"
    teacher.write_text(json.dumps({"key": "k", "text": GOLD}) + "\n")
    cache = top / "cache"
    (cache / "models" / "tiny").mkdir(parents=True)
    (cache / "models" / "tiny" / "config.json").write_text(GOLD)
    monkeypatch.setenv("SCORE_DISTILL_CACHE", str(cache))
    yield {"task": task, "teacher": teacher, "run": run, "model_cache": cache / "models",
           "model": cache / "models" / "tiny" / "config.json", "home": Path(os.path.expanduser("~")), "top": top}
    shutil.rmtree(top)


def test_student_cannot_import_our_package_or_read_answers(make: MakeSandbox, isolation: str,
                                                           answers: dict[str, Path]) -> None:
    sb = make(isolation=isolation)
    site = [p for p in sys.path if p.endswith("site-packages")]
    finders = [os.path.basename(f)[:-3] for s in site for f in glob.glob(f"{s}/__editable__*finder.py")]
    imports = run_ok(sb, "import sys\nfor attempt in range(3):\n"
                         "    try:\n"
                         "        if attempt == 1:\n            sys.path.insert(0, %r)\n"
                         "        if attempt == 2:\n            sys.path[:0] = %r\n"
                         "            for f in %r:\n                __import__(f).install()\n"
                         "        import score_distill.tasks\n        print('IMPORTED')\n"
                         "    except ImportError as e:\n        print(type(e).__name__)\n"
                         % (PROJECT_ROOT, site, finders)).split()
    # A Python of its own: the interpreter's site, .pth files and editable finder would run.
    spawned = run_ok(sb, "import subprocess, sys\ntry:\n    print(subprocess.run([sys.executable, '-c', "
                         "'import score_distill, json'], capture_output=True).returncode)\n"
                         "except OSError as e:\n    print(type(e).__name__)")
    paths = [str(answers[k]) for k in ("task", "teacher", "model", "run", "model_cache", "top")]
    ours = [f"{PROJECT_ROOT}/README.md", f"{PROJECT_ROOT}/score_distill/tasks", PROJECT_ROOT,
            f"/proc/{os.getpid()}/cwd", f"/proc/{os.getpid()}/root/{answers['task']}"]
    out = run_ok(sb, probe(paths + ours))
    if sb.isolation == "namespaces":
        assert imports == ["ModuleNotFoundError"] * 3 and spawned == "1\n"
        lines = out.splitlines()
        assert GOLD not in out and len(lines) == len(paths + ours)
        # The checkout shows at most the path down to the allow-listed packages of a venv in it.
        root_line = lines.pop(len(paths) + 2)
        assert root_line in (f"{PROJECT_ROOT} DENIED FileNotFoundError", f"{PROJECT_ROOT} READ ['.venv']")
        assert all(line.endswith(" DENIED FileNotFoundError") for line in lines), out
        # Nothing of the host's /tmp, home or /work shows: only the sandbox's own work dir.
        tops = run_ok(sb, "import os, json\nprint(json.dumps([os.listdir(os.path.dirname(os.getcwd())),"
                          " os.path.exists(%r), os.listdir('/')]))" % str(answers["home"] / ".cache"))
        beside, cache, top = json.loads(tops)
        # Beside the work dir: nothing, but for the path down to our interpreter and its
        # packages when they live in the same folder (a checkout and its venv under /tmp).
        ours = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.executable, *sys.path) if p]
        on_the_way = {q.relative_to(sb.workdir.parent).parts[0] for q in ours
                      if q.is_relative_to(sb.workdir.parent) and q != sb.workdir.parent}
        assert sb.workdir.name in beside and set(beside) <= {sb.workdir.name} | on_the_way, (beside, on_the_way)
        assert not cache
        assert not set(top) & {"home", "var", "opt", "srv", "mnt", "boot", "run", "sys", "media"}
        return
    # Documented fallback: sys.path is the standard library and the allow-list only, so the
    # plain import fails, but every file stays readable by path (or by uid, when root).
    assert imports[0] == "ModuleNotFoundError" and imports[1] == "IMPORTED"
    # (as root, its own uid may not even reach our interpreter, e.g. one under /root)
    assert spawned in (("0\n",) if sb.uid is None else ("0\n", "PermissionError\n"))
    if sb.uid is None:  # our uid: everything we can read, through our /proc entries too
        assert out.count(GOLD) == 4 and f"/proc/{os.getpid()}/cwd READ" in out
    else:  # its own uid: world-readable files (these are), not our /proc entries
        assert out.count(GOLD) == 3 and f"/proc/{os.getpid()}/cwd DENIED" in out


def test_only_allow_listed_packages_import(make: MakeSandbox, isolation: str) -> None:
    code = ("import importlib\nfor name in ['numpy', 'sympy', 'mpmath', 'yaml', 'pytest', 'torch']:\n"
            "    try:\n        importlib.import_module(name)\n        print(name, 'ok')\n"
            "    except ImportError:\n        print(name, 'no')\n")
    assert run_ok(make(isolation=isolation), code).split() == [
        "numpy", "ok", "sympy", "ok", "mpmath", "ok", "yaml", "no", "pytest", "no", "torch", "no"]
    assert run_ok(make(isolation=isolation, packages=["yaml"]), code).split()[1::2] == [
        "no", "no", "no", "ok", "no", "no"]
    for bad in (["score_distill"], ["numpy.linalg"], [""]):
        with pytest.raises(ValueError, match="SandboxConfig.packages"):
            SandboxConfig(packages=bad)


def test_site_directories_show_only_the_allow_list(make: MakeSandbox) -> None:
    sb = make()
    if sb.isolation != "namespaces":
        pytest.skip("namespaces are not usable here (process mode is tested above)")
    site = list(sandbox_paths._site_dirs())
    assert any(p in sys.path for p in site)
    out = run_ok(sb, "import os, json\nprint(json.dumps({p: sorted(os.listdir(p)) if os.path.isdir(p) else None"
                     " for p in %r}))" % site)
    for entries in json.loads(out).values():
        assert entries is None or set(entries) <= {"numpy", "numpy.libs", "sympy", "mpmath"}


# ---------------------------------------------------------------- IPC


# System V shared memory (48 MiB, written), left behind on purpose, and a POSIX one (a file
# in /dev/shm, as shm_open makes it).
SHM_CREATE = LIBC + ("libc.shmat.restype = ctypes.c_void_p\n"
                     "sid = libc.shmget(0x5D15, 48 << 20, 0o1666)\nprint(sid, ctypes.get_errno())\n"
                     "if sid >= 0:\n    addr = libc.shmat(sid, None, 0)\n    ctypes.memset(addr, 0x41, 48 << 20)\n"
                     "    libc.shmdt(ctypes.c_void_p(addr))\n"
                     "    os.close(os.open('/dev/shm/sd-test-shm', os.O_CREAT | os.O_RDWR, 0o600))\n")
SHM_LOOK = LIBC + ("libc.shmat.restype = ctypes.c_ssize_t\n"
                   "print(libc.shmget(0x5D15, 0, 0), ctypes.get_errno(), libc.shmat(%d, None, 0), ctypes.get_errno(),"
                   " os.listdir('/dev/shm'))")


def host_shm_keys() -> set[int]:
    with open("/proc/sysvipc/shm", encoding="ascii") as f:
        return {int(line.split()[0]) for line in f.readlines()[1:]}


def ipc_namespaces() -> set[str]:
    out = set()
    for ns in glob.glob("/proc/[0-9]*/ns/ipc"):
        try:
            out.add(os.readlink(ns))
        except OSError:
            continue
    return out


def test_ipc_dies_with_its_sandbox_and_is_invisible_to_others(make: MakeSandbox, isolation: str) -> None:
    first, second = make(isolation=isolation), make(isolation=isolation)
    out = run_ok(first, SHM_CREATE).split()
    if first.isolation == "process":  # documented: no IPC namespace, so System V IPC is refused
        assert out == ["-1", str(errno.EPERM)]
        return
    sid = int(out[0])
    assert sid >= 0 and 0x5D15 not in host_shm_keys() and not os.path.exists("/dev/shm/sd-test-shm")
    assert first.pid is not None
    namespace = os.readlink(f"/proc/{first.pid}/ns/ipc")
    assert namespace in ipc_namespaces() and namespace != os.readlink("/proc/self/ns/ipc")
    seen = run_ok(second, SHM_LOOK % sid)
    assert seen == f"-1 {errno.ENOENT} -1 {errno.EINVAL} []\n"  # no key, no id, empty /dev/shm
    first.close()
    assert namespace not in ipc_namespaces()  # its segments went with it
    assert 0x5D15 not in host_shm_keys()


# ---------------------------------------------------------------- memory


def shmem_mb() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Shmem:")) / 1024


def test_memory_outside_the_address_space_is_bounded(make: MakeSandbox, isolation: str) -> None:
    sb = make(isolation=isolation, memory_mb=128, disk_mb=32)
    fill = run_ok(sb, "import os\ntry:\n    fd = os.memfd_create('hog')\n"
                      "    for _ in range(672):\n        os.write(fd, b'x' * (1 << 20))\n    print('held')\n"
                      "except OSError as e:\n    print(e.errno)")
    assert fill == f"{errno.ENOSYS}\n"
    if sb.isolation != "namespaces":  # documented: the host's /dev/shm and /tmp are not bounded
        return
    before = shmem_mb()
    # Files of the work dir and of /dev/shm share one tmpfs of disk_mb; System V shared
    # memory is capped at disk_mb in all.
    code = ("import os\nchunk = b'y' * (1 << 20)\nwritten = 0\n"
            "for path in ('big', '/dev/shm/big'):\n    try:\n        with open(path, 'wb') as f:\n"
            "            for _ in range(24):\n                f.write(chunk)\n                f.flush()\n"
            "                written += 1\n    except OSError as e:\n        print(path, e.errno)\n"
            "print(written)\n") + LIBC + (
            "print(libc.shmget(0, 33 << 20, 0o1600), ctypes.get_errno())\n"
            "ids = [libc.shmget(0, 12 << 20, 0o1600) for _ in range(3)]\nprint(ids[2], ctypes.get_errno())")
    lines = run_ok(sb, code).splitlines()
    assert lines[0] == f"/dev/shm/big {errno.ENOSPC}" and int(lines[1]) <= 32
    assert lines[2:] == [f"-1 {errno.EINVAL}", f"-1 {errno.ENOSPC}"]  # over shmmax; over shmall
    assert shmem_mb() - before > 24
    sb.close()
    deadline = time.monotonic() + 5
    while shmem_mb() - before > 8 and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel frees a namespace's mounts as its last process goes
    assert shmem_mb() - before < 8  # nothing of it is held after close


# ---------------------------------------------------------------- seccomp


def test_no_process_of_the_sandbox_can_trace_or_steer_another(make: MakeSandbox, isolation: str) -> None:
    sb = make(isolation=isolation)
    code = LIBC + (
        "import time\nchild = os.fork()\nif child == 0:\n    time.sleep(30)\n    os._exit(0)\n"
        "class iovec(ctypes.Structure):\n    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]\n"
        "buf = ctypes.create_string_buffer(8)\nv = iovec(ctypes.cast(buf, ctypes.c_void_p), 8)\n"
        "for pid in (1, child):\n"
        "    print(libc.ptrace(16, pid, None, None), ctypes.get_errno(),\n"  # PTRACE_ATTACH
        "          libc.process_vm_readv(pid, ctypes.byref(v), 1, ctypes.byref(v), 1, 0), ctypes.get_errno())\n"
        "print(libc.ptrace(0, 0, None, None), ctypes.get_errno())\n"  # PTRACE_TRACEME
        "try:\n    open('/proc/1/mem', 'rb')\n    print('opened')\nexcept OSError as e:\n    print(e.errno)\n"
        "os.kill(child, 9)\nos.waitpid(child, 0)")
    lines = run_ok(sb, code).splitlines()
    eperm = str(errno.EPERM)
    assert lines[:3] == [f"-1 {eperm} -1 {eperm}"] * 2 + [f"-1 {eperm}"]
    if sb.isolation == "namespaces":  # its pid 1 is undumpable (in process mode pid 1 is init)
        assert lines[3] == str(errno.EACCES)


def test_no_new_namespaces(make: MakeSandbox, isolation: str) -> None:
    sb = make(isolation=isolation)
    new_user, sigchld = 0x10000000, 17
    code = LIBC + (
        f"print(libc.unshare({new_user}), ctypes.get_errno())\n"
        f"print(libc.unshare(0x00020000), ctypes.get_errno())\n"  # CLONE_NEWNS
        f"print(libc.syscall({sandbox_seccomp._NUMBERS['clone'][0]}, {new_user | sigchld}, 0, 0, 0, 0), "
        f"ctypes.get_errno())\n"
        f"print(libc.syscall(435, 0, 0), ctypes.get_errno())\n"  # clone3: ENOSYS, libc falls back
        f"print(libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), ctypes.get_errno())\n"
        "import subprocess, threading\nt = threading.Thread(target=print, args=('thread',))\nt.start()\nt.join()\n"
        "print(subprocess.run(['unshare', '--user', 'true'], capture_output=True).returncode != 0)\n"
        "import numpy\nprint(numpy.ones(4).sum())")
    eperm, enosys = errno.EPERM, errno.ENOSYS
    assert run_ok(sb, code).splitlines() == [f"-1 {eperm}", f"-1 {eperm}", f"-1 {eperm}", f"-1 {enosys}",
                                            f"-1 {eperm}", "thread", "True", "4.0"]


def test_kernel_interfaces_the_sandbox_does_not_need_are_refused(make: MakeSandbox, isolation: str) -> None:
    sb = make(isolation=isolation)
    calls = ["keyctl", "add_key", "bpf", "perf_event_open", "userfaultfd", "kexec_load", "init_module",
             "pidfd_getfd", "kcmp", "personality", "syslog", "fsopen", "open_tree"]
    numbers = [sandbox_seccomp._NUMBERS[name][0 if os.uname().machine == "x86_64" else 1] for name in calls]
    # Arguments that would make each call do something (syslog: read the kernel log).
    code = LIBC + ("buf = ctypes.create_string_buffer(4096)\n"
                   "for nr in %r:\n    r = libc.syscall(nr, 3 if nr == %d else 0, buf, 4096, 0, 0)\n"
                   "    print(r, ctypes.get_errno())\n") % (numbers, numbers[calls.index("syslog")])
    assert run_ok(sb, code).splitlines() == [f"-1 {errno.EPERM}"] * len(calls)


def run_bpf(program: list[tuple[int, int, int, int]], arch: int, nr: int, arg0: int = 0) -> int:
    """Classic BPF as the kernel runs a seccomp filter (the subset the filter uses)."""
    data = {0: nr, 4: arch, 16: arg0}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code == sandbox_seccomp.LD:
            acc, pc = data[k], pc + 1
            continue
        if code == sandbox_seccomp.RET:
            return k
        taken = {sandbox_seccomp.JEQ: acc == k, sandbox_seccomp.JGE: acc >= k,
                 sandbox_seccomp.JSET: bool(acc & k)}[code]
        pc += 1 + (jt if taken else jf)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_seccomp_program_decides_each_call_as_documented(machine: str) -> None:
    arch = sandbox_seccomp._AUDIT_ARCH[machine]
    column = 0 if machine == "x86_64" else 1
    nr = {name: numbers[column] for name, numbers in sandbox_seccomp._NUMBERS.items()}
    eperm, enosys = 0x50000 | errno.EPERM, 0x50000 | errno.ENOSYS
    allow = sandbox_seccomp.ALLOW
    for deny_ipc in (False, True):
        program = sandbox_seccomp.build_program(machine, deny_ipc)
        assert len(program) < 256  # every jump stays within reach
        for name, number in nr.items():
            if name in ("socket", "clone"):
                continue
            expected = enosys if name in sandbox_seccomp._NOT_IMPLEMENTED else eperm
            if name in ("shmget", "msgget", "semget", "mq_open") and not deny_ipc:
                expected = allow
            assert run_bpf(program, arch, number) == expected, name
        assert run_bpf(program, arch, nr["socket"], 1) == allow  # AF_UNIX
        assert run_bpf(program, arch, nr["socket"], 2) == 0x50000 | errno.EACCES  # AF_INET
        assert run_bpf(program, arch, nr["clone"], 0x003D0F00) == allow  # a thread (CLONE_VM|...)
        assert run_bpf(program, arch, nr["clone"], 0x01200011) == allow  # fork()
        assert run_bpf(program, arch, nr["clone"], 0x10000011) == eperm  # CLONE_NEWUSER
        assert run_bpf(program, arch, 0 if machine == "x86_64" else 63) == allow  # read()
        assert run_bpf(program, arch ^ 1, nr["clone"]) == enosys  # another ABI
        assert run_bpf(program, arch, 0x40000000 + 56) == enosys  # x32
