"""The package's imports follow the data's one way through the method: tasks -> rollout ->
teacher -> records -> training sets -> trainer -> evaluation -> report. Read from the source
(every import, those inside functions included; type-only imports aside), so a new import
that points backwards fails here, not in a reader's head."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "score_distill"

# The method's stages in order; every other module is below them all. A module may import
# modules of its own layer or an earlier one, never a later one.
# The teacher audit's report is an evaluation (of the teacher): it reads the metrics.
LAYERS = [("stages.bc",), ("stages.mps",), ("stages.split",), ("train", "verl_adapter"),
          ("evaluate", "metrics", "teachers.audit_report"), ("report",), ("pipeline",), ("commands", "cli", "__main__")]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The package modules `path` imports, without the score_distill prefix."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        out |= {n.removeprefix("score_distill.") for n in names if n and n.startswith("score_distill.")}
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return -1


def test_no_module_imports_a_later_stage() -> None:
    backwards = sorted(f"{m} -> {d}" for m, deps in graph().items() for d in deps if layer(d) > layer(m))
    assert backwards == []


def test_the_import_graph_has_no_circle() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("circle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for d in sorted(edges.get(m, ())):
            visit(d, path + [m])
        done.add(m)

    for m in sorted(edges):
        visit(m, [])


def test_the_engines_and_tools_do_not_import_the_agent_or_the_method() -> None:
    """The model backends and the sandbox are below the agent: they know nothing of the
    CodeAct prompt or of the stages that use them."""
    edges = graph()
    for m, deps in edges.items():
        if m.startswith(("models", "tools")):
            assert not {d for d in deps if d.startswith(("agent", "teachers", "stages", "train"))}, m


def test_the_checker_sees_a_backward_import(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from score_distill.train.sft import train_sft\n"
                      "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from score_distill.pipeline import RunConfig\n")
    assert imports(source) == {"train.sft"}
    assert layer("train.sft") > layer("stages.split") > layer("stages.bc") > layer("types")


def test_the_readme_layout_names_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    named = {line.split()[0].rstrip(",") for line in layout.splitlines() if line.startswith("  ") and line.split()}
    named |= {"cli.py", "__main__.py"} if "cli.py, __main__.py" in layout else set()
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - named) == []
