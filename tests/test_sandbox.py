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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import pytest

from score_distill.tools.sandbox import CellResult, Sandbox, SandboxConfig, cap_output, run_cells
from score_distill.tools.sandbox_process import list_processes

MakeSandbox = Callable[..., Sandbox]


@pytest.fixture
def make() -> Iterator[MakeSandbox]:
    """Sandboxes built from SandboxConfig keywords, all closed at the end of the test."""
    made: list[Sandbox] = []

    def build(search: Callable[[str], str] | None = None, **config: object) -> Sandbox:
        sandbox = Sandbox(SandboxConfig(**config), search=search)  # type: ignore[arg-type]
        made.append(sandbox)
        return sandbox

    yield build
    for sandbox in made:
        sandbox.close()


@pytest.fixture(params=["auto", "process"])
def isolation(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def protected(sandbox: Sandbox) -> bool:
    """Whether model code runs apart from us (own pid namespace or own uid), as documented."""
    return sandbox.isolation == "namespaces" or sandbox.uid is not None


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
    r = sb.run("import os\nopen('notes.txt', 'w').write('hi')\nprint(os.environ['HOME'] == os.getcwd(), open('notes.txt').read())")
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
    stdlib_only = make(site_packages=False).run("import sympy").error
    assert stdlib_only is not None and stdlib_only.startswith("ModuleNotFoundError")


def test_cpu_time_limit_stops_a_cell_and_keeps_state(make: MakeSandbox) -> None:
    sb = make(cpu_time_s=1, timeout_s=20)
    sb.run("kept = 'yes'")
    r = sb.run("while True:\n    pass")
    assert not r.timed_out and r.error is not None and r.error.startswith("CPUTimeLimitExceeded")
    assert sb.run("print(kept)").output == "yes\n"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="isolation"):
        SandboxConfig(isolation="docker")
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
