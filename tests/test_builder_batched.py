"""The batched trainer against one-at-a-time PEFT training, and its per-model optimiser parts.

Every model of a batched group must end with the snapshots ``lora_wise.builder.train.train_lora``
gives it alone: same file header (keys, shapes, adapter metadata), and tensors equal
to float tolerance.  The tolerance is set by float rounding, not by a loose match:
A (drawn by each model's generator, then trained) agrees to 1e-6 of its magnitude;
B (all of it learnt, a few hundred ULPs of AdamW's sign-like first steps) to 2e-3 of
its magnitude -- the same order as the one-model trainer's own run-to-run difference
between 1 and 2 CPU threads -- while two models with different seeds or images
differ by the order of their magnitude.
"""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest
import torch

from builder_fixtures import tiny_backbone  # noqa: F401 - fixture

from lora_wise.builder.batched import (BatchedAdamW, BatchedGradScaler, clip_grad_norm_per_model, fit_group_size,
                             train_group, train_units_batched)
from lora_wise.builder.micro_datasets import SyntheticSource, load_pixels
from lora_wise.builder.train import ADAM_BETAS, ADAM_EPSILON, ADAM_WEIGHT_DECAY, TrainingJob, lora_modules, train_lora
from lora_wise import read_lora
from lora_wise.configs import MINI_RECIPE

pytestmark = pytest.mark.slow

#: A 1-image, a 5-image and a 3-image micro-dataset, each model with its own seed and prompt.
IMAGE_SETS = (("concept-00/0000",), tuple(f"concept-01/{i:04d}" for i in range(5)),
              tuple(f"concept-02/{i:04d}" for i in (3, 7, 11)))
SEEDS = (0, 5, 9)


@pytest.fixture(scope="module")
def backbone(tiny_backbone):  # noqa: F811
    from lora_wise.builder.train import load_backbone

    return load_backbone(str(tiny_backbone), device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Both trainers on one thread, as the miniature build runs the one-model trainer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _header(data: bytes) -> dict:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length])


def _assert_same_model(single: bytes, batched: bytes, tolerances=(("A", 1e-6), ("B", 2e-3))) -> None:
    assert _header(batched) == _header(single)  # keys, dtypes, shapes, offsets, adapter metadata
    a, b = read_lora(single), read_lora(batched)
    assert list(a) == list(b)
    for name in a:
        for matrix, tolerance in tolerances:
            x, y = getattr(a[name], matrix), getattr(b[name], matrix)
            scale = float(np.abs(x).max())
            assert scale > 0, (name, matrix)
            assert float(np.abs(x - y).max()) <= tolerance * scale, (name, matrix, float(np.abs(x - y).max()), scale)


def _jobs(recipe, snapshot_steps):
    return [TrainingJob(f"model-{i}", seed, f"a photo of sks thing{i}", 4, 4, recipe, snapshot_steps)
            for i, seed in enumerate(SEEDS)]


def _latents(backbone, flip=False):
    source = SyntheticSource(32)
    return [backbone.encode_images(load_pixels(source, ids, 32), flip=flip) for ids in IMAGE_SETS]


def test_batched_models_equal_one_at_a_time_peft_training(backbone):
    recipe = dataclasses.replace(MINI_RECIPE, max_train_steps=6)
    jobs, latents = _jobs(recipe, (2, 4, 6)), _latents(backbone)
    singles = [train_lora(backbone, job, lat) for job, lat in zip(jobs, latents)]
    batched = train_group(backbone, jobs, latents)
    for single, group in zip(singles, batched):
        assert [s.step for s in group] == [s.step for s in single] == [2, 4, 6]
        for s, g in zip(single, group):
            _assert_same_model(s.lora, g.lora)
    # the models are distinct: the tolerance above could not confuse two of them
    first, second = read_lora(batched[0][-1].lora), read_lora(batched[1][-1].lora)
    name = next(iter(first))
    assert np.abs(first[name].B - second[name].B).max() > 0.1 * np.abs(first[name].B).max()


