"""Builds that share a folder, and builds the environment stops, end as one undisturbed build would.

Real build processes of the tiny config (groups of 2 models, one thread, one worker):

* two builds started into one folder at the same time split the models (each trained once
  in all, counted from their summaries) and leave the dataset a single build leaves;
* a build SIGKILLed while it holds a claim blocks nobody: the other build takes its models over;
* a full disk (a small tmpfs, where the test may mount one), a file-size limit (RLIMIT_FSIZE:
  EFBIG) and Ctrl-C end in one line, leave nothing half-written that looks finished, and the
  rerun of the same command finishes the dataset;
* an output folder that cannot be one (a file, under a file, read-only) is refused in one line
  before any training.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from builder_fixtures import REPO_DIR, TEST_CONFIG, TESTS_DIR, run_cli_subprocess, test_cfg, tiny_backbone  # noqa: F401

from lora_wise.builder.claims import UnitClaims
from lora_wise.builder.plan import PlannedModel, Unit
from lora_wise.builder.write import BUILD_DIR
from lora_wise.cli import main

MODELS = 12  # 4 micro-datasets x sizes 1, 2, 4
BUILT = re.compile(r"built (\d+) models")
CODE = "import sys, builder_fixtures; sys.exit(builder_fixtures.main(sys.argv[1:]))"


def _args(out: Path, backbone: Path, *extra: str) -> list[str]:
    return ["build", "--config", TEST_CONFIG, "--out", str(out), "--backbone", str(backbone), "--no-progress",
            "--threads", "1", "--workers", "1", "--batch-models", "2", "--max-shard-mb", "0.2", *extra]


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_DIR)]))
    env.update(extra or {})
    return env


def _start(argv: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
    """A build in its own process group (so a test can Ctrl-C it as a terminal would)."""
    return subprocess.Popen([sys.executable, "-c", CODE, *argv], env=_env(env), cwd=str(REPO_DIR),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **kwargs)


def _units(out: Path) -> list[Path]:
    return list((out / BUILD_DIR / TEST_CONFIG / "units").glob("*.parquet"))


def _wait_for_units(out: Path, process: subprocess.Popen, count: int = 1, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(_units(out)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the build committed no model in time"
        time.sleep(0.05)


def _dataset_files(out: Path) -> dict[str, bytes]:
    """The card and every shard (the build's bookkeeping is not part of the dataset)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
             if p.is_file() and BUILD_DIR not in p.parts}
    assert "README.md" in files and any(name.endswith(".parquet") for name in files)
    return files


def _nothing_half_written(out: Path) -> None:
    """No temporary file is left, every Parquet file reads whole, and every shard is one the manifest lists."""
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for path in out.rglob("*.parquet"):
        pq.read_table(path)
    manifest = out / BUILD_DIR / TEST_CONFIG / "manifest.json"
    if manifest.is_file():
        import json

        listed = {name for names in json.loads(manifest.read_text())["shards"].values() for name in names}
        assert {p.name for p in (out / "data" / TEST_CONFIG).glob("*.parquet")} <= listed


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def reference(test_cfg, tiny_backbone, tmp_path_factory):  # noqa: F811
    """One undisturbed build, in a folder of the same name as the tests' (the card names it)."""
    out = tmp_path_factory.mktemp("single") / "lora-wise"
    result = run_cli_subprocess(_args(out, tiny_backbone))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"built {MODELS} models" in result.stdout
    return _dataset_files(out)


def _finish(out: Path, backbone: Path, reference: dict) -> str:
    """Rerun the same command: it must finish the dataset, equal to the undisturbed build's."""
    result = run_cli_subprocess(_args(out, backbone))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "load it with" in result.stdout
    assert _dataset_files(out) == reference
    return result.stdout


# ----------------------------------------------------------------------------- builds sharing a folder

