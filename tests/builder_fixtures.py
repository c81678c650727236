"""Helpers for the builder's tests: a tiny miniature backbone, a tiny config, builds in subprocesses.

The tiny config (``mini_builder_test``: 4 micro-datasets, sizes 1/2/4, rank 4,
4 steps with snapshots at 2 and 4) is registered only while a test module needs
it (:func:`tiny_config_registered`), so other tests never see it in the registry.
A subprocess build registers it itself (:func:`main`), which is how the
resumability tests can SIGKILL a real build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_wise import configs as registry
from lora_wise.configs import MINI_RECIPE, BenchmarkConfig

from lora_wise.builder.backbones import MiniBackboneSpec, miniature_backbone

TEST_CONFIG = "mini_builder_test"
#: Pre-trained briefly (about 20 s on 2 cores) yet enough that LoRA norms fall with dataset size.
TINY_SPEC = MiniBackboneSpec(seed=0, pretrain_steps=150, vae_steps=60, batch_size=16, pool_size=512)
TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent


def make_test_config() -> BenchmarkConfig:
    return BenchmarkConfig(
        name=TEST_CONFIG, description="Builder tests: 4 synthetic concepts, sizes 1, 2, 4; 4 steps.",
        data_range="low", dataset_sizes=(1, 2, 4), image_source="synthetic-classes", backbone=registry.MINIATURE,
        backbone_name="mini-sd", rank=4, recipe=dataclasses.replace(MINI_RECIPE, max_train_steps=4),
        snapshot_steps=(2, 4), checkpoint_step=4, num_micro_datasets=4, num_train_micro_datasets=2,
        miniature=True)


@contextlib.contextmanager
def tiny_config_registered():
    """Register the tiny config for the duration of the block."""
    cfg = registry.register_config(make_test_config(), replace=True)
    try:
        yield cfg
    finally:
        registry.CONFIGS.pop(TEST_CONFIG, None)


def main(argv: list[str]) -> int:
    """``lora-wise`` with the tiny config registered (what the subprocess builds run)."""
    from lora_wise.cli import main as cli_main

    registry.register_config(make_test_config(), replace=True)
    return cli_main(argv)


def run_cli_subprocess(argv: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run :func:`main` in a fresh interpreter (a real process that can be killed)."""
    code = "import sys, builder_fixtures; sys.exit(builder_fixtures.main(sys.argv[1:]))"
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_DIR), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *argv], env=full_env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO_DIR))


def cache_root(tmp_path_factory) -> Path:
    """The per-session cache the autouse fixture of conftest.py points LORA_WISE_CACHE at."""
    return tmp_path_factory.getbasetemp() / "lora-wise-cache"


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """The tiny miniature backbone (created once per session, then found on disk)."""
    return miniature_backbone(TINY_SPEC, progress=False, root=cache_root(tmp_path_factory) / "backbones")


@pytest.fixture(scope="module")
def test_cfg():
    with tiny_config_registered() as cfg:
        yield cfg
