"""Layers without cycles (issue 14, part 2): the package import graph is acyclic, and the library's core
imports without the run-time tools (hydra, omegaconf, matplotlib, wandb) that only entry points,
plotting and logging need."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "bindspace"
CORE = [
    "bindspace",
    "bindspace.inference",
    "bindspace.models",
    "bindspace.modalities",
    "bindspace.losses",
    "bindspace.curriculum",
    "bindspace.evaluation",
    "bindspace.data",
    "bindspace.nn",
    "bindspace.errors",
    "bindspace.graph",
    "bindspace.datasets",
]
OPTIONAL_AT_RUN_TIME = ("hydra", "omegaconf", "matplotlib", "wandb")


def unit(module: str) -> str:
    """The layer a module belongs to: ``bindspace.<package or top-level module>``."""
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    """Layer -> layers its modules import at module level (imports inside functions are deferred on purpose)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith("bindspace") and unit(name) != unit(module):
                    graph.setdefault(unit(module), set()).add(unit(name))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [*path, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_package_import_graph_has_no_cycles():
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert not graph.get("bindspace.nn"), graph.get("bindspace.nn")  # the leaf of neural layers and trunks
    assert graph.get("bindspace.errors") is None and graph["bindspace.utils"] <= {"bindspace.errors"}
    assert graph["bindspace.graph"] <= {"bindspace.errors"}  # Edge and edge_key: below the registry
    # Benchmark builders write datasets; they do not load them (bindspace.data reads what they wrote).
    assert graph.get("bindspace.datasets", set()) <= {"bindspace.errors", "bindspace.utils"}


def test_the_checker_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_the_core_imports_without_the_run_time_tools():
    """With hydra, omegaconf, matplotlib and wandb made unimportable, every core package still imports."""
    blocked = "; ".join(f"sys.modules[{m!r}] = None" for m in OPTIONAL_AT_RUN_TIME)
    code = f"import sys; {blocked}\n" + "\n".join(f"import {m}" for m in CORE) + "\nprint('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_pyproject_lists_exactly_the_package_folders_and_config_groups():
    """setuptools ships what ``[tool.setuptools] packages`` lists: a folder left out is missing from the wheel
    (or warned about once per file), a listed folder that is gone breaks ``pip install``."""
    import tomllib

    root = PACKAGE.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    stale = set(setuptools.get("package-data", {})) - listed
    assert not stale, f"package-data names packages that are not listed: {sorted(stale)}"
    code = {
        ".".join(p.parent.relative_to(root).parts)
        for p in PACKAGE.rglob("*.py")
        if "configs" not in p.relative_to(PACKAGE).parts[:1]
    }
    groups = {
        ".".join(("bindspace", "configs", *p.parent.relative_to(root / "configs").parts))
        for p in (root / "configs").rglob("*.yaml")
    }
    assert listed == code | groups | {"bindspace.configs"}
    unshipped = {g for g in groups | {"bindspace.configs"} if "*.yaml" not in setuptools["package-data"].get(g, [])}
    assert not unshipped, f"config groups whose YAML the wheel would leave out: {sorted(unshipped)}"
