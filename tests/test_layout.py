"""The package layout: imports point down the stage order, never in a cycle, and private names
stay inside their package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import relevance_lens

ROOT = Path(relevance_lens.__file__).parent
#: The stages in pipeline order: a module may import its own stage and the ones before it.
STAGES = {
    "__init__": 0, "errors": 0, "provenance": 0, "faults": 0, "quiet": 0,
    "store": 1, "locks": 1, "threads": 1, "evaluate": 2, "data": 3,
    "model": 4,
    "score": 5, "train": 6, "export": 7, "dissect": 7, "study": 8, "report": 9, "api": 10, "demo": 10, "cli": 11,
    "__main__": 12,
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every relevance_lens import, at any depth."""
    found = []
    is_package = MODULES[module].name == "__init__.py"
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("relevance_lens")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if not base.startswith("relevance_lens"):
                continue
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            found += [(m, [], node.lineno) for m in submodules]
            rest = [n for n in names if f"{base}.{n}" not in MODULES]
            if rest:
                found.append((base, rest, node.lineno))
    return found


GRAPH = {m: sorted({target for target, _, _ in imports(m) if target in MODULES and target != m}) for m in MODULES}


def test_every_module_belongs_to_a_declared_stage():
    assert sorted({stage(m) for m in MODULES} - set(STAGES)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_stage_order(module):
    upward = [
        f"{MODULES[module].name}:{line} imports {target} ({stage(target)} comes after {stage(module)})"
        for target, _, line in imports(module)
        if STAGES[stage(target)] > STAGES[stage(module)]
    ]
    assert upward == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_crosses_a_package_boundary(module):
    crossing = [
        f"{MODULES[module].name}:{line} takes {name} from {target}"
        for target, names, line in imports(module)
        for name in names
        if name.startswith("_") and not name.startswith("__") and stage(target) != stage(module)
    ]
    assert crossing == []


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first search (each reported once, from its first node)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles():
    # A package's __init__ re-exports its modules; a module importing its own package would close a loop.
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("package", sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()))
def test_each_stage_says_what_it_does_and_may_import(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert len(doc.split()) >= 15 and "import" in doc