def test_batched_equivalence_with_flips_batches_accumulation_warmup_and_v_prediction(backbone, tiny_backbone,  # noqa: F811
                                                                                      tmp_path):
    """Every recipe setting the batched trainer supports, at once, on an SD 2-style v-prediction scheduler."""
    import shutil

    from lora_wise.builder.train import load_backbone

    folder = tmp_path / "v-backbone"
    shutil.copytree(tiny_backbone, folder)
    config_path = folder / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), prediction_type="v_prediction")))
    v_backbone = load_backbone(str(folder), device="cpu")
    recipe = dataclasses.replace(MINI_RECIPE, max_train_steps=4, train_batch_size=2, gradient_accumulation_steps=2,
                                 flip_augmentation=True, lr_scheduler="cosine", lr_warmup_steps=2,
                                 learning_rate=1e-3)
    jobs, latents = _jobs(recipe, (2, 4)), _latents(v_backbone, flip=True)
    singles = [train_lora(v_backbone, job, lat) for job, lat in zip(jobs, latents)]
    for single, group in zip(singles, train_group(v_backbone, jobs, latents)):
        for s, g in zip(single, group):
            _assert_same_model(s.lora, g.lora)


def test_frozen_weights_are_shared_untouched_and_peft_layers_restored(backbone):
    unet = backbone.unet
    before = {k: v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}
    layers_before = [(name, id(module)) for name, module in lora_modules(unet)]
    recipe = dataclasses.replace(MINI_RECIPE, max_train_steps=2)
    train_group(backbone, _jobs(recipe, (2,)), _latents(backbone))
    after = {k: v for k, v in unet.state_dict().items() if "lora_" not in k}
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [(name, id(module)) for name, module in lora_modules(unet)] == layers_before
    assert not any(p.requires_grad for name, p in unet.named_parameters() if "lora_" not in name)


def test_group_rules_are_checked(backbone):
    recipe = dataclasses.replace(MINI_RECIPE, max_train_steps=2)
    jobs, latents = _jobs(recipe, (2,)), _latents(backbone)
    other = dataclasses.replace(jobs[1], recipe=dataclasses.replace(recipe, learning_rate=1e-3))
    with pytest.raises(ValueError, match="share rank, alpha, recipe"):
        train_group(backbone, [jobs[0], other], latents[:2])
    with pytest.raises(ValueError, match="one latent set per job"):
        train_group(backbone, jobs, latents[:2])
    with pytest.raises(ValueError, match="outside 1..2"):
        train_group(backbone, [dataclasses.replace(j, snapshot_steps=(3,)) for j in jobs], latents)


def test_train_units_batched_groups_and_reports_every_model(backbone):
    from lora_wise.builder.plan import plan_config
    from lora_wise.configs import get_config

    cfg = get_config("mini_low_r8").with_overrides(max_train_steps=2)
    cfg = dataclasses.replace(cfg, snapshot_steps=(1, 2))
    source = SyntheticSource(32)
    planned = plan_config(cfg, source.micro_datasets(cfg, 1))  # one concept, sizes 1..6
    done = []
    train_units_batched(planned, backbone, source, lambda m, snaps: done.append((m.key, [s.step for s in snaps])),
                        progress=False, group_size=4)
    assert done == [(m.key, [1, 2]) for m in planned]


# ----------------------------------------------------------------------------- per-model optimisation parts

def _stacked_and_separate(models=3, shapes=((4, 6), (5, 4)), seed=0):
    g = torch.Generator().manual_seed(seed)
    separate = [[torch.randn(shape, generator=g) for shape in shapes] for _ in range(models)]
    stacked = [torch.stack([separate[k][i] for k in range(models)]).clone() for i in range(len(shapes))]
    return stacked, [[t.clone() for t in params] for params in separate]


def test_batched_adamw_is_k_torch_adamws():
    stacked, separate = _stacked_and_separate()
    batched = BatchedAdamW(stacked, 3, lr=1e-2)
    singles = [torch.optim.AdamW(p, lr=1e-2, betas=ADAM_BETAS, weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPSILON)
               for p in separate]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(t.shape, generator=g) for t in stacked]
        for t, grad in zip(stacked, grads):
            t.grad = grad.clone()
        for k, params in enumerate(separate):
            for p, grad in zip(params, grads):
                p.grad = grad[k].clone()
        batched.step()
        for opt in singles:
            opt.step()
    for i, t in enumerate(stacked):
        for k in range(3):
            assert torch.equal(t[k], separate[k][i])  # torch's arithmetic, operation for operation