@pytest.mark.slow
def test_two_builds_at_once_split_the_work_and_leave_the_single_build_dataset(reference, tiny_backbone,  # noqa: F811
                                                                               tmp_path):
    out = tmp_path / "lora-wise"
    slow = {"LORA_WISE_TEST_PAUSE_AT": "unit-committed:1"}  # 12 s of commits: the second build meets the first
    first = _start(_args(out, tiny_backbone), env=slow)
    _wait_for_units(out, first)
    second = _start(_args(out, tiny_backbone), env=slow)
    outputs = [process.communicate(timeout=600) for process in (first, second)]
    for process, (stdout, stderr) in zip((first, second), outputs):
        assert process.returncode == 0, stderr[-3000:]
        assert "load it with" in stdout  # each ends with the dataset complete
    built = [int(BUILT.search(stdout).group(1)) for stdout, _ in outputs]
    assert sum(built) == MODELS and min(built) >= 1, built  # every model trained once in all, by both
    assert f"{built[1]} built meanwhile by another build" in outputs[0][0]
    assert _dataset_files(out) == reference
    rerun = run_cli_subprocess(_args(out, tiny_backbone))
    assert "built 0 models" in rerun.stdout and f"{MODELS} already done" in rerun.stdout


@pytest.mark.slow
def test_a_build_killed_while_holding_a_claim_blocks_nobody(reference, tiny_backbone, tmp_path):  # noqa: F811
    """The first build dies (SIGKILL) after its third commit: the first model of a group of two, the second
    still claimed.  The other build takes that model over and trains exactly the nine not committed."""
    out = tmp_path / "lora-wise"
    first = _start(_args(out, tiny_backbone), env={"LORA_WISE_TEST_PAUSE_AT": "unit-committed:1",
                                                   "LORA_WISE_TEST_CRASH_AT": "unit-committed:3"})
    _wait_for_units(out, first)
    second = _start(_args(out, tiny_backbone))
    first.communicate(timeout=600)
    assert first.returncode == -signal.SIGKILL
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-3000:]
    assert f"built {MODELS - 3} models" in stdout and "load it with" in stdout
    assert _dataset_files(out) == reference


def _model(index: int, size: int) -> PlannedModel:
    return PlannedModel(unit=Unit(TEST_CONFIG, index, f"concept-{index}", size), split="train", image_ids=(),
                        job=None)


