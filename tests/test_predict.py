"""lora-wise predict: estimate the dataset size of one LoRA file from reference models.

References are the synthetic mini_low_r8 build (tests/synthetic.py); LoRA files
are written in the same PEFT naming, or changed to mismatch the references.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from safetensors.numpy import load, save

from lora_wise.baselines import DSiRe
from lora_wise.configs import get_config
from lora_wise.cli import main
from lora_wise.data import feature_table, load_benchmark
from lora_wise.estimate import DatasetSizeEstimator, EstimateWarning, IncompatibleLoRAError, estimate_dataset_size
from lora_wise.features import FeatureTable
from lora_wise.lora import read_lora
from synthetic import LAYERS, synthetic_lora

CONFIG = "mini_low_r8"
CLASSIFIERS = len(LAYERS) * 3  # one per layer and matrix A, B, BA


@pytest.fixture(scope="module")
def estimator(synthetic_benchmark):
    return DatasetSizeEstimator.from_reference(synthetic_benchmark, CONFIG)


@pytest.fixture(scope="module")
def reference_rows(synthetic_benchmark):
    test = load_benchmark(synthetic_benchmark, CONFIG, "test")
    return {(row["micro_dataset_index"], row["dataset_size"]): row for row in test}


def _write(path, tensors):
    path.write_bytes(save(tensors))
    return path


def test_a_reference_model_is_its_own_nearest_neighbour(estimator, reference_rows, tmp_path):
    """Independent check: every classifier finds the identical reference model, so all vote its size."""
    for size in (1, 3, 5):
        row = next(r for (i, s), r in reference_rows.items() if s == size)
        path = tmp_path / f"copy-{size}.safetensors"
        path.write_bytes(row["lora"])
        for method in ("dsire", "frobenius-nn"):
            est = DatasetSizeEstimator(estimator.table, estimator.profile, CONFIG, method).estimate(path)
            assert est.prediction == size
            assert est.votes == {s: (CLASSIFIERS if s == size else 0) for s in (1, 2, 3, 4, 5, 6)}
            assert est.vote_share == 1.0
            assert est.neighbours[0].model_id == row["model_id"] and est.neighbours[0].classifiers == CLASSIFIERS
            assert est.neighbours[0].step == row["step"] == est.step
            assert est.in_distribution and est.ood["distance"] == 0.0 and est.ood["nearest"]["model_id"] == row["model_id"]
            assert size in est.interval and est.interval.coverage == 0.9
            assert est.warnings == []


def test_estimate_matches_the_baseline_fitted_on_the_reference(estimator, synthetic_benchmark, tmp_path):
    path = tmp_path / "fresh.safetensors"
    path.write_bytes(synthetic_lora(2, seed=987_654, rank=8))
    est = estimator.estimate(path)
    assert sum(est.votes.values()) == est.num_classifiers == CLASSIFIERS
    assert sum(n.classifiers for n in est.neighbours) == CLASSIFIERS  # k=1: one neighbour per classifier
    # the same baseline, fitted and queried directly through the library
    table = feature_table(synthetic_benchmark, CONFIG)
    query = FeatureTable.build([({"model_id": "q", "dataset_size": 0, "micro_dataset_index": -1, "step": 0},
                                 read_lora(path))], rank=8)
    model = DSiRe().fit(table)
    votes = model.classifier_votes(query)[0]
    assert est.prediction == int(model.predict(query)[0])
    assert est.votes == {s: int((votes == s).sum()) for s in (1, 2, 3, 4, 5, 6)}
    assert est.reference_models == len(table) == 50 * 6


def test_estimates_follow_the_dataset_size(estimator, tmp_path):
    small, large = [], []
    for seed in range(4):
        for size, out in ((1, small), (6, large)):
            path = tmp_path / f"s{size}-{seed}.safetensors"
            path.write_bytes(synthetic_lora(size, seed=500_000 + seed, rank=8))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EstimateWarning)
                out.append(estimator.estimate(path).prediction)
    assert np.mean(small) < 2.5 < 4.5 < np.mean(large), (small, large)


def test_predict_cli_text_and_json(synthetic_benchmark, reference_rows, tmp_path, capsys):
    row = reference_rows[next(k for k in reference_rows if k[1] == 6)]
    path = tmp_path / "six.safetensors"
    path.write_bytes(row["lora"])
    other = tmp_path / "other.safetensors"
    other.write_bytes(synthetic_lora(3, seed=123_456, rank=8))
    assert main(["predict", str(path), "--reference", str(synthetic_benchmark), "--config", CONFIG]) == 0
    captured = capsys.readouterr()
    assert "estimated dataset size: 6 images" in captured.out
    assert f"6 | {'#' * 30} {CLASSIFIERS}  <- estimate" in captured.out
    assert row["model_id"] in captured.out
    assert "largest reference size" in captured.err  # the edge of the range is flagged
    assert "(90% interval: " in captured.out and "continuous estimate:" in captured.out
    assert "in distribution:        yes" in captured.out

    assert main(["predict", str(path), "--reference", str(synthetic_benchmark), "--config", CONFIG,
                 "--method", "nn-full-model", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["estimated_dataset_size"] == 6 and result["num_classifiers"] == 1
    assert sum(v["classifiers"] for v in result["votes"]) == 1
    assert result["neighbours"][0]["model_id"] == row["model_id"]
    assert any("largest reference size" in w for w in result["warnings"])
    assert result["interval"]["coverage"] == 0.9 and result["interval"]["low"] <= 6 <= result["interval"]["high"]
    assert result["in_distribution"] is True and result["estimated_step"] == get_config("mini_low_r8").checkpoint_step == row["step"]
    continuous = result["continuous_estimate"]
    assert continuous["interval"]["low"] <= continuous["dataset_size"] <= continuous["interval"]["high"]

    assert main(["predict", str(path), str(other), "--reference", str(synthetic_benchmark), "--config", CONFIG,
                 "--json", "--k", "3", "--matrices", "BA"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["lora"] for r in results] == [str(path), str(other)]
    assert all(r["num_classifiers"] == len(LAYERS) and r["params"]["k"] == 3 for r in results)
    assert sum(n["classifiers"] for n in results[1]["neighbours"]) == 3 * len(LAYERS)


def _tensors(size=3, seed=42, rank=8):
    return dict(load(synthetic_lora(size, seed=seed, rank=rank)))


def test_missing_and_extra_layers_are_named(estimator, tmp_path):
    tensors = _tensors()
    dropped = [p for p, _, _ in LAYERS[-2:]]
    for path in dropped:
        del tensors[f"unet.{path}.lora_A.weight"], tensors[f"unet.{path}.lora_B.weight"]
    partial = _write(tmp_path / "partial.safetensors", tensors)
    with pytest.raises(IncompatibleLoRAError, match=r"2 of the 8 reference layers are missing from it") as err:
        estimator.estimate(partial)
    assert dropped[0] in str(err.value) and "--allow-partial" in str(err.value)
    with pytest.warns(EstimateWarning, match="6 layers the LoRA shares"):
        est = estimator.estimate(partial, allow_partial=True)
    assert est.layers_used == 6 and est.num_classifiers == 18 and sum(est.votes.values()) == 18

    extra = _tensors()
    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    extra[f"unet.{name}.lora_A.weight"] = np.ones((8, 32), np.float32)
    extra[f"unet.{name}.lora_B.weight"] = np.ones((32, 8), np.float32)
    with pytest.raises(IncompatibleLoRAError, match=rf"adapts 1 layer the references do not \({name}\)"):
        estimator.estimate(_write(tmp_path / "extra.safetensors", extra))

    other = {k.replace("down_blocks.0", "up_blocks.3"): v for k, v in _tensors().items()}
    with pytest.raises(IncompatibleLoRAError, match="shares no adapted layer"):
        estimator.estimate(_write(tmp_path / "other.safetensors", other), allow_partial=True)


def test_other_backbone_shapes_are_an_error_naming_the_layer(estimator, tmp_path):
    tensors = _tensors()
    path, d, k = LAYERS[2]
    tensors[f"unet.{path}.lora_B.weight"] = np.ones((d + 16, 8), np.float32)
    with pytest.raises(IncompatibleLoRAError, match=rf"{path} with a weight of shape {d + 16}x{k} .* is {d}x{k}"):
        estimator.estimate(_write(tmp_path / "shape.safetensors", tensors))


def test_rank_higher_is_an_error_lower_is_zero_padded(estimator, tmp_path):
    high = tmp_path / "r16.safetensors"
    high.write_bytes(synthetic_lora(3, seed=7, rank=16))
    with pytest.raises(IncompatibleLoRAError, match="rank 16 but the mini_low_r8 references have rank 8"):
        estimator.estimate(high)
    low = tmp_path / "r4.safetensors"
    low.write_bytes(synthetic_lora(3, seed=7, rank=4))
    with pytest.warns(EstimateWarning) as caught:
        est = estimator.estimate(low)
    messages = [str(w.message) for w in caught]
    assert any("zero-padded to rank 8" in m for m in messages)
    assert est.lora_rank == 4 and est.reference_rank == 8 and sum(est.votes.values()) == CLASSIFIERS
    # half of its singular values are zeros where every reference's are not: unlike all of them
    assert not est.in_distribution and any("out of distribution" in m for m in messages)


def test_scale_differing_from_the_references_is_warned(estimator, tmp_path):
    kohya = {}
    for key, value in _tensors().items():
        module, _, role = key[len("unet."):].partition(".lora_")
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_{'down' if role.startswith('A') else 'up'}.weight"] = value
        kohya[f"{stem}.alpha"] = np.array(4.0, np.float32)  # alpha 4 at rank 8: scale 0.5
    path = _write(tmp_path / "kohya.safetensors", kohya)
    with pytest.warns(EstimateWarning) as caught:
        est = estimator.estimate(path)
    assert est.naming == "kohya"
    assert "scale alpha/r is 0.5 on 8 layers but the references' is 1" in str(caught[0].message)
    # a smaller scale shrinks BA's spectrum, which reads as a larger dataset
    assert est.prediction == 6 and "largest reference size" in est.warnings[-1]


def test_cli_errors_are_one_line_with_the_fix(synthetic_benchmark, tmp_path, capsys):
    pickled = tmp_path / "lora.pt"
    pickled.write_bytes(b"\x80\x04K\x01.")
    assert main(["predict", str(pickled), "--reference", str(synthetic_benchmark), "--config", CONFIG]) == 2
    assert "refusing to read a pickle-based checkpoint" in capsys.readouterr().err
    high = tmp_path / "r16.safetensors"
    high.write_bytes(synthetic_lora(3, seed=7, rank=16))
    assert main(["predict", str(high), "--reference", str(synthetic_benchmark), "--config", CONFIG]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: ") and last.endswith("build references of rank 16 or more.")


def test_library_entry_point(synthetic_benchmark, reference_rows):
    row = reference_rows[next(k for k in reference_rows if k[1] == 2)]
    est = estimate_dataset_size(row["lora"], synthetic_benchmark, CONFIG, method="frobenius-nn", k=1)
    assert est.prediction == 2 and est.method == "frobenius-nn" and est.source == "the LoRA"
    with pytest.raises(ValueError, match="unknown method"):
        DatasetSizeEstimator(None, None, CONFIG, "magic")


def test_intervals_cover_models_the_references_never_saw(estimator):
    """Independent check of the calibration: fresh synthetic LoRAs (new seeds: new micro-datasets) of every size;
    the share whose true size lies in the printed interval, counted here, is close to the stated 90%."""
    inside = continuous_inside = flagged = total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimateWarning)
        for seed in range(25):
            for size in (1, 2, 3, 4, 5, 6):
                est = estimator.estimate(synthetic_lora(size, seed=900_000 + 7 * seed, rank=8))
                inside += est.interval.low <= size <= est.interval.high
                continuous_inside += est.continuous_interval.low <= size <= est.continuous_interval.high
                flagged += not est.in_distribution
                total += 1
    print(f"held-out coverage: classifier {inside / total:.3f}, continuous {continuous_inside / total:.3f}, "
          f"flagged {flagged / total:.3f}")
    assert 0.82 <= inside / total <= 0.98, inside / total  # 150 draws: 0.9 +- 3 standard errors
    assert 0.82 <= continuous_inside / total <= 0.98, continuous_inside / total
    assert flagged / total <= 0.05  # stated false-alarm rate 1%


def test_a_lora_unlike_the_references_is_flagged_with_the_reason(estimator, synthetic_benchmark, tmp_path, capsys):
    path = tmp_path / "loud.safetensors"
    path.write_bytes(synthetic_lora(3, seed=4242, rank=8, signal=30.0))  # updates 30x the references'
    with pytest.warns(EstimateWarning, match="out of distribution"):
        est = estimator.estimate(path)
    assert not est.in_distribution and est.ood["distance"] > est.ood["threshold"] and est.ood["p_value"] <= 0.01
    [reason] = [w for w in est.warnings if "out of distribution" in w]
    assert "larger than any reference's" in reason and "trained longer" in reason
    assert main(["predict", str(path), "--reference", str(synthetic_benchmark), "--config", CONFIG, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["in_distribution"] is False and any("out of distribution" in w for w in result["warnings"])


def test_coverage_and_false_alarm_options(synthetic_benchmark, tmp_path, capsys):
    path = tmp_path / "three.safetensors"
    path.write_bytes(synthetic_lora(3, seed=31_337, rank=8))
    widths = {}
    for coverage in (0.5, 0.95):
        assert main(["predict", str(path), "--reference", str(synthetic_benchmark), "--config", CONFIG, "--json",
                     "--coverage", str(coverage), "--false-alarm", "0.05"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["interval"]["coverage"] == coverage and result["out_of_distribution_test"]["false_alarm_rate"] == 0.05
        interval = result["continuous_estimate"]["interval"]
        widths[coverage] = interval["high"] / interval["low"]
    assert widths[0.5] < widths[0.95]
    for bad in ("0", "1.5"):
        assert main(["predict", str(path), "--reference", str(synthetic_benchmark), "--config", CONFIG,
                     "--coverage", bad]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: coverage must be between 0 and 1")


def test_the_continuous_estimate_falls_between_the_reference_sizes(synthetic_benchmark):
    """Synthetic LoRAs of 25 and 35 images (sizes no reference has; their spectra shrink with n by construction):
    the classifier can only answer a reference size, the continuous estimate lands between the neighbours."""
    estimator = DatasetSizeEstimator.from_reference(synthetic_benchmark, "mini_medium_r8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EstimateWarning)
        for size, (below, above) in ((25, (20, 30)), (35, (30, 40))):
            ests = [estimator.estimate(synthetic_lora(size, seed=700_000 + seed, rank=8)) for seed in range(20)]
            assert all(est.prediction in (1, 10, 20, 30, 40, 50) for est in ests)
            assert below < np.median([est.continuous for est in ests]) < above
            assert np.mean([est.continuous_interval.low <= size <= est.continuous_interval.high for est in ests]) >= 0.8
