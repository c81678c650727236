"""One error root: every project error is a LoRAWiSEError and the built-in it refines, defined in errors.py."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect

import pytest

from lora_wise import errors
from lora_wise.errors import LoRAWiSEError
from module_graph import module_files, package_roots

PROJECT_ERRORS = [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, BaseException)]

#: Where each error is raised, and so importable from too (the names users already import).
RAISED_IN = {
    "lora_wise.configs": ["UnknownConfigError"],
    "lora_wise.lora": ["LoRAFormatError", "PickleRefusedError"],
    "lora_wise.data": ["DatasetLayoutError"],
    "lora_wise.estimate": ["IncompatibleLoRAError"],
    "lora_wise.metrics.dataset_size_recovery": ["DatasetSizeRecoveryInputError"],
    "lora_wise.builder.micro_datasets": ["MicroDatasetError"],
    "lora_wise.builder.backbones": ["BackboneError"],
    "lora_wise.builder.write": ["BuildStateError"],
    "lora_wise.builder.push": ["PushError"],
    "lora_wise.leaderboard.submission": ["SubmissionError"],
    "lora_wise.leaderboard.store": ["StoreError"],
    "lora_wise.leaderboard.space": ["SpaceError"],
}


@pytest.mark.parametrize("cls", PROJECT_ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_is_the_root_and_a_built_in(cls):
    assert issubclass(cls, LoRAWiSEError)
    if cls is not LoRAWiSEError:
        refined = [base for base in cls.__mro__
                   if base.__module__ == "builtins" and base not in (Exception, BaseException, object)]
        assert refined, f"{cls.__name__} must also derive from the built-in exception it refines"


def _is_error(base: str) -> bool:
    builtin = getattr(builtins, base, None)
    if isinstance(builtin, type) and issubclass(builtin, BaseException):
        return not issubclass(builtin, Warning)
    return base.endswith(("Error", "Exception"))


def test_errors_are_defined_in_errors_py_only():
    """A new error class elsewhere would have no root; warnings are not errors and may live anywhere."""
    stray = []
    for name, path in module_files(package_roots()).items():
        if name == "lora_wise.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(_is_error(ast.unparse(b).split(".")[-1]) for b in node.bases):
                stray.append(f"{name}.{node.name}")
    assert not stray, "define errors in lora_wise/errors.py: " + ", ".join(stray)


@pytest.mark.parametrize("module", sorted(RAISED_IN))
def test_errors_are_importable_where_they_are_raised(module):
    for name in RAISED_IN[module]:
        assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_a_key_error_reads_as_its_message():
    assert str(errors.UnknownConfigError("unknown config 'x'; did you mean 'y'?")) == "unknown config 'x'; did you mean 'y'?"
    assert isinstance(errors.UnknownConfigError("x"), KeyError)
