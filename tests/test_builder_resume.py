"""Resumability: real build processes SIGKILLed at many moments, restarted, checked.

A build must end -- after any number of kills and restarts -- with every snapshot
present exactly once and byte-identical to an uninterrupted build.  The kills hit
named points through the builder's fault-injection hook (after a model is
committed, while shards are being written, right after the manifest commit,
while sealed shards are being moved into place, while the card is written) and,
once, an arbitrary moment chosen by a timer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from builder_fixtures import REPO_DIR, TEST_CONFIG, TESTS_DIR, run_cli_subprocess, test_cfg, tiny_backbone  # noqa: F401

from lora_wise.builder.write import BUILD_DIR

pytestmark = pytest.mark.slow


def _build_args(out: Path, backbone: Path, *extra: str) -> list[str]:
    return ["build", "--config", TEST_CONFIG, "--out", str(out), "--backbone", str(backbone), "--no-progress",
            "--threads", "1", "--max-shard-mb", "0.2", *extra]


def _sealed(out: Path, view: str = TEST_CONFIG + "_snapshots") -> list[tuple[str, int, bytes]]:
    rows = []
    for path in sorted((out / "data" / view).glob("*.parquet")):
        table = pq.read_table(path, columns=["model_id", "step", "lora"]).to_pydict()
        rows += list(zip(table["model_id"], table["step"], table["lora"]))
    return rows


def _staged(out: Path) -> list[tuple[str, int, bytes]]:
    rows = []
    for path in sorted((out / BUILD_DIR / TEST_CONFIG / "units").glob("*.parquet")):
        table = pq.read_table(path, columns=["model_id", "step", "lora"]).to_pydict()
        rows += list(zip(table["model_id"], table["step"], table["lora"]))
    return rows


def _killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(test_cfg, tiny_backbone, tmp_path_factory):  # noqa: F811
    """An uninterrupted build, in a subprocess like the killed ones."""
    out = tmp_path_factory.mktemp("reference") / "lora-wise"
    result = run_cli_subprocess(_build_args(out, tiny_backbone))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _sealed(out)
    assert len(rows) == 24
    return {(m, s): lora for m, s, lora in rows}


def _check_no_duplicates(out: Path, reference: dict) -> set:
    """Whatever state a kill left: nothing twice, nothing that differs from the reference."""
    present = [(m, s) for m, s, _ in _sealed(out)]
    staged = [(m, s) for m, s, _ in _staged(out)]
    assert len(present) == len(set(present)), "a snapshot is sealed twice"
    for m, s, lora in _sealed(out) + _staged(out):
        assert reference[(m, s)] == lora
    models = [m for m, _, _ in _sealed(out, TEST_CONFIG)]
    assert len(models) == len(set(models)), "a model is sealed twice in the default view"
    for m, s, lora in _sealed(out, TEST_CONFIG):
        assert s == 4 and reference[(m, s)] == lora  # the checkpoint's snapshot
    return set(present) | set(staged)


def test_sigkill_at_every_stage_then_restart_ends_with_each_snapshot_once(reference, tiny_backbone, tmp_path):  # noqa: F811
    out = tmp_path / "lora-wise"
    # Grow the build in two parts, so that later seals reopen a small sealed shard and replace it.
    # Shards hold 4 snapshots (0.2 MB), so each split of the first part seals as shards of 4 + 2.
    plan = [("unit-committed:3", ["--micro-datasets", "2"]),  # mid-training
            ("sealing:2", ["--micro-datasets", "2"]),  # second shard of a seal being written
            (None, ["--micro-datasets", "2"]),  # completes the first part
            ("sealing:1", []),  # reseal that reopens the last shard, killed before its commit
            ("after-manifest", []),  # reseal committed, nothing moved yet
            ("rolling-forward", []),  # the restart's recovery, killed after moving one shard
            ("card", [])]  # everything sealed, killed writing the card
    for point, extra in plan:
        env = {"LORA_WISE_TEST_CRASH_AT": point} if point else {}
        result = run_cli_subprocess(_build_args(out, tiny_backbone, *extra), env=env)
        if point:
            assert _killed(result), (point, result.returncode, result.stderr[-2000:])
        else:
            assert result.returncode == 0, result.stderr[-2000:]
        _check_no_duplicates(out, reference)
        if point == "after-manifest":  # the committed reseal replaced a small shard still on disk
            manifest = json.loads((out / BUILD_DIR / TEST_CONFIG / "manifest.json").read_text())
            listed = {n for names in manifest["shards"][TEST_CONFIG + "_snapshots"].values() for n in names}
            on_disk = {p.name for p in (out / "data" / (TEST_CONFIG + "_snapshots")).glob("*.parquet")}
            assert on_disk - listed, "expected the reopened shard to await deletion"
            assert list((out / BUILD_DIR / TEST_CONFIG / "pending").glob("*.parquet"))
    manifest = json.loads((out / BUILD_DIR / TEST_CONFIG / "manifest.json").read_text())
    assert len(manifest["units"]) == 12  # the last kill came after the final seal committed
    final = run_cli_subprocess(_build_args(out, tiny_backbone))
    assert final.returncode == 0, final.stderr[-2000:]
    assert "built 0 models" in final.stdout and "12 already done" in final.stdout
    rows = _sealed(out)
    assert sorted((m, s) for m, s, _ in rows) == sorted(reference)
    assert all(reference[(m, s)] == lora for m, s, lora in rows)
    assert sorted(m for m, _, _ in _sealed(out, TEST_CONFIG)) == sorted(m for m, s in reference if s == 4)
    assert not _staged(out) and not list((out / BUILD_DIR / TEST_CONFIG / "pending").glob("*"))
    assert (out / "README.md").is_file()


def test_sigkill_at_a_random_moment_then_restart(reference, tiny_backbone, tmp_path):  # noqa: F811
    """A timer kill: wherever the process was (loading, training, committing, sealing)."""
    out = tmp_path / "lora-wise"
    code = "import sys, builder_fixtures; sys.exit(builder_fixtures.main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_DIR)]))
    units = out / BUILD_DIR / TEST_CONFIG / "units"
    process = subprocess.Popen([sys.executable, "-c", code, *_build_args(out, tiny_backbone)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(REPO_DIR))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:  # kill once some models are in
        if units.is_dir() and len(list(units.glob("*.parquet"))) >= 5:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    _check_no_duplicates(out, reference)
    result = run_cli_subprocess(_build_args(out, tiny_backbone))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = _sealed(out)
    assert sorted((m, s) for m, s, _ in rows) == sorted(reference)
    assert all(reference[(m, s)] == lora for m, s, lora in rows)
