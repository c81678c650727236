"""The paper's findings are computed from a build: each against an independent calculation.

Synthetic builds (``tests/synthetic.py``: LoRA scales fall with the dataset size, plus per-model
noise) stand in for trained ones; a noisier build plays the early snapshot and the flip defense.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from synthetic import write_synthetic_benchmark

from lora_wise.configs import get_config
from lora_wise.data import feature_table
from lora_wise.findings import (FLIP_DROP, NORM_RHO_MAX, PAPER_MARGIN, TRAINING_GAIN, dsire_beats_frobenius,
                                flips_defend, near_paper, norm_falls, summary, training_helps)
from lora_wise.protocol import run_protocol
from lora_wise.report import analyse, paper_findings, write_report

REFERENCE = Path(__file__).resolve().parents[1] / "lora_wise" / "resources" / "paper_results.csv"


def spearman(x, y) -> float:
    """Spearman's rho as the Pearson correlation of ranks (no ties here), computed with numpy alone."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def paper_accuracy(table: str, data_range: str, variant: str = "", rank: str | None = None) -> float:
    with REFERENCE.open() as handle:
        for row in csv.DictReader(handle):
            if (row["table"] == table and row["data_range"] == data_range and row["method"] == "dsire"
                    and row["variant"] == variant and (rank is None or row["rank"] == rank)):
                return float(row["acc_pct"]) / 100
    raise LookupError(table)


@pytest.fixture(scope="module")
def medium(synthetic_benchmark):
    return feature_table(synthetic_benchmark, "mini_medium_r8")


@pytest.fixture(scope="module")
def noisy_builds(tmp_path_factory):
    """The medium config again with much noisier models, and its flip defense likewise."""
    root = tmp_path_factory.mktemp("noisy") / "lora-wise"
    return write_synthetic_benchmark(root, configs=("mini_medium_r8", "mini_medium_r8-flip"), noise=0.9)


def test_the_norm_trend_is_spearmans_rho_of_the_mean_norm_per_size(medium):
    cfg = get_config("mini_medium_r8")
    norms = medium.norms["BA"].mean(axis=1)
    finding = norm_falls(cfg, norms, medium.dataset_sizes)
    means = [norms[medium.dataset_sizes == s].mean() for s in cfg.dataset_sizes]
    assert finding.value == pytest.approx(spearman(cfg.dataset_sizes, means))
    assert finding.holds == (finding.value <= NORM_RHO_MAX) and finding.holds  # synthetic norms fall with n
    assert f"{means[0]:.3g}" in finding.ours
    # the same norms against sizes in another order do not fall: the finding says so
    shuffled = np.array([cfg.dataset_sizes[(cfg.dataset_sizes.index(s) + 3) % 6] for s in medium.dataset_sizes])
    other = norm_falls(cfg, norms, shuffled)
    assert other.value == pytest.approx(spearman(cfg.dataset_sizes, [norms[shuffled == s].mean()
                                                                      for s in cfg.dataset_sizes]))
    assert not other.holds


def test_dsire_against_frobenius_and_against_the_paper(medium):
    cfg = get_config("mini_medium_r8")
    dsire, frob = run_protocol(medium, cfg, "dsire"), run_protocol(medium, cfg, "frobenius-nn")
    beats = dsire_beats_frobenius(cfg, dsire, frob)
    assert beats.value == pytest.approx(dsire.mean("accuracy") - frob.mean("accuracy"))
    assert beats.holds == (dsire.mean("accuracy") > frob.mean("accuracy"))
    near = near_paper(cfg, dsire)
    paper = paper_accuracy("2", "1-50")
    assert paper == pytest.approx(0.861)
    assert near.value == pytest.approx(dsire.mean("accuracy") - paper)
    assert near.holds == (dsire.mean("accuracy") >= paper - PAPER_MARGIN) and "86.1%" in near.paper


def test_training_and_flips_compare_two_builds(medium, noisy_builds):
    cfg, flip = get_config("mini_medium_r8"), get_config("mini_medium_r8-flip")
    clean = run_protocol(medium, cfg, "dsire")
    noisy = run_protocol(feature_table(noisy_builds, "mini_medium_r8"), cfg, "dsire")
    flipped = run_protocol(feature_table(noisy_builds, flip.name), flip, "dsire")
    gain = clean.mean("accuracy") - noisy.mean("accuracy")
    assert gain > 0.15  # noise 0.9 against 0.15 blurs the sizes: the two builds differ clearly
    helps = training_helps(cfg, noisy, 75, clean)
    assert helps.value == pytest.approx(gain) and helps.holds == (gain >= TRAINING_GAIN)
    assert "77.9%" in helps.paper and "86.1%" in helps.paper  # Table 8: steps 300 and 1200
    worse = training_helps(cfg, clean, 75, noisy)
    assert worse.value == pytest.approx(-gain) and not worse.holds
    defends = flips_defend(cfg, clean, flip, flipped)
    drop = clean.mean("accuracy") - flipped.mean("accuracy")
    assert defends.value == pytest.approx(-drop) and defends.holds == (drop >= FLIP_DROP)
    assert f"{100 * paper_accuracy('6', '1-50', 'flip-augmentation-defense'):.1f}%" in defends.paper


def test_report_opens_with_the_findings_it_computed(synthetic_benchmark, noisy_builds, tmp_path):
    low = analyse(feature_table(synthetic_benchmark, "mini_low_r8"), "mini_low_r8", protocol="standard")
    medium = analyse(feature_table(synthetic_benchmark, "mini_medium_r8"), "mini_medium_r8", protocol="standard",
                     first_table=feature_table(noisy_builds, "mini_medium_r8"))
    flipped = analyse(feature_table(noisy_builds, "mini_medium_r8-flip"), "mini_medium_r8-flip", protocol="standard")
    findings = paper_findings([low, medium, flipped])
    keys = [(f.config, f.key) for f in findings]
    assert keys == [("mini_low_r8", "norm-falls"), ("mini_low_r8", "dsire-beats-frobenius"),
                    ("mini_low_r8", "near-paper"), ("mini_medium_r8", "norm-falls"),
                    ("mini_medium_r8", "dsire-beats-frobenius"), ("mini_medium_r8", "near-paper"),
                    ("mini_medium_r8", "training-helps"), ("mini_medium_r8", "flips-defend")]
    flips = findings[-1]
    assert flips.value == pytest.approx(flipped.results["dsire"].mean("accuracy")
                                        - medium.results["dsire"].mean("accuracy"))
    text = write_report([low, medium, flipped], tmp_path, dataset="lora-wise").read_text()
    head = text.split("## Results")[0]
    assert "## The paper's findings on this build" in head and summary(findings) in head
    assert summary(findings).startswith(f"{sum(f.holds for f in findings)} of 8 findings hold")
    rows = [line for line in head.splitlines() if line.startswith("| ") and "`mini_" in line]
    assert len(rows) == len(findings)
    for finding, row in zip(findings, rows):
        assert finding.ours in row and row.endswith("| yes |" if finding.holds else "| **no** |")
        assert row.count("|") == 6  # the figures' text never splits a cell
