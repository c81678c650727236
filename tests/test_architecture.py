"""The architecture README describes, enforced on the source: one package, floors, no cycles.

One installed package, ``lora_wise``; the folders ``builder/`` and ``leaderboard/`` install as
``lora_wise.builder`` and ``lora_wise.leaderboard`` (``package_dir`` in setup.cfg).  Its modules
stand on three floors and import only downwards (README, "Architecture"):

* floor 3, the commands: ``lora_wise.cli``, ``lora_wise.demo``, ``lora_wise.report``;
* floor 2, the stages, independent of one another: ``lora_wise.builder``, ``lora_wise.leaderboard``,
  ``lora_wise.published``;
* floor 1, the library: every other module.

Imports are read with ``ast`` from the files (``module_graph.py``), lazy ones inside functions
included, so nothing here depends on what happens to be importable.
"""

from __future__ import annotations

import ast
import configparser
import json
import subprocess
import sys
import pytest

from module_graph import REPOSITORY as ROOT, ModuleGraph, package_roots

COMMANDS = ("lora_wise.cli", "lora_wise.demo", "lora_wise.report")
STAGES = ("lora_wise.builder", "lora_wise.leaderboard", "lora_wise.published")
#: What ``import lora_wise`` (and building the command's parser) must not pull in.
HEAVY = ("torch", "diffusers", "peft", "transformers", "gradio", "ray", "matplotlib", "evaluate", "datasets")


@pytest.fixture(scope="module")
def graph() -> ModuleGraph:
    return ModuleGraph.read(package_roots())


def _within(module: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if module == p or module.startswith(p + ".")), None)


def floor(module: str) -> int:
    return 3 if _within(module, COMMANDS) else 2 if _within(module, STAGES) else 1


def test_setup_cfg_installs_every_folder_of_the_package():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = set()
    for name, folder in package_roots().items():
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir() and "__pycache__" not in p.parts)]:
            if any(f.is_file() for f in sub.iterdir()):
                on_disk.add(".".join([name, *sub.relative_to(folder).parts]))
    assert listed == on_disk, "setup.cfg's `packages` must list exactly the package's folders"


def test_every_stage_and_command_exists(graph):
    for name in COMMANDS + STAGES:
        assert name in graph.files, f"{name} is named as a floor's part but does not exist"


def test_imports_only_go_down_the_floors(graph):
    wrong = []
    for imp in graph.imports:
        if imp.target not in graph.files:
            continue
        where = f"{imp.source} (line {imp.line}) imports {imp.target}"
        if floor(imp.target) > floor(imp.source):
            wrong.append(f"{where}: floor {floor(imp.source)} -> {floor(imp.target)}")
        elif floor(imp.source) == floor(imp.target) == 2 and _within(imp.source, STAGES) != _within(imp.target, STAGES):
            wrong.append(f"{where}: one stage imports another")
    assert not wrong, "imports must go down the floors:\n" + "\n".join(wrong)


def test_no_import_cycles(graph):
    assert graph.cycles() == []


def test_only_the_commands_parse_arguments(graph):
    parsing = [f"{imp.source} (line {imp.line})" for imp in graph.imports
               if imp.target.split(".")[0] == "argparse" and floor(imp.source) < 3]
    assert not parsing, "library and stage modules never import argparse: " + ", ".join(parsing)


def test_nothing_imports_the_folders_as_top_level_packages():
    """``builder`` and ``leaderboard`` exist only as ``lora_wise.builder`` / ``lora_wise.leaderboard``
    once installed; a checkout would hide a stray ``import builder`` from its working directory."""
    stray = []
    for path in sorted(p for folder in ("lora_wise", "builder", "leaderboard", "tests", "bench")
                       for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            stray += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                      if name.split(".")[0] in ("builder", "leaderboard")]
    assert not stray, "import lora_wise.builder / lora_wise.leaderboard instead: " + ", ".join(stray)


def test_import_lora_wise_and_the_command_line_stay_light():
    probe = ("import json, sys, lora_wise, lora_wise.cli; lora_wise.cli.build_parser();"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []
