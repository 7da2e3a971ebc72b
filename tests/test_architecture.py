"""The architecture rules of issue #9, checked statically on the source: no module is imported to check.

The import graph of the project's packages (lm, tasks, flows, forja) is read with `ast` from every
`.py` file under them, modules and packages alike (`tasks/clean/__init__.py` is the module
`tasks.clean`). Every import statement counts, the ones inside functions too: a deferred import still
ties two modules together, it only moves the failure to run time. Imports under `if TYPE_CHECKING:`
do not count, since they never run.

The rules:
- no import cycle between modules;
- `lm` is pure torch + numpy + sentencepiece: it imports nothing of Prefect, MLflow, DuckDB, pyarrow,
  pydantic, nor of forja, tasks or flows;
- `forja.cli` is a leaf: the entry point, which no module imports (`python -m forja.cli` in a
  subprocess is not an import);
- `tasks` imports nothing of flows, forja or Prefect: a task is plain code that a flow orchestrates.

The first tests run the checker on small made-up trees, to show that each rule does fail.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lm", "tasks", "flows", "forja")

LM_FORBIDDEN = ("prefect", "mlflow", "duckdb", "pyarrow", "pydantic", "forja", "tasks", "flows")
TASKS_FORBIDDEN = ("flows", "forja", "prefect")
ENTRY_POINT = "forja.cli"

# Cycles found in modules this change does not own, each as the set of modules in it. Remove an entry
# once its cycle is broken; a cycle not listed here fails the test.
KNOWN_CYCLES: list[frozenset[str]] = []


@dataclass(frozen=True)
class Import:
    """One import statement's target: `name` is the dotted module (or module.attribute) it names."""

    importer: str  # the module whose source holds the statement
    name: str
    line: int