def test_a_claim_holds_against_others_and_dies_with_its_process(tmp_path):
    folder = tmp_path / BUILD_DIR / TEST_CONFIG
    code = ("import sys, time\nfrom lora_wise.builder.claims import UnitClaims\nfrom test_builder_shared import _model\n"
            f"assert UnitClaims({str(folder)!r}, (1, 2, 4)).try_claim([_model(0, 2), _model(1, 1)])\n"
            "print('held', flush=True)\ntime.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        claims = UnitClaims(folder, (1, 2, 4))
        assert not claims.try_claim([_model(0, 2)])
        assert not claims.try_claim([_model(0, 4), _model(1, 1)])  # all or nothing ...
        assert claims.try_claim([_model(0, 4)])  # ... so (0, 4) was not kept by the failed attempt
        assert not claims.try_claim([_model(0, 4)])  # held by this process now: not twice
        claims.release([_model(0, 4)])
        assert claims.try_claim([_model(0, 4)])
    finally:
        holder.kill()
        holder.wait()
    assert claims.try_claim([_model(0, 2), _model(1, 1)])  # the kernel let go of the killed holder's claims
    claims.release([_model(0, 2), _model(1, 1), _model(0, 4)])


# ----------------------------------------------------------------------------- the environment stops a build

def _can_mount_tmpfs(where: Path) -> bool:
    if not shutil.which("unshare"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{where}'"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_a_full_disk_is_one_line_leaves_nothing_half_written_and_the_rerun_resumes(reference, tiny_backbone,  # noqa: F811
                                                                                   tmp_path):
    """A 400 kB tmpfs (in a private mount namespace) fills up after a few models; the same command, once
    the file system is made larger, finishes the dataset."""
    mount = tmp_path / "small-disk"
    if not _can_mount_tmpfs(mount):
        pytest.skip("cannot mount a tmpfs here (needs unshare and user or mount namespaces)")
    out, failed, final = mount / "lora-wise", tmp_path / "after-failure", tmp_path / "final"
    build = " ".join(f"'{a}'" for a in [sys.executable, "-c", CODE, *_args(out, tiny_backbone)])
    script = f"""
mount -t tmpfs -o size=400k tmpfs '{mount}'
{build} > '{tmp_path}/first.out' 2> '{tmp_path}/first.err'; echo $? > '{tmp_path}/first.rc'
cp -a '{out}' '{failed}'
mount -o remount,size=16m '{mount}'
{build} > '{tmp_path}/second.out' 2> '{tmp_path}/second.err'; echo $? > '{tmp_path}/second.rc'
mkdir -p '{final}' && cp -a '{out}' '{final}/'
"""
    subprocess.run(["unshare", "-rm", "bash", "-c", script], env=_env(), cwd=str(REPO_DIR), check=True, timeout=900)
    assert (tmp_path / "first.rc").read_text().strip() == "2"
    line = _one_error_line((tmp_path / "first.err").read_text())
    assert f"cannot write the build into {out}" in line and "no space left" in line and "ENOSPC" in line
    assert "rerun the same `lora-wise build` command" in line
    _nothing_half_written(failed)
    assert _units(failed) or list((failed / "data").rglob("*.parquet")), "expected some models kept"
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()[-3000:]
    assert "already done" in (tmp_path / "second.out").read_text()
    assert _dataset_files(final / "lora-wise") == reference


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_file_size_limit_is_one_line_and_the_rerun_resumes(reference, tiny_backbone, tmp_path):  # noqa: F811
    """RLIMIT_FSIZE of 120 kB: one model's file fits, a 0.2 MB shard does not (EFBIG at the first seal)."""
    out = tmp_path / "lora-wise"
    build = subprocess.run([sys.executable, "-c", CODE, *_args(out, tiny_backbone)], env=_env(), cwd=str(REPO_DIR),
                           capture_output=True, text=True, timeout=600, preexec_fn=_file_size_limit(120_000))
    assert build.returncode == 2, build.stderr[-3000:]
    line = _one_error_line(build.stderr)
    assert f"cannot write the build into {out}" in line and "file-size limit" in line and "EFBIG" in line
    _nothing_half_written(out)
    kept = len(_units(out))
    assert kept >= 1
    assert f"{kept} already done" in _finish(out, tiny_backbone, reference)


@pytest.mark.slow
@pytest.mark.parametrize("signum,status,says", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_kill_leaves_nothing_half_committed_and_the_rerun_resumes(signum, status, says, reference,  # noqa: F811
                                                                            tiny_backbone, tmp_path):
    """Ctrl-C in a terminal (SIGINT), or `kill` / a batch system's time limit (SIGTERM), to the process group."""
    out = tmp_path / "lora-wise"
    build = _start(_args(out, tiny_backbone, "--workers", "2"), env={"LORA_WISE_TEST_PAUSE_AT": "unit-committed:0.5"})
    _wait_for_units(out, build, count=2)
    os.killpg(build.pid, signum)
    stdout, stderr = build.communicate(timeout=300)
    assert build.returncode == status and stderr.strip() == says, stderr[-3000:]
    _nothing_half_written(out)
    _finish(out, tiny_backbone, reference)


# ----------------------------------------------------------------------------- output folders that cannot be

def test_an_output_folder_that_cannot_be_is_refused_before_training(test_cfg, tmp_path, capsys):  # noqa: F811
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for out in (a_file, a_file / "sub" / "lora-wise"):
        assert main(_args(out, tmp_path / "never-loaded")) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"{a_file} is a file, not a folder" in line and "another --out folder" in line
    assert a_file.read_text() == "not a folder"


@pytest.mark.slow
def test_a_read_only_output_folder_is_one_line(test_cfg, tiny_backbone, tmp_path):  # noqa: F811
    mount = tmp_path / "read-only"
    if not _can_mount_tmpfs(mount):
        pytest.skip("cannot mount a tmpfs here (needs unshare and user or mount namespaces)")
    build = " ".join(f"'{a}'" for a in [sys.executable, "-c", CODE, *_args(mount / "lora-wise", tiny_backbone)])
    result = subprocess.run(["unshare", "-rm", "bash", "-c", f"mount -t tmpfs -o ro tmpfs '{mount}' && {build}"],
                            env=_env(), cwd=str(REPO_DIR), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_error_line(result.stderr)
    assert "read-only" in line and "EROFS" in line and str(mount / "lora-wise") in line


# ----------------------------------------------------------------------------- the build's own state, damaged

def _rows(cfg, key: str) -> list[dict]:
    micro, size = int(key[1:5]), int(key[7:])
    return [{"model_id": f"{cfg.name}/m{micro}/n{size}", "config": cfg.name, "micro_dataset": f"concept-{micro}",
             "micro_dataset_index": micro, "dataset_size": size, "rank": cfg.rank, "backbone": cfg.backbone_name,
             "step": 4, "seed": 0, "image_ids": [], "recipe": "{}", "lora": b"weights"}]


def test_a_damaged_manifest_is_refused_naming_the_fix(test_cfg, tmp_path):  # noqa: F811
    from lora_wise.builder.write import ConfigStore
    from lora_wise.errors import BuildStateError

    out = tmp_path / "lora-wise"
    store = ConfigStore(out, test_cfg, {"recipe": "a"}).open()
    one_view = '{"version": 2, "fingerprint": {}, "units": [], "shards": {"train": [], "test": []}, "next_index": {}}'
    for damage in ('{"version": 1, "units": [', "[]", '{"version": 1}', '{"version": 3}', one_view):
        store.manifest_path.write_text(damage)
        with pytest.raises(BuildStateError, match="is not a manifest lora-wise can read .* Delete .* and rebuild"):
            ConfigStore(out, test_cfg, {"recipe": "a"}).open()


def test_a_build_with_another_recipe_that_took_the_folder_over_stops_the_first(test_cfg, tmp_path):  # noqa: F811
    """Build A opens the folder, build B (another backbone) opens it while nothing is committed and takes
    it over; A's first commit must then stop, not mix its models into B's dataset."""
    from lora_wise.builder.write import ConfigStore
    from lora_wise.errors import BuildStateError

    out = tmp_path / "lora-wise"
    first = ConfigStore(out, test_cfg, {"backbone": "a"}).open()
    second = ConfigStore(out, test_cfg, {"backbone": "b"}).open()
    with pytest.raises(BuildStateError, match=r"another build into .* with a different backbone \({'backbone': 'b'}\)"):
        first.commit_unit("m0000-n00001", _rows(test_cfg, "m0000-n00001"))
    assert first.staged_units() == []
    second.commit_unit("m0000-n00001", _rows(test_cfg, "m0000-n00001"))
    assert second.staged_units() == ["m0000-n00001"]


def test_a_queue_without_a_folder_hands_out_every_group_once_in_order():
    """What bench/build.py and other callers of train_in_processes with plain models get."""
    from lora_wise.builder.claims import GroupQueue

    groups = [[_model(0, 1), _model(0, 2)], [_model(0, 4)], [_model(1, 1)]]
    queue = GroupQueue(groups, done={"m0001-n00001"})
    assert queue.total == 3 and queue.config == TEST_CONFIG
    assert list(queue.groups()) == groups[:2]
    assert queue.exhausted and queue.taken == []
