"""Spectral features against an independent computation: numpy's SVD of the dense product."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save

from lora_wise.features import MATRICES, FeatureTable, SpectralExtractor, extract
from lora_wise.lora import LoRALayer, LoRAWeights, read_lora


def dense_reference(layer: LoRALayer, rank: int) -> dict[str, np.ndarray]:
    """The straightforward way: SVD of A, B and of the dense d x k product, in float64."""
    a, b = layer.A.astype(np.float64), layer.B.astype(np.float64)
    scale = 1.0 if layer.scale is None else abs(layer.scale)
    out = {}
    for m, matrix in (("A", a), ("B", b), ("BA", scale * (b @ a))):
        values = np.linalg.svd(matrix, compute_uv=False)[:rank]
        out[m] = np.pad(values, (0, rank - len(values)))
    return out


def assert_matches_dense(weights: LoRAWeights, features, rank: int) -> None:
    for i, name in enumerate(features.layer_names):
        reference = dense_reference(weights[name], rank)
        for m in MATRICES:
            top = max(reference[m].max(), 1e-30)
            np.testing.assert_allclose(features.sv[m][i], reference[m], rtol=0, atol=2e-6 * top,
                                       err_msg=f"{name}:{m}")
            np.testing.assert_allclose(features.norms[m][i], np.linalg.norm(reference[m]), rtol=2e-6,
                                       atol=1e-30, err_msg=f"{name}:{m} norm")


def random_layer(rng, name, r, d, k, kind="full", alpha=None) -> LoRALayer:
    a = rng.standard_normal((r, k)).astype(np.float32)
    b = rng.standard_normal((d, r)).astype(np.float32)
    if kind == "deficient":  # rank of BA well below r
        b[:, : r // 2] = 0
        a[-1] = a[0]
    elif kind == "zero_a":
        a[:] = 0
    elif kind == "zero_b":  # a LoRA right after PEFT's init: B = 0
        b[:] = 0
    elif kind == "ill":  # singular values over 7 decades
        b = (b * np.logspace(0, -7, r)).astype(np.float32)
    return LoRALayer(name, a, b, alpha)


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_and_ranks_match_dense_svd(seed):
    rng = np.random.default_rng(seed)
    rank = int(rng.choice([1, 2, 4, 8, 16, 32]))
    layers = {}
    for i in range(7):
        r = int(rng.integers(1, rank + 1)) if i % 3 == 0 else rank  # some layers of lower rank
        d, k = (int(x) for x in rng.integers(1, 90, size=2))
        kind = ["full", "deficient", "zero_a", "zero_b", "ill", "full", "full"][i]
        alpha = float(rng.integers(1, 64)) if i % 2 else None
        layers[f"layer{i}"] = random_layer(rng, f"layer{i}", r, d, k, kind, alpha)
    weights = LoRAWeights(layers, "peft")
    assert_matches_dense(weights, extract(weights, rank=rank), rank)


def test_layers_of_equal_shape_are_batched_and_still_exact():
    rng = np.random.default_rng(7)
    layers = {f"l{i}": random_layer(rng, f"l{i}", 8, 64, 48) for i in range(12)}
    weights = LoRAWeights(layers, "peft")
    features = extract(weights)
    assert features.sv["BA"].shape == (12, 8)
    assert_matches_dense(weights, features, 8)


@pytest.mark.parametrize("decades", [4, 6, 8])
def test_ill_conditioned_factors_keep_their_small_singular_values(decades):
    """Non-orthogonal B (and A) whose singular values span many decades, in layers of one shape
    (the batched path): every singular value, the smallest included, to float32 precision."""
    rng = np.random.default_rng(decades)
    r, d, k = 8, 96, 80
    layers = {}
    for i in range(6):
        u, _ = np.linalg.qr(rng.standard_normal((d, r)))
        v, _ = np.linalg.qr(rng.standard_normal((r, r)))
        b = (u * np.logspace(0, -decades, r)) @ v  # cond(B) = 10**decades, no orthogonal columns
        a = rng.standard_normal((r, k)) * np.logspace(0, -decades / 2, r)[:, None] if i % 2 else \
            rng.standard_normal((r, k))
        layers[f"l{i}"] = LoRALayer(f"l{i}", a.astype(np.float32), b.astype(np.float32), None)
    weights = LoRAWeights(layers, "peft")
    features = extract(weights)
    for i, name in enumerate(features.layer_names):
        reference = dense_reference(weights[name], r)
        for m in MATRICES:
            np.testing.assert_allclose(features.sv[m][i], reference[m], rtol=1e-5, atol=0, err_msg=f"{name}:{m}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_files_match_dense_svd_of_their_float32_values(dtype):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save as torch_save

    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.standard_normal((16, 40)).astype(np.float32)).to(getattr(torch, dtype))
    b = torch.from_numpy(rng.standard_normal((56, 16)).astype(np.float32)).to(getattr(torch, dtype))
    weights = read_lora(torch_save({"x.lora_A.weight": a, "x.lora_B.weight": b}))
    # the reader widens exactly: the float32 values are the half-precision values
    np.testing.assert_array_equal(weights["x"].A, a.float().numpy())
    np.testing.assert_array_equal(weights["x"].B, b.float().numpy())
    assert_matches_dense(weights, extract(weights), 16)


def test_extractor_reuses_buffers_across_models_without_leaking_values():
    rng = np.random.default_rng(11)
    extractor = SpectralExtractor(rank=4)
    first = LoRAWeights({"l": random_layer(rng, "l", 4, 20, 30)}, "peft")
    second = LoRAWeights({"l": random_layer(rng, "l", 4, 20, 30)}, "peft")
    f1, f2 = extractor(first), extractor(second)
    assert_matches_dense(first, f1, 4)
    assert_matches_dense(second, f2, 4)


def test_rank_larger_than_requested_is_an_error():
    rng = np.random.default_rng(0)
    weights = LoRAWeights({"l": random_layer(rng, "l", 8, 20, 30)}, "peft")
    with pytest.raises(ValueError, match="rank 8"):
        extract(weights, rank=4)


def _record(i, size, weights):
    return {"model_id": f"m{i}", "dataset_size": size, "micro_dataset_index": i, "step": 1}, weights


def test_feature_table_streams_models_and_keeps_labels():
    rng = np.random.default_rng(5)
    names = [f"l{j}" for j in range(3)]

    def models():
        for i in range(4):
            yield _record(i, i + 1, LoRAWeights({n: random_layer(rng, n, 4, 10, 12) for n in names}, "peft"))

    table = FeatureTable.build(models(), rank=4)
    assert len(table) == 4 and table.layer_names == tuple(names)
    assert table.sv["BA"].shape == (4, 3, 4) and table.norms["A"].shape == (4, 3)
    assert table.dataset_sizes.tolist() == [1, 2, 3, 4]
    sub = table.subset([3, 1])
    assert sub.model_ids == ["m3", "m1"] and np.array_equal(sub.sv["B"], table.sv["B"][[3, 1]])
    assert table.rows_of([0, 2]).tolist() == [0, 2]


def test_feature_table_rejects_a_model_with_other_layers():
    rng = np.random.default_rng(5)
    one = LoRAWeights({"l0": random_layer(rng, "l0", 4, 10, 12)}, "peft")
    other = LoRAWeights({"l9": random_layer(rng, "l9", 4, 10, 12)}, "peft")
    with pytest.raises(ValueError, match="missing .*l0.*extra .*l9"):
        FeatureTable.build([_record(0, 1, one), _record(1, 2, other)])


def test_features_of_a_file_equal_features_of_its_state_dict():
    rng = np.random.default_rng(2)
    tensors = {"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight":
               rng.standard_normal((4, 24)).astype(np.float32),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight":
               rng.standard_normal((24, 4)).astype(np.float32)}
    from_file = extract(read_lora(save(tensors)))
    from_dict = extract(read_lora(tensors))
    for m in MATRICES:
        np.testing.assert_array_equal(from_file.sv[m], from_dict.sv[m])
