"""The `lora-wise` command: help, configs, baseline, and one-line errors with exit status 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from lora_wise.cli import build_parser, main
from lora_wise.configs import iter_configs


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
    assert len(rows) == 14 * 6 and set(rows[0]) == {"model_id", "prediction"}
    assert main(["baseline", "frobenius-nn", str(synthetic_benchmark), "mini_low_r8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "frobenius-nn" and set(result["summary"]) == {"mae", "mape", "accuracy"}


@pytest.mark.parametrize("args,message", [
    (["baseline", "dsire", "{bench}", "medium_r99"], "unknown config 'medium_r99'"),
    (["baseline", "dsire", "{bench}", "mini_low_r8", "--step", "latest"], "--step must be"),
    (["baseline", "dsire", "{bench}", "mini_low_r8", "--matrices", "Q"], "unknown matrices"),
    (["baseline", "dsire", "{missing}", "mini_low_r8"], "not a LoRA-WiSE dataset|doesn't exist|not found"),
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
    import re
    assert re.search(message, last), last
