"""The import graph of Python source folders, read with ``ast`` (nothing is imported or run).

Used by the architecture test (the floors of this repository) and the Space test (the assembled
folder imports only what it carries).  Every ``import`` and ``from ... import`` counts, at module
level or inside a function: an import deferred to keep start-up light is a dependency all the same.
So does ``importlib.import_module`` with a constant name.  An import is resolved to the deepest
module of the graph it names: ``from . import figures`` in ``lora_wise/report.py`` is an edge to
``lora_wise.figures``, ``from .baselines import DSiRe`` one to ``lora_wise.baselines``.
"""

from __future__ import annotations

import ast
import configparser
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def package_roots(repository: Path = REPOSITORY) -> dict[str, Path]:
    """Package name -> its folder in the repository, as setup.cfg maps them (``package_dir``)."""
    cfg = configparser.ConfigParser()
    cfg.read(repository / "setup.cfg")
    mapped = dict(line.replace(" ", "").split("=") for line in cfg["options"]["package_dir"].strip().splitlines())
    return {"lora_wise": repository / "lora_wise", **{name: repository / folder for name, folder in mapped.items()}}


def module_files(roots: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for each package name -> folder in ``roots`` (a package is its ``__init__``)."""
    found = {}
    for package, folder in roots.items():
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


@dataclass
class Import:
    """One import statement of a module: what it names, resolved, and where."""

    source: str
    target: str  # the deepest module of the graph it names, or the name as written when outside the graph
    line: int
    written: str  # the module it names as written (``from m import x``: ``m.x`` when that is a module, else ``m``)

    @property
    def missing(self) -> bool:
        """Whether it names a module inside the graph's packages that the graph does not hold."""
        return self.target != self.written


@dataclass
class ModuleGraph:
    files: dict[str, Path]
    imports: list[Import] = field(default_factory=list)

    @classmethod
    def read(cls, roots: dict[str, Path]) -> "ModuleGraph":
        graph = cls(module_files(roots))
        for name, path in graph.files.items():
            graph.imports += graph._imports_of(name, path)
        return graph

    def is_package(self, name: str) -> bool:
        return self.files[name].name == "__init__.py"

    def _resolve(self, name: str) -> str:
        """The deepest module of the graph that ``name`` (a dotted path) lies in; ``name`` when none."""
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in self.files:
                return ".".join(parts[:end])
        return name

    def _imports_of(self, name: str, path: Path) -> list[Import]:
        package = name if self.is_package(name) else name.rpartition(".")[0]
        found = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in self.files else module
                           for alias in node.names]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                written = node.args[0].value
                if written.startswith("."):  # import_module(".x", __package__)
                    written = package + written
                targets = [written]
            for target in targets:
                found.append(Import(name, self._resolve(target), node.lineno, target))
        return found

    def edges(self) -> dict[str, set[str]]:
        """Module -> the modules of the graph it imports (itself excluded)."""
        out: dict[str, set[str]] = {name: set() for name in self.files}
        for imp in self.imports:
            if imp.target in self.files and imp.target != imp.source:
                out[imp.source].add(imp.target)
        return out

    def cycles(self) -> list[list[str]]:
        """Groups of modules that import each other, directly or around a loop (Tarjan's components)."""
        edges, index, low, stack, on_stack, groups = self.edges(), {}, {}, [], set(), []

        def visit(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            for other in sorted(edges[node]):
                if other not in index:
                    visit(other)
                    low[node] = min(low[node], low[other])
                elif other in on_stack:
                    low[node] = min(low[node], index[other])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

        for node in sorted(edges):
            if node not in index:
                visit(node)
        return groups
