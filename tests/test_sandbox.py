"""The Python sandbox: functional behaviour, then one adversarial test per protected property.

Adversarial tests run under every isolation this machine offers ("auto", which is
"namespaces" where unshare works, and "process"); where a property is only promised with
namespaces or as root, the test asserts the documented fallback instead of skipping. After
each attack the parent must be healthy and no process of the sandbox may remain.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from score_distill.tools.sandbox import CellResult, Sandbox, SandboxConfig, cap_output, run_cells
from score_distill.tools.sandbox_uids import list_processes
from tests.sandbox_fixtures import MakeSandbox, isolation, make, protected  # noqa: F401 (fixtures)







def descendants() -> list[int]:
    """Live processes below this test process."""
    procs = [p for p in list_processes() if p.state not in ("Z", "X")]
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    out, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def sandbox_processes(sandbox: Sandbox, uid: int | None) -> list[int]:
    """Live processes of the sandbox: those of its uid, plus anything below us."""
    own = [p.pid for p in list_processes() if uid is not None and p.uid == uid and p.state not in ("Z", "X")]
    return sorted(set(own) | set(descendants()))


def assert_healthy_and_clean(sandbox: Sandbox) -> None:
    """After an attack: the sandbox still works, we can still start processes, and closing
    the sandbox leaves nothing of it running."""
    assert sandbox.run("print('still here')").output == "still here\n"
    assert subprocess.run(["true"]).returncode == 0
    uid = sandbox.uid
    sandbox.close()
    assert sandbox_processes(sandbox, uid) == []


# ---------------------------------------------------------------- functional


def test_state_persists_across_cells(make: MakeSandbox) -> None:
    sb = make()
    assert sb.run("x = 6 * 7\ndef double(v):\n    return 2 * v").error is None
    r = sb.run("print(double(x))")
    assert (r.output, r.error, r.timed_out, r.final_answer) == ("84\n", None, False, None)
    assert sb.history == ["x = 6 * 7\ndef double(v):\n    return 2 * v", "print(double(x))"]


def test_error_reports_type_message_and_model_lines_and_keeps_state(make: MakeSandbox) -> None:
    sb = make()
    sb.run("x = 1\ndef inv(v):\n    return 1 / v")
    r = sb.run("print('before')\ny = inv(0)")
    assert r.output == "before\n"
    assert r.error is not None and r.error.startswith("ZeroDivisionError: division by zero")
    assert "line 2: y = inv(0)" in r.error and "line 3 of an earlier step, in inv: return 1 / v" in r.error
    assert sb.run("1 +").error == "SyntaxError: invalid syntax (line 1)\n    1 +\n       ^"
    assert sb.run("print(x)").output == "1\n"  # earlier variables survive errors
    assert len(sb.history) == 2  # failed cells are not replayed


def test_final_answer_stops_the_cell(make: MakeSandbox) -> None:
    sb = make()
    r = sb.run("try:\n    final_answer(7 * 6)\nexcept Exception:\n    print('swallowed')\nprint('after')")
    assert (r.final_answer, r.output, r.error) == ("42", "", None)
    assert sb.run("final_answer([1, 'a'])").final_answer == "[1, 'a']"


def test_web_search_calls_the_parents_function(make: MakeSandbox) -> None:
    queries: list[str] = []

    def search(query: str) -> str:
        queries.append(query)
        if query == "boom":
            raise ConnectionError("backend down")
        return f"1. Result for {query}"

    sb = make(search=search)
    r = sb.run("hits = web_search('capital of France')\nprint(hits.upper())")
    assert r.output == "1. RESULT FOR CAPITAL OF FRANCE\n" and queries == ["capital of France"]
    err = sb.run("web_search('boom')").error
    assert err is not None and "ConnectionError: backend down" in err
    assert sb.run("print(len(hits))").output == f"{len('1. Result for capital of France')}\n"
    nosearch = make().run("web_search('x')").error
    assert nosearch is not None and "web_search is not available" in nosearch


def test_output_cap_keeps_head_and_tail() -> None:
    assert cap_output("0123456789", 4) == "01\n... [6 characters cut] ...\n89"
    results = run_cells(["print('A' * 500 + 'B' * 1000 + 'C' * 500)"], SandboxConfig(max_output_chars=100))
    out = results[0].output
    assert out == "A" * 50 + "\n... [1901 characters cut] ...\n" + "C" * 49 + "\n"


def test_replay_rebuilds_a_prefix(make: MakeSandbox) -> None:
    sb = make()
    sb.run("junk = 'from an earlier trajectory'")
    results = sb.replay(["a = 2", "b = a * 10\nprint(b)", "1 / 0"])
    assert [r.output for r in results] == ["", "20\n", ""]
    assert results[2].error == "ZeroDivisionError: division by zero"
    assert sb.history == ["a = 2", "b = a * 10\nprint(b)"]
    assert sb.run("print(a + b)").output == "22\n"
    err = sb.run("junk").error
    assert err is not None and err.startswith("NameError")


def test_many_sandboxes_side_by_side(make: MakeSandbox) -> None:
    boxes = [make() for _ in range(16)]

    def work(i: int) -> list[CellResult]:
        return [boxes[i].run(f"n = {i}"), boxes[i].run("import os\nprint(n * n, os.getcwd())")]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(work, range(16)))
    for i, (first, second) in enumerate(results):
        assert first.error is None and second.output == f"{i * i} {boxes[i].workdir}\n"
    assert len({b.workdir for b in boxes}) == 16
    if os.geteuid() == 0:
        assert len({b.uid for b in boxes}) == 16


def test_private_workdir_removed_on_close(make: MakeSandbox) -> None:
    sb = make()
    r = sb.run("import os\nopen('notes.txt', 'w').write('hi')\n"
               "print(os.environ['HOME'] == os.getcwd(), open('notes.txt').read())")
    assert r.output == "True hi\n"
    workdir = sb.workdir
    sb.close()
    assert not workdir.exists()
    sb.close()  # idempotent


def test_standard_library_and_site_packages_import(make: MakeSandbox) -> None:
    code = ("import math, fractions, json, decimal, itertools, collections, re, statistics, sympy\n"
            "print(fractions.Fraction(1, 3) + fractions.Fraction(1, 6), json.dumps({'a': math.isqrt(17)}),"
            " sympy.simplify('x + x'))")
    assert make().run(code).output == '1/2 {"a": 4} 2*x\n'
    stdlib_only = make(packages=[]).run("import sympy").error
    assert stdlib_only is not None and stdlib_only.startswith("ModuleNotFoundError")


def test_cpu_time_limit_stops_a_cell_and_keeps_state(make: MakeSandbox) -> None:
    sb = make(cpu_time_s=1, timeout_s=20)
    sb.run("kept = 'yes'")
    r = sb.run("while True:\n    pass")
    assert not r.timed_out and r.error is not None and r.error.startswith("CPUTimeLimitExceeded")
    assert sb.run("print(kept)").output == "yes\n"


def test_auto_falls_back_to_process_isolation_with_one_warning(
        make: MakeSandbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from score_distill.tools import sandbox as sandbox_module, sandbox_fallback

    monkeypatch.setattr(sandbox_fallback, "_namespaces_unusable", None)  # restored afterwards
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)  # no unshare here
    with pytest.raises(sandbox_module.SandboxError, match="unshare"):
        make(isolation="namespaces")
    boxes = [make(), make()]
    assert [b.isolation for b in boxes] == ["process", "process"]
    assert boxes[1].run("print(1 + 1)").output == "2\n"
    warnings = [r.getMessage() for r in caplog.records if "process isolation" in r.getMessage()]
    assert len(warnings) == 1 and "unshare" in warnings[0] and "lost" in warnings[0]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="isolation"):
        SandboxConfig(isolation="docker")
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig(timeout_s=0)


# ---------------------------------------------------------------- adversarial: one per property


def test_fork_bomb_is_contained(make: MakeSandbox, isolation: str) -> None:
    sb = make(isolation=isolation, timeout_s=1.5, max_processes=16)
    sb.run("kept = 1")
    r = sb.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert r.timed_out and r.error == "the step timed out after 1.5 s"
    assert sb.pid is None and sandbox_processes(sb, sb.uid) == []  # all of it killed at once
    polite = sb.run("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                    "            time.sleep(60)\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)")
    forked = int(polite.output.split()[0])
    assert 1 <= forked < 16 and polite.output.split()[1] == "11"  # EAGAIN at the process limit
    # Its children end with the step: only the interpreter remains (with namespaces, also
    # unshare and the namespace's pid 1); documented: without root, process mode keeps them.
    kept_children = forked if not protected(sb) else 0
    assert len(sandbox_processes(sb, sb.uid)) == (3 if sb.isolation == "namespaces" else 1 + kept_children)
    assert sb.run("print(kept)").output == "1\n"
    assert_healthy_and_clean(sb)


def test_memory_bomb_is_a_memory_error(make: MakeSandbox) -> None:
    sb = make(memory_mb=256)
    r = sb.run("hog = bytearray(2 ** 31)")
    assert r.error == "MemoryError (the interpreter may use at most 256 MB)"
    r = sb.run("hog = []\nwhile True:\n    hog.append(bytearray(10 ** 7))")
    assert r.error is not None and r.error.startswith("MemoryError")
    assert sb.run("n = len(hog)\ndel hog\nprint(n < 26)").output == "True\n"
    assert_healthy_and_clean(sb)


def test_infinite_loop_times_out_and_state_is_rebuilt(make: MakeSandbox) -> None:
    sb = make(timeout_s=1)
    sb.run("x = 41\nprint('replayed output must not show')")
    r = sb.run("import threading\ndef spin():\n    while True:\n        pass\n"
               "threading.Thread(target=spin, daemon=True).start()\nprint('spinning', flush=True)\nspin()")
    assert r.timed_out and r.output == "spinning\n" and 0.9 < r.duration_s < 5
    after = sb.run("x += 1\nprint(x)")
    assert (after.output, after.error) == ("42\n", None)  # rebuilt by replay; its output dropped
    assert sb.history == ["x = 41\nprint('replayed output must not show')", "x += 1\nprint(x)"]
    assert_healthy_and_clean(sb)


def test_huge_output_is_capped(make: MakeSandbox) -> None:
    sb = make(max_output_chars=1000)
    started = time.monotonic()
    r = sb.run("print('x' * 30_000_000)\nfor i in range(100_000):\n    print(i)")
    assert time.monotonic() - started < 20
    assert r.error is None and len(r.output) < 1100
    total = 30_000_001 + sum(len(str(i)) + 1 for i in range(100_000))
    assert r.output.startswith("x" * 500) and r.output.endswith("99998\n99999\n")
    assert f"[{total - 1000} characters cut]" in r.output
    # A thread that prints forever cannot hold the step, nor the next one.
    started = time.monotonic()
    r = sb.run("import threading\ndef spam():\n    while True:\n        print('y' * 100)\n"
               "threading.Thread(target=spam, daemon=True).start()")
    assert r.error is None and len(r.output) < 1100 and sb.run("z = 1").error is None
    assert time.monotonic() - started < 5
    sb.reset()  # the spammer goes with its interpreter
    assert_healthy_and_clean(sb)


def test_environment_secrets_do_not_reach_model_code(make: MakeSandbox, isolation: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-models")
    monkeypatch.setenv("SECRET", "hunter2-not-for-models")
    sb = make(isolation=isolation)
    code = (f"import os\nprint(sorted(os.environ))\nprint(os.environ.get('OPENAI_API_KEY'))\n"
            f"try:\n    print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
            f"except OSError as e:\n    print('blocked', type(e).__name__)")
    r = sb.run(code)
    assert r.error is None and "None" in r.output
    assert "OPENAI_API_KEY" not in r.output.split("\n")[0] and "SECRET" not in r.output.split("\n")[0]
    if protected(sb):
        assert "not-for-models" not in r.output and "blocked" in r.output
    else:  # documented: a same-uid child can read our /proc/<pid>/environ (as we started)
        assert "blocked" not in r.output and "PATH=" in r.output
    assert_healthy_and_clean(sb)


def test_network_is_unreachable(make: MakeSandbox, isolation: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    sb = make(isolation=isolation)
    r = sb.run(f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               f"    print('connected')\nexcept OSError as e:\n    print(type(e).__name__)\n"
               f"socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)")
    assert r.output == "PermissionError\n"
    assert r.error is not None and r.error.startswith("PermissionError")
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody knocked
    listener.close()
    local = sb.run("import socket\na, b = socket.socketpair()\na.send(b'ok')\nprint(b.recv(2))")
    assert local.output == "b'ok'\n"  # unix sockets between its own processes still work
    assert_healthy_and_clean(sb)


def test_writing_outside_the_workdir_fails(make: MakeSandbox, isolation: str, tmp_path: Path) -> None:
    ours = tmp_path / "ours"  # a directory of the parent's, outside the work dir
    ours.mkdir()
    world = Path("/tmp") / f"score-distill-test-{os.getpid()}-{isolation}"  # world-writable /tmp
    sb = make(isolation=isolation)
    targets = [ours / "x", world] + ([Path.cwd() / "pwned.txt"] if protected(sb) else [])
    code = "\n".join(f"try:\n    open({str(p)!r}, 'w').write('pwned')\n    print('wrote')\n"
                     f"except OSError as e:\n    print(type(e).__name__)" for p in targets)
    try:
        got = sb.run(code).output.split()
        if sb.isolation == "namespaces":  # read-only everywhere, even world-writable /tmp
            # not in its root at all (ENOENT), or a read-only directory on the way to its own
            # work dir or to an allow-listed package (EROFS)
            assert all(word in ("OSError", "FileNotFoundError") for word in got)
        elif sb.uid is not None:  # documented: its own uid, but world-writable places stay open
            assert got == ["PermissionError", "wrote", "PermissionError"] and world.read_text() == "pwned"
        else:  # documented: a process-isolated child of a normal user writes what we may write
            assert got == ["wrote", "wrote"]
        assert (ours / "x").exists() == (got[0] == "wrote") and not (Path.cwd() / "pwned.txt").exists()
    finally:
        world.unlink(missing_ok=True)
        (ours / "x").unlink(missing_ok=True)
    assert_healthy_and_clean(sb)


def test_model_code_cannot_kill_its_parent(make: MakeSandbox, isolation: str) -> None:
    sb = make(isolation=isolation)
    if not protected(sb):  # documented: same uid, so aim at a stand-in rather than at us
        stand_in = subprocess.Popen(["sleep", "60"])
        sb.run(f"import os, signal\nos.kill({stand_in.pid}, signal.SIGKILL)")
        assert stand_in.wait(timeout=5) == -signal.SIGKILL
        assert_healthy_and_clean(sb)
        return
    r = sb.run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)")
    assert r.error is not None and r.error.split(":")[0] in ("ProcessLookupError", "PermissionError")
    sb.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert os.getppid() > 0 and threading.main_thread().is_alive()  # we are here: not killed
    assert_healthy_and_clean(sb)


def test_nothing_outlives_a_parent_killed_mid_cell(isolation: str) -> None:
    script = ("import sys\nfrom score_distill.tools.sandbox import Sandbox, SandboxConfig\n"
              f"sb = Sandbox(SandboxConfig(isolation={isolation!r}, timeout_s=60))\n"
              "print(sb.uid, sb.pid, flush=True)\n"
              "sb.run(\"import subprocess\\nsubprocess.Popen(['sleep', '60'])\\nwhile True:\\n    pass\")\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    uid_text, pid_text = parent.stdout.readline().split()
    uid = None if uid_text == "None" else int(uid_text)
    time.sleep(0.5)  # let the cell start its child and spin
    parent.kill()  # SIGKILL: no close(), no __del__
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p.pid for p in list_processes() if p.state not in ("Z", "X")
                and (p.uid == uid or p.pid == int(pid_text))]
        if not left:
            break
        time.sleep(0.05)
    assert left == []


def test_os_exit_is_reported_and_state_rebuilt(make: MakeSandbox) -> None:
    sb = make()
    sb.run("x = 'before'")
    r = sb.run("import os\nprint('bye', flush=True)\nos._exit(3)")
    assert (r.output, r.error, r.timed_out) == ("bye\n", "the interpreter exited with code 3", False)
    assert sb.run("print(x)").output == "before\n"
    r = sb.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert r.error == "the interpreter died (signal 9, SIGKILL) (killed: out of memory or CPU time?)"
    assert sb.run("print(x)").output == "before\n"
    assert_healthy_and_clean(sb)


def test_deep_recursion(make: MakeSandbox) -> None:
    sb = make()
    sb.run("x = 'before'")
    r = sb.run("def down(n):\n    return down(n + 1)\ndown(0)")
    assert r.error is not None and r.error.startswith("RecursionError: maximum recursion depth exceeded")
    assert "[the line above repeated" in r.error
    # Past the recursion limit, C code overflows the stack: the interpreter dies, is rebuilt.
    r = sb.run("import sys, json\nsys.setrecursionlimit(10 ** 6)\nnest = []\n"
               "for _ in range(10 ** 5):\n    nest = [nest]\njson.dumps(nest)")
    assert r.error == "the interpreter died (signal 11, SIGSEGV)"
    assert sb.run("print(x)").output == "before\n"
    assert_healthy_and_clean(sb)


def test_segfault_through_ctypes(make: MakeSandbox) -> None:
    sb = make()
    sb.run("x = 'before'")
    r = sb.run("import ctypes\nctypes.string_at(0)")
    assert r.error == "the interpreter died (signal 11, SIGSEGV)" and not r.timed_out
    assert sb.run("print(x)").output == "before\n"
    assert_healthy_and_clean(sb)
