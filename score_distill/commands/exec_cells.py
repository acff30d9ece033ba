"""`score-distill exec`: run code cells in one sandbox session, JSON in, JSON out.

    echo '["x = 6 * 7", "print(x)"]' | score-distill exec --timeout-s 5
    [{"output": "", "error": null, "timed_out": false}, {"output": "42\\n", "error": null, "timed_out": false}]

stdin holds a JSON list of strings (the cells); they run in order in one interpreter, with
the limits of `SandboxConfig` (every field is a flag). stdout gets one object per cell, plus
"final_answer" for a cell that called final_answer(x). Bad input: a message on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from score_distill.config import add_arguments as add_config_arguments
from score_distill.config import apply_overrides, overrides_from_args

HELP = "run code cells (a JSON list of strings on stdin) in the sandbox; print their results as JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Imported here: the sandbox module is light, but the CLI builds every sub-command's
    # parser, and this keeps `score-distill --help` from loading it at all.
    from score_distill.tools.sandbox import SandboxConfig

    add_config_arguments(parser, SandboxConfig)


def read_cells(text: str) -> list[str]:
    """The cells in `text`, or ValueError saying what is wrong with it.

    >>> read_cells('["a = 1", "print(a)"]')
    ['a = 1', 'print(a)']
    >>> read_cells('{"a": 1}')
    Traceback (most recent call last):
    ...
    ValueError: stdin must hold a JSON list of strings (the cells), got a dict
    """
    try:
        cells = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"stdin is not JSON: {exc}") from None
    if not isinstance(cells, list):
        raise ValueError(f"stdin must hold a JSON list of strings (the cells), got a {type(cells).__name__}")
    for i, cell in enumerate(cells):
        if not isinstance(cell, str):
            raise ValueError(f"cell {i} is not a string but {type(cell).__name__}")
    return cells


def run(args: argparse.Namespace) -> int:
    from score_distill.tools.sandbox import Sandbox, SandboxConfig

    try:
        config = apply_overrides(SandboxConfig(), overrides_from_args(args, SandboxConfig))
        cells = read_cells(sys.stdin.read())
    except ValueError as exc:
        print(f"score-distill exec: {exc}", file=sys.stderr)
        return 2
    results = []
    with Sandbox(config) as sandbox:
        for code in cells:
            r = sandbox.run(code)
            item: dict[str, object] = {"output": r.output, "error": r.error, "timed_out": r.timed_out}
            if r.final_answer is not None:
                item["final_answer"] = r.final_answer
            results.append(item)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0
