"""`score-distill exec`: run code cells in one sandbox session, JSON in, JSON out.

    echo '["x = 6 * 7", "print(x)"]' | score-distill exec --timeout-s 5
    [{"output": "", "error": null, "timed_out": false}, {"output": "42\\n", "error": null, "timed_out": false}]

stdin holds a JSON list of strings (the cells); they run in order in one interpreter, with
the limits of `SandboxConfig` (every field is a flag). stdout gets one object per cell, plus
"final_answer" for a cell that called final_answer(x). Bad input (stdin that is not UTF-8, not
a JSON list of strings, a flag value out of range): one line on stderr, exit 2, nothing run. A
sandbox that cannot start: one line on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from score_distill.config import add_arguments as add_config_arguments
from score_distill.config import UsageError, apply_overrides, overrides_from_args

HELP = "run code cells (a JSON list of strings on stdin) in the sandbox; print their results as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Imported here: the sandbox module is light, but the CLI builds every sub-command's
    # parser, and this keeps `score-distill --help` from loading it at all.
    from score_distill.tools.sandbox import SandboxConfig

    add_config_arguments(parser, SandboxConfig)


def decode_stdin(data: bytes) -> str:
    """stdin's bytes as text: strict UTF-8 (a byte that is not would reach model code as a
    lone surrogate, which no interpreter can compile).

    >>> decode_stdin(b'["print(1)"]')
    '["print(1)"]'
    >>> decode_stdin(b'["\\xff"]')
    Traceback (most recent call last):
    ...
    score_distill.config.UsageError: stdin is not valid UTF-8: byte 0xff at offset 2
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"stdin is not valid UTF-8: byte {data[exc.start]:#04x} at offset {exc.start}") from None


def read_cells(text: str) -> list[str]:
    """The cells in `text`, or UsageError saying what is wrong with it.

    >>> read_cells('["a = 1", "print(a)"]')
    ['a = 1', 'print(a)']
    >>> read_cells('{"a": 1}')
    Traceback (most recent call last):
    ...
    score_distill.config.UsageError: stdin must hold a JSON list of strings (the cells), got a dict
    """
    try:
        cells = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UsageError(f"stdin is not JSON: {exc}") from None
    if not isinstance(cells, list):
        raise UsageError(f"stdin must hold a JSON list of strings (the cells), got a {type(cells).__name__}")
    for i, cell in enumerate(cells):
        if not isinstance(cell, str):
            raise UsageError(f"cell {i} is not a string but {type(cell).__name__}")
        try:
            cell.encode("utf-8")
        except UnicodeEncodeError as exc:  # a JSON escape such as "\udcff": no character, no code
            raise UsageError(f"cell {i} holds a lone surrogate ({cell[exc.start]!r}) at position "
                             f"{exc.start}: not text") from None
    return cells


def run(args: argparse.Namespace) -> int:
    from score_distill.tools.sandbox import Sandbox, SandboxConfig, SandboxError

    # UsageErrors go up to the command line's handler: one line, exit 2.
    config = apply_overrides(SandboxConfig(), overrides_from_args(args, SandboxConfig))
    cells = read_cells(decode_stdin(sys.stdin.buffer.read()))
    results = []
    try:
        sandbox = Sandbox(config)
    except SandboxError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"score-distill exec: the sandbox could not start: {first}", file=sys.stderr)
        return 1
    with sandbox:
        for code in cells:
            r = sandbox.run(code)
            item: dict[str, object] = {"output": r.output, "error": r.error, "timed_out": r.timed_out}
            if r.final_answer is not None:
                item["final_answer"] = r.final_answer
            results.append(item)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0
