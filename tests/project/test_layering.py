"""The package's layering: importing datapipelines loads no optional client, and no two modules
import each other (directly or round a longer loop), counting imports inside functions and under
``TYPE_CHECKING`` too: a cycle hidden in a function body is still a cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where each installed package's modules sit in the source tree.
PACKAGES = {"datapipelines": ROOT / "datapipelines", "datapipelines.sinks": ROOT / "sinks"}
PACKAGES["datapipelines.transformers"] = ROOT / "transformers"


@pytest.mark.parametrize("client", ["redis", "httpx", "sqlalchemy"])
def test_importing_datapipelines_loads_no_optional_client(client: str) -> None:
    code = "import json, sys, datapipelines; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert [name for name in loaded if name.split(".")[0] == client] == []
    assert "datapipelines" in loaded  # the probe did import the package


def test_the_lazy_names_of_datapipelines_still_import() -> None:
    code = (
        "import datapipelines\n"
        "for name in datapipelines.__all__: getattr(datapipelines, name)\n"
        "from datapipelines.invalidation import RedisInvalidation\n"
        "from datapipelines.redis.invalidation import RedisInvalidation as moved\n"
        "assert RedisInvalidation is moved is datapipelines.RedisInvalidation\n"
    )
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)


def test_no_name_datapipelines_exports_is_also_one_of_its_modules() -> None:
    # ``datapipelines.source`` is the @source decorator; a module of that name would be shadowed by
    # it, or replace it in the package when first imported late.
    import datapipelines

    submodules = {name.split(".")[1] for name in modules() if name.count(".") == 1}
    assert sorted(submodules & set(datapipelines.__all__)) == []


def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: its dotted name -> (file, whether it is a package)."""
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join([package, *parts[: -1 if is_package else None]])] = (path, is_package)
    return found


def imported_names(name: str, path: Path, is_package: bool) -> Iterator[str]:
    """Every module name an import statement anywhere in the file may load."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            yield target
            # ``from . import kv`` imports the module kv; ``from .kv import X`` names X in it.
            yield from (f"{target}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports; an import of a.b.c also runs a and a.b."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in known.items():
        parts = name.split(".")
        # A module's own packages are always loaded before it: an edge to them is no cycle.
        enclosing = {".".join(parts[:i]) for i in range(1, len(parts))}
        targets = set()
        for imported in imported_names(name, path, is_package):
            pieces = imported.split(".")
            targets.update(".".join(pieces[:i]) for i in range(1, len(pieces) + 1))
        graph[name] = {t for t in targets if t in known and t != name and t not in enclosing}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_walk_finds_a_cycle_and_what_the_modules_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "datapipelines.keys" in graph["datapipelines.reads"]
    assert "datapipelines.sinks.catalog.sink" in graph["datapipelines.sinks.catalog"]
    assert "datapipelines" not in graph["datapipelines.pipeline"]  # its own package


def test_no_modules_of_the_package_import_each_other() -> None:
    assert cycles(import_graph()) == []
