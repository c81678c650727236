"""Shared fixtures: an isolated cache and synthetic LoRA-WiSE datasets."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# evaluate copies metric scripts into HF_MODULES_CACHE, read once at import: keep it out of the user's home.
if "HF_MODULES_CACHE" not in os.environ:
    _modules_cache = tempfile.mkdtemp(prefix="lora-wise-hf-modules-")
    os.environ["HF_MODULES_CACHE"] = _modules_cache
    atexit.register(shutil.rmtree, _modules_cache, ignore_errors=True)

from synthetic import write_synthetic_benchmark


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test writes its caches (datasets, leaderboard) under a temp dir, never the user's.

    Session-scoped, so it is in force before any fixture runs: a module-scoped fixture that
    reads a dataset (a feature table) caches its Arrow files there too.
    """
    cache = tmp_path_factory.getbasetemp() / "lora-wise-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORA_WISE_CACHE", str(cache))
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def synthetic_benchmark(tmp_path_factory):
    """A folder holding a synthetic build of mini_low_r8 and mini_medium_r8 (all 50 micro-datasets each)."""
    root = tmp_path_factory.mktemp("bench") / "lora-wise"
    return write_synthetic_benchmark(root, configs=("mini_low_r8", "mini_medium_r8"))
