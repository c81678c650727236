"""`lora-wise demo` end to end on a tiny config: build, experiments, leaderboard, report; rerunnable."""

from __future__ import annotations

import re

import pytest

from builder_fixtures import TEST_CONFIG, TINY_SPEC, tiny_config_registered, tiny_backbone  # noqa: F401
from lora_wise.data import load_benchmark


@pytest.fixture(scope="module")
def tiny_config():
    with tiny_config_registered() as cfg:
        yield cfg


def test_demo_builds_scores_registers_and_reports_then_reruns_without_duplicates(
        tiny_config, tiny_backbone, tmp_path):  # noqa: F811
    from lora_wise.leaderboard.store import open_store
    from lora_wise.demo import run_demo

    printed: list[str] = []
    flip = TEST_CONFIG + "-flip"
    kwargs = dict(out=str(tmp_path / "lora-wise"), report_dir=str(tmp_path / "report"), configs=[TEST_CONFIG, flip],
                  protocol="paper", db=str(tmp_path / "board.sqlite"),
                  build_options={"mini_spec": TINY_SPEC}, progress=False, echo=printed.append)
    result = run_demo(**kwargs)

    # the dataset: both splits, one row per model, and every model at its snapshot steps
    ds = load_benchmark(result.dataset, TEST_CONFIG)
    assert len(ds["train"]) + len(ds["test"]) == 4 * 3
    snapshots = load_benchmark(result.dataset, TEST_CONFIG + "_snapshots")
    assert len(snapshots["train"]) + len(snapshots["test"]) == 4 * 3 * 2

    # the leaderboard: both reference baselines, scored on the standard split
    entries = open_store(kwargs["db"]).entries(TEST_CONFIG, "test")
    assert sorted(e.method for e in entries) == ["DSiRe (reference)", "Frobenius-NN (reference)"]

    # the report: the results table, four figures per config, the timings
    text = result.report.read_text()
    assert f"| `{TEST_CONFIG}` | 1-4 | DSiRe |" in text and "Frobenius-NN" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 2 * 4 and all((result.report.parent / i).is_file() for i in images)
    assert "wall time: build" in text
    # it opens with the paper's findings: the test config's, and its flip defense against it
    head = text.split("## Results")[0]
    findings = [line for line in head.splitlines() if line.startswith("| ") and f"`{TEST_CONFIG}`" in line]
    assert [f.split(" | ")[0].rsplit("(", 1)[1] for f in findings] == [
        "Fig. 2a)", "Table 2)", "Table 8)", "Table 6)"]  # no paper figure for sizes 1-4: no "near the paper"
    assert "at step 2 ->" in findings[2] and f"`{flip}`" in findings[3]

    # what it printed: where the report is and how to open the leaderboard
    out = "\n".join(printed)
    assert str(result.report.resolve()) in out and "lora-wise leaderboard serve" in out

    # a rerun keeps the built models and adds no duplicate leaderboard rows
    printed.clear()
    run_demo(**kwargs)
    assert "built 0 models" in "\n".join(printed)
    assert len(open_store(kwargs["db"]).entries(TEST_CONFIG, "test")) == 2


def test_the_demo_builds_every_miniature_config_and_the_flip_defense_of_the_medium_range():
    from lora_wise.configs import MINIATURE_CONFIGS
    from lora_wise.demo import demo_configs

    assert demo_configs() == list(MINIATURE_CONFIGS) + ["mini_medium_r8-flip"]
