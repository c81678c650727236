"""The `lora-wise` command: help, configs, baseline; project errors in one line with exit status 2, bugs with
their traceback."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from lora_wise.cli import build_parser, main
from lora_wise.configs import iter_configs
from lora_wise.splits import standard_split


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lora_wise.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_subcommand():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    result = run_cli("--help")
    assert result.returncode == 0
    for name in commands:
        assert name in result.stdout
    for expected in ("configs", "baseline", "build", "push", "import-official", "export-official", "predict",
                     "submit", "leaderboard", "demo"):
        assert expected in commands, f"`lora-wise {expected}` is missing"


def test_configs_lists_every_config_with_sizes_backbone_rank(capsys):
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    for cfg in iter_configs():
        line = next(l for l in out.splitlines() if l.startswith(cfg.name + " "))
        assert ",".join(map(str, cfg.dataset_sizes)) in line and cfg.backbone_name in line
        assert f" {cfg.rank} " in line
    assert main(["configs", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {c["name"] for c in data} == {c.name for c in iter_configs()}


def test_baseline_command_prints_metrics_and_writes_predictions(synthetic_benchmark, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert main(["baseline", "dsire", str(synthetic_benchmark), "mini_low_r8", "--protocol", "paper",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "paper protocol, 10 draws" in printed and "MAE" in printed and "±" in printed
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(standard_split("mini_low_r8").test) * 6 and set(rows[0]) == {"model_id", "prediction"}
    assert main(["baseline", "frobenius-nn", str(synthetic_benchmark), "mini_low_r8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "frobenius-nn" and set(result["summary"]) == {"mae", "mape", "accuracy"}


@pytest.mark.parametrize("args,message", [
    (["baseline", "dsire", "{bench}", "medium_r99"], "unknown config 'medium_r99'"),
    (["baseline", "dsire", "{bench}", "mini_low_r8", "--step", "latest"], "--step must be"),
    (["baseline", "dsire", "{bench}", "mini_low_r8", "--matrices", "Q"], "unknown matrices"),
    (["baseline", "dsire", "{missing}", "mini_low_r8"], "not a LoRA-WiSE dataset|doesn't exist|not found"),
    (["baseline", "dsire", "{missing}/absent", "mini_low_r8"], "no such folder, and not a Hub dataset repo id"),
])
def test_user_errors_are_one_line_and_exit_2(args, message, synthetic_benchmark, tmp_path):
    missing = tmp_path / "empty"
    missing.mkdir()
    args = [a.format(bench=synthetic_benchmark, missing=missing) for a in args]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert re.search(message, last), last


def run_with(patch: str, *args, env: dict | None = None):
    """``lora-wise ARGS`` in a fresh interpreter after ``patch`` (Python source) has run."""
    code = f"import sys\n{patch}\nfrom lora_wise.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


def test_a_bug_shows_its_traceback():
    """An exception that is no project error -- here a RuntimeError from the library -- is a bug: never one line."""
    result = run_with("import lora_wise.configs as c\n"
                      "def broken(*a, **k): raise RuntimeError('a bug in lora-wise')\n"
                      "c.iter_configs = broken", "configs")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "RuntimeError: a bug in lora-wise"
    assert "error: " not in result.stderr


def test_a_project_error_is_one_line_and_exit_2_and_debug_shows_it():
    patch = ("import lora_wise.configs as c\nfrom lora_wise.errors import DatasetLayoutError\n"
             "def refuse(*a, **k): raise DatasetLayoutError('the dataset lacks that; rebuild it')\n"
             "c.iter_configs = refuse")
    result = run_with(patch, "configs")
    assert result.returncode == 2 and result.stderr == "error: the dataset lacks that; rebuild it\n"
    debug = run_with(patch, "configs", env={**os.environ, "LORA_WISE_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_hub_failure_that_reaches_the_command_is_one_line_naming_the_fix():
    patch = ("import httpx, lora_wise.configs as c\nfrom huggingface_hub.errors import HfHubHTTPError\n"
             "def refuse(*a, **k):\n"
             "    request = httpx.Request('GET', 'https://huggingface.co/api/datasets/me/x')\n"
             "    raise HfHubHTTPError('401 Client Error\\nmore', response=httpx.Response(401, request=request))\n"
             "c.iter_configs = refuse")
    result = run_with(patch, "configs")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: the Hub refused to run `lora-wise configs`") and "hf auth login" in line
