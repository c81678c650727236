"""README's "Score your own method" is examples/my_method.py, and it runs as written against a small build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from lora_wise import results
from lora_wise.data import feature_table
from lora_wise.metrics.dataset_size_recovery import compute_metrics
from synthetic import write_synthetic_benchmark

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_method.py"


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_readme_example_is_the_example_file_and_at_most_15_lines():
    section = _readme_section("Score your own method")
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks and blocks[0] == EXAMPLE.read_text()
    assert len([line for line in blocks[0].splitlines() if line.strip()]) <= 15
    assert "lora-wise submit results.json" in section


def test_the_example_runs_against_a_small_build_and_writes_a_valid_record(tmp_path):
    write_synthetic_benchmark(tmp_path / "lora-wise", configs=("mini_low_r8",))
    env = dict(os.environ, LORA_WISE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = results.read(tmp_path / "results.json")
    assert record["method"]["class"] == "my_method.py:NearestNorm" and record["protocol"] == "paper"
    assert record["dataset"]["source"] == "lora-wise" and len(record["draws"]) == 10
    assert "NearestNorm on mini_low_r8 (paper protocol, 10 draws" in done.stdout
    # draw 0's predictions are what the example's rule gives, scored as the metric scores them
    table = feature_table(tmp_path / "lora-wise", "mini_low_r8")
    draw = record["draws"][0]
    train = table.rows_of(draw["train_micro_datasets"])
    norms = table.norms["BA"].mean(axis=1)
    truth = dict(zip(table.model_ids, table.dataset_sizes.tolist()))
    for i in table.rows_of(draw["test_micro_datasets"]):
        nearest = train[np.abs(norms[train] - norms[i]).argmin()]
        assert draw["predictions"][table.model_ids[i]] == table.dataset_sizes[nearest]
    ids = list(draw["predictions"])
    assert draw["metrics"] == compute_metrics([draw["predictions"][m] for m in ids], [truth[m] for m in ids])
