"""Calibrated estimates on models the builder really trains: held-out coverage, the step, the OOD flag.

A small config of the tiny miniature backbone (sizes 1, 2, 4; rank 4) is built with the
builder's batched trainer, with snapshots at two steps, one far shorter and one far longer.  The
references are the first half of the micro-datasets at the two short steps; the other half is
held out: micro-datasets the references never saw.  The test counts itself how often the true
size falls in the printed intervals, how often the step is right, how often a held-out LoRA like
the references is flagged, and whether the ones trained far longer are.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from builder_fixtures import tiny_backbone  # noqa: F401 - fixture

from lora_wise import configs as registry
from lora_wise.configs import MINI_RECIPE, BenchmarkConfig
from lora_wise.data import feature_table, iter_models
from lora_wise.estimate import DatasetSizeEstimator, EstimateWarning, ReferenceProfile

pytestmark = pytest.mark.slow

CONFIG = "mini_estimate_test"
MICRO_DATASETS = 32
SHORT = (6, 12)
LONG, SHORTER = 48, 2


def _config() -> BenchmarkConfig:
    return BenchmarkConfig(
        name=CONFIG, description="Estimate tests: 32 synthetic concepts, sizes 1, 2, 4; snapshots at 2, 6, 12, 48.",
        data_range="low", dataset_sizes=(1, 2, 4), image_source="synthetic-classes", backbone=registry.MINIATURE,
        backbone_name="mini-sd", rank=4, recipe=dataclasses.replace(MINI_RECIPE, max_train_steps=LONG),
        snapshot_steps=(SHORTER,) + SHORT + (LONG,), checkpoint_step=SHORT[-1], num_micro_datasets=MICRO_DATASETS,
        num_train_micro_datasets=8, miniature=True)


@pytest.fixture(scope="module")
def built(tiny_backbone, tmp_path_factory):  # noqa: F811
    from lora_wise.builder.build import BuildOptions, build

    cfg = registry.register_config(_config(), replace=True)
    out = tmp_path_factory.mktemp("estimate") / "lora-wise"
    try:
        build([CONFIG], BuildOptions(out=out, backbone=str(tiny_backbone), progress=False))
        table = feature_table(out, CONFIG, step="all")
        _, first = next(iter_models(out, CONFIG))
        held_out = [(labels, weights) for labels, weights in iter_models(out, CONFIG, step="all")
                    if labels["micro_dataset_index"] >= MICRO_DATASETS // 2]
        yield cfg, table, first, held_out
    finally:
        registry.CONFIGS.pop(CONFIG, None)


@pytest.fixture(scope="module")
def results(built):
    cfg, table, first, held_out = built
    references = np.flatnonzero((table.micro_dataset_indices < MICRO_DATASETS // 2) & np.isin(table.steps, SHORT))
    profile = ReferenceProfile(shapes={n: layer.shape for n, layer in first.items()}, rank=cfg.rank,
                               scales={n: layer.scale for n, layer in first.items()})
    estimator = DatasetSizeEstimator(table.subset(references), profile, cfg)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimateWarning)
        for labels, weights in held_out:
            out.append((labels, estimator.estimate(weights, name=labels["model_id"])))
    return out


def test_the_references_cover_only_the_short_steps(results):
    [(_, est), *_] = results
    assert est.reference_steps == SHORT and est.reference_micro_datasets == MICRO_DATASETS // 2
    assert est.reference_snapshots == MICRO_DATASETS // 2 * 3 * len(SHORT)


def test_intervals_cover_held_out_micro_datasets_at_about_the_stated_rate(results):
    short = [(labels, est) for labels, est in results if labels["step"] in SHORT]
    assert len(short) == MICRO_DATASETS // 2 * 3 * len(SHORT)
    truth = np.array([labels["dataset_size"] for labels, _ in short])
    classifier = np.mean([est.interval.low <= n <= est.interval.high for n, (_, est) in zip(truth, short)])
    continuous = np.mean([est.continuous_interval.low <= n <= est.continuous_interval.high
                          for n, (_, est) in zip(truth, short)])
    print(f"held-out coverage at 90%: classifier {classifier:.3f}, continuous {continuous:.3f}")
    # 96 held-out snapshots of 16 micro-datasets: 0.9 with a few standard errors of slack either way
    assert 0.75 <= classifier <= 1.0 and 0.75 <= continuous <= 1.0
    assert all(est.interval.coverage == 0.9 for _, est in short)


def test_the_step_is_estimated_and_lookalikes_are_rarely_flagged(results):
    short = [(labels, est) for labels, est in results if labels["step"] in SHORT]
    steps_right = np.mean([est.step == labels["step"] for labels, est in short])
    false_alarms = np.mean([not est.in_distribution for _, est in short])
    print(f"step right {steps_right:.3f}, false alarms {false_alarms:.3f}")
    assert steps_right >= 0.8
    assert false_alarms <= 0.1  # the stated rate is 1% (about 1% for 96 references)
    for labels, est in short:  # sizes are compared at the estimated step: the neighbours are snapshots of it
        assert {n.step for n in est.neighbours} == {est.step}
        assert all(n.model_id.endswith(f"/n{n.dataset_size}") for n in est.neighbours)


def test_a_lora_trained_four_times_longer_is_flagged_with_the_reason(results):
    long = [est for labels, est in results if labels["step"] == LONG]
    assert len(long) == MICRO_DATASETS // 2 * 3
    flagged = [est for est in long if not est.in_distribution]
    print(f"{LONG}-step LoRAs flagged: {len(flagged)} of {len(long)}")
    assert len(flagged) == len(long)
    lengths = [est.training_steps for est in long]
    print(f"their estimated training lengths: median {np.median(lengths):.0f} steps")
    assert np.median(lengths) > SHORT[-1]  # extrapolated beyond the references, toward the truth
    reasons = [w for est in flagged for w in est.warnings if "out of distribution" in w]
    assert len(reasons) == len(flagged)
    assert all("longer than any reference's" in r or "trained longer" in r for r in reasons)
    assert all(est.to_dict()["in_distribution"] is False for est in flagged)
    named = sum(est.ood["training_length"]["flagged"] == "longer" for est in long)
    print(f"... {named} of them by the training-length test")
    assert named >= 0.75 * len(long)


def test_a_lora_trained_far_shorter_is_flagged(results):
    short = [est for labels, est in results if labels["step"] == SHORTER]
    flagged = [est for est in short if not est.in_distribution]
    print(f"{SHORTER}-step LoRAs flagged: {len(flagged)} of {len(short)}, "
          f"{sum(est.ood['training_length']['flagged'] == 'shorter' for est in short)} as shorter")
    assert len(flagged) >= 0.9 * len(short)