def test_masked_steps_and_per_model_loss_scales_match_k_grad_scalers():
    """A model whose gradients overflow skips its step and halves its scale; the others go on."""
    stacked, separate = _stacked_and_separate()
    batched, scaler = BatchedAdamW(stacked, 3, lr=1e-2), BatchedGradScaler(3, "cpu", init_scale=8.0,
                                                                             growth_interval=2)
    singles = [torch.optim.AdamW(p, lr=1e-2, betas=ADAM_BETAS, weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPSILON)
               for p in separate]
    scalers = [torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2) for _ in range(3)]
    overflow = {1: [1], 2: [0, 2], 4: [1]}  # step -> models whose gradients hold an inf
    g = torch.Generator().manual_seed(2)
    for step in range(6):
        grads = [torch.randn(t.shape, generator=g) for t in stacked]
        for k in overflow.get(step, []):
            grads[0][k].view(-1)[3] = float("inf")
        for t, grad in zip(stacked, grads):
            t.grad = grad * scaler.scale.view(-1, *([1] * (grad.dim() - 1)))
        found_inf = scaler.unscale_([t.grad for t in stacked])
        clip_grad_norm_per_model([t.grad for t in stacked], 1.0)
        batched.step(active=(~found_inf).tolist())
        scaler.update(found_inf)
        for k, (params, opt, single_scaler) in enumerate(zip(separate, singles, scalers)):
            scaled_one = single_scaler.scale(torch.tensor(1.0))  # what a scaled loss's gradient carries
            for p, grad in zip(params, grads):
                p.grad = grad[k] * scaled_one
            single_scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            single_scaler.step(opt)
            single_scaler.update()
        assert found_inf.tolist() == [k in overflow.get(step, []) for k in range(3)]
        assert scaler.scale.tolist() == [s.get_scale() for s in scalers]
    assert batched.steps == [5, 4, 5]  # 6 steps, less each model's overflows
    for i, t in enumerate(stacked):
        for k in range(3):
            torch.testing.assert_close(t[k], separate[k][i], rtol=1e-6, atol=1e-7)


def test_per_model_clipping_is_torch_clipping_of_each_model():
    stacked, separate = _stacked_and_separate(seed=3)
    grads = [t * 3.0 for t in stacked]
    grads[0][1] *= 1e-3  # model 1 below the norm bound: left as it is
    norms = clip_grad_norm_per_model(grads, 1.0)
    for k in range(3):
        own = [(t * 3.0)[k].clone() for t in stacked]
        if k == 1:
            own[0] *= 1e-3
        params = [torch.nn.Parameter(torch.zeros_like(o)) for o in own]
        for p, o in zip(params, own):
            p.grad = o
        total = torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch.testing.assert_close(norms[k], total)
        for p, grad in zip(params, grads):
            torch.testing.assert_close(grad[k], p.grad)


def test_group_size_fits_free_gpu_memory():
    gib = 1 << 30
    # 2 GiB fixed + 3 GiB per model in 80 GiB free: (80 * 0.85 - 2) // 3 = 22 models
    assert fit_group_size(80 * gib, 5 * gib, 8 * gib) == 22
    assert fit_group_size(4 * gib, 5 * gib, 8 * gib) == 1  # never fewer than one model
    assert fit_group_size(10_000 * gib, 5 * gib, 8 * gib, limit=64) == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed precision trains on a CUDA GPU")
def test_batched_mixed_precision_equals_one_at_a_time_on_a_gpu(tiny_backbone):  # noqa: F811
    from lora_wise.builder.train import load_backbone

    gpu = load_backbone(str(tiny_backbone), device="cuda", mixed_precision="fp16")
    recipe = dataclasses.replace(MINI_RECIPE, max_train_steps=6, mixed_precision="fp16")
    jobs, latents = _jobs(recipe, (3, 6)), _latents(gpu)
    singles = [train_lora(gpu, job, lat) for job, lat in zip(jobs, latents)]
    for single, group in zip(singles, train_group(gpu, jobs, latents)):
        for s, g in zip(single, group):  # fp16 matmuls: rounding at 1e-3 instead of 1e-7
            _assert_same_model(s.lora, g.lora, tolerances=(("A", 1e-3), ("B", 5e-2)))
