"""Every docstring example of the library runs, from the installed package, in any working directory.

The examples are found in the installed ``lora_wise`` package (its floor-1 library: the stages and
the commands import torch, gradio and friends, and carry no examples), imported by module name,
and run by ``doctest`` from an empty temporary folder, so an example that leans on a
repository-relative path fails here.  ``make test`` (pytest) runs this module, so CI runs the doctests.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
from pathlib import Path

import pytest

#: Sub-packages that are not the library (floors 2 and 3); none has docstring examples.
NOT_LIBRARY = ("lora_wise.builder", "lora_wise.leaderboard", "lora_wise.published", "lora_wise.cli",
               "lora_wise.demo", "lora_wise.report")


def _library_modules_with_examples() -> list[str]:
    spec = importlib.util.find_spec("lora_wise")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(("lora_wise", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("lora_wise", *parts))
        if any(name == p or name.startswith(p + ".") for p in NOT_LIBRARY):
            continue
        if ">>> " in path.read_text(encoding="utf-8"):
            found.append(name)
    return found


MODULES = _library_modules_with_examples()
METRIC = "lora_wise.metrics.dataset_size_recovery.dataset_size_recovery"


def test_the_metric_and_the_method_interface_have_examples():
    assert METRIC in MODULES and "lora_wise.methods" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may depend on the repository being the working directory
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
    if name == METRIC:
        assert result.attempted >= 4
