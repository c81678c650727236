"""Spread builds: ``--shard i/N`` processes and Ray tasks give the dataset one process gives, byte for byte.

The reference is an in-process build of the tiny config in groups of 4 models on one
thread.  Two shard processes running at the same time into one folder, and a build
whose groups run as tasks on a local Ray cluster, must leave the same files (every
shard's bytes and the card).  Underneath, sealing is checked on its own: units
committed in any order, by concurrent processes, with seals at any moment, give the
shards one seal of all rows gives.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import random
import subprocess
import sys
from pathlib import Path

import pytest

from builder_fixtures import (REPO_DIR, TEST_CONFIG, TESTS_DIR, run_cli_subprocess, test_cfg,  # noqa: F401
                              tiny_backbone)

from lora_wise.builder.build import BuildOptions, build
from lora_wise.builder.distributed import parse_shard, shard_groups
from lora_wise.builder.plan import groups_of, plan_config
from lora_wise.builder.write import BUILD_DIR, ConfigStore, snapshot_rows

GROUP = 4


def _dataset_files(out: Path) -> dict[str, bytes]:
    """What a dataset consists of: the card and every shard (the build's bookkeeping is not part of it)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and BUILD_DIR not in p.parts}
    assert "README.md" in files and any(name.endswith(".parquet") for name in files)
    return files


# ----------------------------------------------------------------------------- groups and shards

def test_shard_flag_parses_and_rejects_with_the_fix():
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3 / 4 ") == (3, 4)
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0", ""):
        with pytest.raises(ValueError, match="INDEX/COUNT|between 0 and COUNT-1"):
            parse_shard(bad)


def test_groups_are_cut_from_the_plan_and_shards_cover_it_once(test_cfg):  # noqa: F811
    from lora_wise.builder.micro_datasets import SyntheticSource

    planned = plan_config(test_cfg, SyntheticSource(32).micro_datasets(test_cfg))
    groups = groups_of(planned, 5)
    assert [len(g) for g in groups] == [5, 5, 2] and [m for g in groups for m in g] == planned
    shares = [shard_groups(groups, (i, 2)) for i in range(2)]
    assert shares[0] == [groups[0], groups[2]] and shares[1] == [groups[1]]
    for share in shares:  # a shard's models, cut again, give back its groups (what its trainer does)
        assert groups_of([m for g in share for m in g], 5) == share
    with pytest.raises(ValueError, match="at least 1"):
        groups_of(planned, 0)


# ----------------------------------------------------------------------------- sealing

def _fake_units(cfg):
    """Every planned unit of ``cfg`` with two snapshots of random bytes of varied sizes (no training)."""
    from lora_wise.builder.micro_datasets import SyntheticSource
    from lora_wise.builder.train import Snapshot

    rng = random.Random(0)
    units = {}
    for model in plan_config(cfg, SyntheticSource(32).micro_datasets(cfg)):
        snaps = [Snapshot(step, rng.randbytes(rng.randrange(20_000, 60_000))) for step in (2, 4)]
        units[model.key] = snapshot_rows(cfg, model, snaps, "{}")
    return units


def _commit_and_seal(root: str, cfg, keys: list[str], seed: int) -> None:
    """Commit ``keys`` in a random order, sealing (with the plan) at random moments, as a shard process does."""
    units = _fake_units(cfg)
    store = ConfigStore(root, cfg, {"test": 1}).open()
    rng = random.Random(seed)
    keys = list(keys)
    rng.shuffle(keys)
    for key in keys:
        store.commit_unit(key, units[key])
        if rng.random() < 0.5:
            store.seal(150_000, planned=sorted(units))
    store.seal(150_000, planned=sorted(units))


def _commit_and_seal_in_child(root: str, keys: list[str], seed: int) -> None:
    from builder_fixtures import make_test_config

    _commit_and_seal(root, make_test_config(), keys, seed)


def test_sealed_shards_depend_only_on_the_rows(test_cfg, tmp_path):  # noqa: F811
    units = _fake_units(test_cfg)
    one = tmp_path / "one-seal" / "lora-wise"
    store = ConfigStore(one, test_cfg, {"test": 1}).open()
    for key, rows in units.items():
        store.commit_unit(key, rows)
    assert store.seal(150_000, planned=sorted(units)) == 12
    expected = _shards(one)
    snapshots = [name for name in expected if name.startswith(TEST_CONFIG + "_snapshots/")]
    assert len(snapshots) > 4  # the bound cut several shards per split
    for view in (TEST_CONFIG, TEST_CONFIG + "_snapshots"):  # both views, numbered from 0 per split
        names = [n.split("/")[1] for n in expected if n.split("/")[0] == view]
        assert sorted(n.rsplit("-", 1)[0] for n in names) == sorted(
            f"{s}-{i:05d}" for s in ("train", "test") for i in range(sum(n.startswith(s) for n in names)))
    for seed in range(3):  # one process, units finishing in any order, seals at any moment
        out = tmp_path / f"shuffled-{seed}" / "lora-wise"
        _commit_and_seal(str(out), test_cfg, sorted(units), seed)
        assert _shards(out) == expected
    # two processes at once, each committing and sealing its half (the file lock keeps them apart)
    out = tmp_path / "concurrent" / "lora-wise"
    keys = sorted(units)
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_commit_and_seal_in_child, args=(str(out), keys[i::2], 10 + i))
                for i in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert _shards(out) == expected
    assert not list((out / BUILD_DIR / TEST_CONFIG / "units").glob("*"))


