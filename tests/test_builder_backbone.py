"""The miniature backbone: SD's architecture and names, from_pretrained round trip, pre-training, cache, lock."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from builder_fixtures import TINY_SPEC, tiny_backbone  # noqa: F401 - fixture

from lora_wise.builder import backbones
from lora_wise.builder.backbones import (INFO_FILE, MiniBackboneSpec, create_miniature_pipeline, miniature_backbone,
                               resolve_backbone)


def test_miniature_pipeline_loads_with_from_pretrained_and_has_sd_names(tiny_backbone):  # noqa: F811
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_backbone), safety_checker=None,
                                                   requires_safety_checker=False)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.scheduler, DDPMScheduler)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    names = {n for n, _ in pipe.unet.named_modules()}
    for path in ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
                 "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
                 "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
                 "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v"):
        assert path in names
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_backbone / "tokenizer"))
    ids = tokenizer("a photo of sks Ünïcode 日本 dog!", padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length).input_ids
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id in ids
    assert tokenizer.unk_token_id not in ids[1:ids.index(tokenizer.eos_token_id)]  # every byte has a token
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 4  # 32 x 32 pixels -> 8 x 8 latents
    image = pipe("a photo of sks star", height=32, width=32, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_creation_is_deterministic_from_the_seed():
    a = create_miniature_pipeline(MiniBackboneSpec(seed=3)).unet.state_dict()
    b = create_miniature_pipeline(MiniBackboneSpec(seed=3)).unet.state_dict()
    c = create_miniature_pipeline(MiniBackboneSpec(seed=4)).unet.state_dict()
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)


def test_pretraining_teaches_the_unet_to_denoise():
    """After brief pre-training the noise-prediction error on unseen generic images falls."""
    import torch

    from lora_wise.builder.backbones import encode_text, pretrain_miniature
    from lora_wise.builder.synthetic_images import generic_batch

    spec = MiniBackboneSpec(seed=1, pretrain_steps=60, vae_steps=40, batch_size=8, pool_size=64)
    pipe = create_miniature_pipeline(spec)
    images, captions = generic_batch(32, 32, np.random.default_rng(99))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

    def denoising_error() -> float:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=g)
            t = torch.randint(100, 900, (len(latents),), generator=g)
            pred = pipe.unet(pipe.scheduler.add_noise(latents, noise, t), t, encode_text(pipe, captions)).sample
            return float(((pred - noise) ** 2).mean())

    before = denoising_error()
    timings = pretrain_miniature(pipe, spec, progress=False)
    after = denoising_error()
    assert after < 0.8 * before and timings["unet_seconds"] > 0


def test_cached_backbone_is_reused_and_built_once_under_concurrency(tmp_path, monkeypatch):
    spec = dataclasses.replace(TINY_SPEC, seed=5, pretrain_steps=2, vae_steps=2)
    calls = []
    real = backbones.pretrain_miniature

    def counting(pipe, spec, progress=True):
        calls.append(spec)
        return real(pipe, spec, progress=progress)

    monkeypatch.setattr(backbones, "pretrain_miniature", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(miniature_backbone(spec, False, tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results[0] == results[1] == tmp_path / spec.key()
    assert (results[0] / INFO_FILE).is_file() and (results[0] / "model_index.json").is_file()
    assert miniature_backbone(spec, False, tmp_path) == results[0] and len(calls) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mini") and p.is_dir()]


def test_resolve_backbone_sorts_hub_ids_folders_and_the_miniature(tmp_path, tiny_backbone):  # noqa: F811
    assert resolve_backbone("stable-diffusion-v1-5/stable-diffusion-v1-5") == \
        "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert resolve_backbone(str(tiny_backbone)) == str(tiny_backbone)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_backbone(str(tmp_path / "nope"))


def test_unreachable_hub_backbone_is_a_clear_error():
    from lora_wise.builder.backbones import BackboneError, load_pipeline

    with pytest.raises(BackboneError, match="Hub repo stable-diffusion-v1-5/stable-diffusion-v1-5.*--backbone"):
        load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")  # HF_HUB_OFFLINE=1 in tests


def test_lora_norm_falls_with_dataset_size_on_the_pretrained_backbone(tiny_backbone):  # noqa: F811
    """The paper's Fig. 2a in miniature: fewer images, larger LoRA (mean Frobenius norm of B A)."""
    import lora_wise
    from lora_wise.configs import MINI_RECIPE, get_config

    from lora_wise.builder.micro_datasets import SyntheticSource, draw_image_ids, load_pixels
    from lora_wise.builder.train import TrainingJob, load_backbone, train_lora

    backbone = load_backbone(str(tiny_backbone), device="cpu")
    source = SyntheticSource(32)
    recipe = dataclasses.replace(MINI_RECIPE, max_train_steps=60)
    for micro in source.micro_datasets(get_config("mini_low_r8"), 2):
        norms = {}
        for size in (1, 8):
            pixels = load_pixels(source, draw_image_ids(micro, size, 0), 32)
            job = TrainingJob(micro.name, 0, f"a photo of sks {micro.class_word}", 8, 8, recipe, (60,))
            (snapshot,) = train_lora(backbone, job, backbone.encode_images(pixels))
            norms[size] = float(lora_wise.extract(lora_wise.read_lora(snapshot.lora)).norms["BA"].mean())
        assert norms[1] > 1.1 * norms[8], (micro.name, norms)