def module_name(path: Path, root: Path) -> str:
    """`lm/model.py` -> `lm.model`; `tasks/clean/__init__.py` -> `tasks.clean`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module of the packages, by dotted name."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                modules[module_name(path, root)] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST):
    """Every node of the tree, at any depth, except what sits under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking_block(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of `from <level dots><module> import ...` written in `importer`."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package:  # `from . import x` in a.b means package a; in a/b/__init__.py it means a.b
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def read_imports(name: str, path: Path) -> list[Import]:
    """The imports of one module's source, at any depth (functions, try blocks, conditionals)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, name, path.name == "__init__.py")
            # `from a import b` names either the module a.b or an attribute of a: keep a.b and let
            # `resolve` find the longest name that is a module.
            found += [
                Import(name, f"{base}.{alias.name}" if base else alias.name, node.lineno)
                for alias in node.names
            ]
    return sorted(found, key=lambda imp: imp.line)  # in source order, for the failure messages


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted name lands in (`lm.config.ModelConfig` -> `lm.config`), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


@dataclass(repr=False)  # the default repr, all imports long, would bury pytest's failure report
class Project:
    root: Path
    modules: dict[str, Path]
    imports: list[Import]

    @classmethod
    def read(cls, root: Path, packages: tuple[str, ...] = PACKAGES) -> Project:
        modules = find_modules(root, packages)
        imports = [imp for name, path in modules.items() for imp in read_imports(name, path)]
        return cls(root, modules, imports)

    def __repr__(self) -> str:
        return f"Project({self.root}, {len(self.modules)} modules)"

    def where(self, imp: Import) -> str:
        """`lm/train.py:12 imports mlflow`: the file and line to change."""
        return f"{self.modules[imp.importer].relative_to(self.root).as_posix()}:{imp.line} imports {imp.name}"

    def graph(self) -> dict[str, set[str]]:
        """module -> the project modules it imports (self-imports left out)."""
        edges: dict[str, set[str]] = {name: set() for name in self.modules}
        for imp in self.imports:
            target = resolve(imp.name, self.modules)
            if target is not None and target != imp.importer:
                edges[imp.importer].add(target)
        return edges


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[set[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def a_cycle_through(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle inside a strongly connected group, as `a, b, ..., a` (shortest from its first
    module, by breadth-first search), so a failure names the imports to cut."""
    start = min(group)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def import_cycles(project: Project) -> list[tuple[frozenset[str], list[str]]]:
    """Each group of modules that import each other, with one cycle through it to name in a failure."""
    graph = project.graph()
    groups = [group for group in strongly_connected(graph) if len(group) > 1]
    return [(frozenset(group), a_cycle_through(group, graph)) for group in groups]


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def forbidden_imports(project: Project, package: str, forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports name` for each import of `package`'s modules from a forbidden top-level name."""
    return [
        project.where(imp)
        for imp in project.imports
        if _top(imp.importer) == package and _top(imp.name) in forbidden
    ]


def importers_of(project: Project, module: str) -> list[str]:
    return [
        project.where(imp)
        for imp in project.imports
        if resolve(imp.name, project.modules) == module and imp.importer != module
    ]


def _describe(group: frozenset[str], cycle: list[str]) -> str:
    others = sorted(group - set(cycle))
    return " -> ".join(cycle) + (f" (with {', '.join(others)} in the same tangle)" if others else "")


# --- the checker, on made-up trees: each rule can fail ------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Project:
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return Project.read(root)


def test_checker_names_a_cycle_through_a_deferred_import_and_a_package(tmp_path):
    project = _tree(
        tmp_path,
        {
            "lm/__init__.py": "",
            "lm/a.py": "from lm.b import thing\n",
            "lm/b.py": "def f():\n    from lm import c\n",
            "lm/c.py": "import lm.a as a\n",
            "tasks/__init__.py": "",
            "flows/__init__.py": "",
            "forja/__init__.py": "",
        },
    )
    assert import_cycles(project) == [(frozenset({"lm.a", "lm.b", "lm.c"}), ["lm.a", "lm.b", "lm.c", "lm.a"])]


def test_checker_reports_each_tangle_once_and_names_the_modules_off_its_cycle():
    graph = {
        "a": {"b"},
        "b": {"a", "c"},
        "c": {"a"},  # a <-> b and a -> b -> c -> a: one tangle of three
        "x": {"y"},
        "y": {"x"},  # a second, separate cycle
        "z": {"a", "x"},  # reaches both, in neither
    }
    groups = sorted(strongly_connected(graph), key=min)
    assert groups == [{"a", "b", "c"}, {"x", "y"}, {"z"}]
    assert a_cycle_through({"a", "b", "c"}, graph) == ["a", "b", "a"]  # the shortest from "a"
    assert _describe(frozenset("abc"), ["a", "b", "a"]) == "a -> b -> a (with c in the same tangle)"


def test_checker_follows_relative_imports_in_packages(tmp_path):
    project = _tree(
        tmp_path,
        {
            "tasks/__init__.py": "",
            "tasks/clean/__init__.py": "from .rules import RULES\n",
            "tasks/clean/rules.py": "from . import helpers\n",
            "tasks/clean/helpers.py": "from ..clean import RULES\n",
            "lm/__init__.py": "",
            "flows/__init__.py": "",
            "forja/__init__.py": "",
        },
    )
    cycle = ["tasks.clean", "tasks.clean.rules", "tasks.clean.helpers", "tasks.clean"]
    assert import_cycles(project) == [(frozenset(cycle), cycle)]


def test_checker_ignores_type_checking_imports_and_finds_no_cycle_in_a_chain(tmp_path):
    project = _tree(
        tmp_path,
        {
            "lm/__init__.py": "",
            "lm/a.py": "from lm.b import x\n",
            "lm/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lm.a import y\n",
            "tasks/__init__.py": "",
            "flows/__init__.py": "",
            "forja/__init__.py": "",
        },
    )
    assert import_cycles(project) == []


def test_checker_finds_forbidden_imports_and_importers_of_the_entry_point(tmp_path):
    project = _tree(
        tmp_path,
        {
            "lm/__init__.py": "",
            "lm/train.py": "import torch\ndef log():\n    import mlflow.tracking\n",
            "tasks/__init__.py": "",
            "tasks/clean/__init__.py": "from prefect import task\n",
            "flows/__init__.py": "from forja import cli\n",
            "forja/__init__.py": "",
            "forja/cli.py": "import sys\n",
        },
    )
    assert forbidden_imports(project, "lm", LM_FORBIDDEN) == ["lm/train.py:3 imports mlflow.tracking"]
    assert forbidden_imports(project, "tasks", TASKS_FORBIDDEN) == [
        "tasks/clean/__init__.py:1 imports prefect.task"
    ]
    assert importers_of(project, "forja.cli") == ["flows/__init__.py:1 imports forja.cli"]


# --- the rules, on the project ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> Project:
    found = Project.read(ROOT)
    assert "lm.model" in found.modules and "forja.cli" in found.modules, f"no project modules under {ROOT}"
    return found


def test_no_import_cycles(project):
    new = [(group, cycle) for group, cycle in import_cycles(project) if group not in KNOWN_CYCLES]
    assert not new, (
        "import cycles (cut one import of each, or move the shared code down a layer):\n"
        + "\n".join(_describe(group, cycle) for group, cycle in new)
    )


def test_lm_is_pure_torch(project):
    found = forbidden_imports(project, "lm", LM_FORBIDDEN)
    assert not found, "lm must not depend on orchestration, tracking or the data stages:\n" + "\n".join(found)


def test_nothing_imports_the_cli(project):
    found = importers_of(project, ENTRY_POINT)
    assert not found, f"{ENTRY_POINT} is the entry point; move what these need out of it:\n" + "\n".join(
        found
    )


def test_tasks_do_not_depend_on_flows_forja_or_prefect(project):
    found = forbidden_imports(project, "tasks", TASKS_FORBIDDEN)
    assert not found, "tasks are plain code that flows orchestrate:\n" + "\n".join(found)