def _shards(out) -> dict[str, bytes]:
    """``<view>/<shard name>`` -> bytes, for both views of the test config."""
    return {p.relative_to(out / "data").as_posix(): p.read_bytes() for p in (out / "data").glob("*/*.parquet")}


def test_a_seal_waits_for_the_units_before_it(test_cfg, tmp_path):  # noqa: F811
    units = _fake_units(test_cfg)
    keys = sorted(units)
    store = ConfigStore(tmp_path / "lora-wise", test_cfg, {"test": 1}).open()
    for key in keys[1:]:
        store.commit_unit(key, units[key])
    assert store.seal(150_000, planned=keys) == 0  # the first unit is missing: nothing is sealable
    store.commit_unit(keys[0], units[keys[0]])
    assert store.seal(150_000, planned=keys) == 12


# ----------------------------------------------------------------------------- builds

@pytest.fixture(scope="module")
def reference(test_cfg, tiny_backbone, tmp_path_factory):  # noqa: F811
    """One process, groups of 4, one thread."""
    out = tmp_path_factory.mktemp("single") / "lora-wise"
    summary = build([TEST_CONFIG], BuildOptions(out=out, backbone=str(tiny_backbone), progress=False,
                                                batch_models=GROUP, threads=1, max_shard_bytes=120_000))
    assert summary.models_built == 12 and summary.complete
    return _dataset_files(out)


@pytest.mark.slow
def test_concurrent_shard_processes_build_the_single_process_dataset(reference, tiny_backbone, tmp_path):  # noqa: F811
    out = tmp_path / "lora-wise"
    code = "import sys, builder_fixtures; sys.exit(builder_fixtures.main(sys.argv[1:]))"
    env = {"PYTHONPATH": f"{TESTS_DIR}:{REPO_DIR}"}
    import os

    processes = [subprocess.Popen(
        [sys.executable, "-c", code, "build", "--config", TEST_CONFIG, "--out", str(out), "--backbone",
         str(tiny_backbone), "--no-progress", "--threads", "1", "--workers", "1", "--batch-models", str(GROUP), "--max-shard-mb",
         str(120_000 / 2 ** 20), "--shard", f"{i}/2"], env=dict(os.environ, **env), cwd=str(REPO_DIR),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert "built 8 models" in outputs[0][0] and "built 4 models" in outputs[1][0]
    assert _dataset_files(out) == reference
    rerun = run_cli_subprocess(["build", "--config", TEST_CONFIG, "--out", str(out), "--backbone",
                                str(tiny_backbone), "--no-progress", "--batch-models", str(GROUP)])
    assert rerun.returncode == 0 and "built 0 models" in rerun.stdout and "12 already done" in rerun.stdout


@pytest.mark.slow
def test_one_shard_alone_leaves_an_incomplete_build_that_a_plain_rerun_finishes(reference, tiny_backbone,  # noqa: F811
                                                                                tmp_path):
    out = tmp_path / "lora-wise"
    options = BuildOptions(out=out, backbone=str(tiny_backbone), progress=False, batch_models=GROUP, threads=1,
                           max_shard_bytes=120_000)
    first = build([TEST_CONFIG], dataclasses.replace(options, shard=(1, 2)))
    assert first.models_built == 4 and not first.complete
    assert not list((out / "data" / TEST_CONFIG).glob("*.parquet"))  # group 0 missing: nothing sealable yet
    rest = build([TEST_CONFIG], options)
    assert rest.models_built == 8 and rest.models_skipped == 4 and rest.complete
    assert _dataset_files(out) == reference


@pytest.mark.slow
def test_ray_build_equals_the_single_process_build(reference, tiny_backbone, tmp_path):  # noqa: F811
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        out = tmp_path / "lora-wise"
        summary = build([TEST_CONFIG], BuildOptions(out=out, backbone=str(tiny_backbone), progress=False,
                                                    batch_models=GROUP, threads=1, max_shard_bytes=120_000, ray=""))
        assert summary.models_built == 12 and summary.complete
        assert _dataset_files(out) == reference
    finally:
        ray.shutdown()
