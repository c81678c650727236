"""Backbones: load a Stable Diffusion pipeline; create, pre-train and cache the miniature one.

Every backbone reaches the trainer the same way: ``StableDiffusionPipeline.from_pretrained``
on a Hub id (SD 1.5, SD 2) or a local folder.  The miniature backbone is no
exception: :func:`miniature_backbone` builds a small SD-architecture pipeline
once -- a ``UNet2DConditionModel`` whose cross-attention transformer blocks
carry SD's module names, a small ``AutoencoderKL``, a small ``CLIPTextModel``
with a byte-level ``CLIPTokenizer`` written locally, a ``DDPMScheduler`` --
pre-trains its VAE and UNet briefly on a generic procedural image
distribution, writes it with ``save_pretrained`` under
``cache_dir("backbones", <key>)``, and from then on the folder is loaded like
any other backbone.

Pre-training matters: LoRA fine-tunes of a randomly initialised UNet show no
dataset-size signal, while fine-tunes of a briefly pre-trained one show the
paper's monotonic fall of the LoRA norm with dataset size.  Everything is
deterministic from the spec's seed, and the cache key names the spec, so a
cached backbone is reused only where it would be rebuilt identically.  A file
lock keeps two processes from pre-training the same backbone twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lora_wise import jsonio
from lora_wise.cache import cache_dir
from lora_wise.configs import MINIATURE
from lora_wise.errors import BackboneError, DeviceError

#: Bump when the miniature architecture or its pre-training changes: old caches are then ignored.
#: v3: pre-trained on scenes of silhouette classes (``synthetic_images``) with the learning rate
#: annealed to zero, on a pool of 8192 images (v2: drawings of coloured shapes, constant rate, 512).
MINI_VERSION = 3
#: Written beside the pipeline: the spec and how long pre-training took.
INFO_FILE = "lora_wise_backbone.json"
#: Learning-rate schedules of the UNet's pre-training (after a linear warm-up of 5% of the steps).
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")


@dataclass(frozen=True)
class MiniBackboneSpec:
    """How the miniature backbone is made; its :meth:`key` names the cached folder."""

    seed: int = 0
    #: UNet pre-training steps (batch ``batch_size``) on the generic distribution.
    pretrain_steps: int = 1200
    #: VAE pre-training steps before the UNet's.
    vae_steps: int = 250
    batch_size: int = 16
    resolution: int = 32
    learning_rate: float = 1e-3
    vae_learning_rate: float = 3e-3
    #: Distinct pre-training images, rendered once.
    pool_size: int = 8192
    #: ``"cosine"`` anneals the UNet's learning rate to zero, so the backbone ends at rest on its
    #: distribution, as a released model is: fine-tuning it then moves it only where the
    #: fine-tuning images ask.  Stopped at a constant rate, every fine-tune first finishes the
    #: pre-training, in one direction shared by all models (docs/miniature.md).
    lr_schedule: str = "cosine"
    #: UNet width of each resolution level; every level but the lowest has cross-attention
    #: (SD 1.5: 320, 640, 1280, 1280).
    channels: tuple[int, ...] = (32, 64)
    #: Attention heads per transformer block (diffusers' ``attention_head_dim`` of SD 1.x counts
    #: heads): two heads of 16 or 32 channels run ~20% faster on a CPU than eight of 4 or 8.
    attention_heads: int = 2
    #: End of the DDPM beta schedule ("scaled_linear" from 0.00085; SD 1.5 ends at 0.012).  8 x 8
    #: latents lose their content at a lower noise level than SD's 64 x 64, so the miniature
    #: noises less: at 0.004 fewer of its training steps see only noise (bench/miniature.py).
    beta_end: float = 0.004

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, not {self.lr_schedule!r}")
        if len(self.channels) < 2:
            raise ValueError("the miniature UNet needs at least two resolution levels")

    def key(self) -> str:
        width = "-".join(str(c) for c in self.channels)
        return (f"mini-sd-v{MINI_VERSION}-seed{self.seed}-res{self.resolution}-unet{width}h{self.attention_heads}"
                f"-beta{self.beta_end:g}-vae{self.vae_steps}-pre{self.pretrain_steps}x{self.batch_size}"
                f"-pool{self.pool_size}-{self.lr_schedule}-lr{self.learning_rate:g}-{self.vae_learning_rate:g}")


#: The default miniature backbone of the mini_* configs.
DEFAULT_MINI_SPEC = MiniBackboneSpec()

# ----------------------------------------------------------------------------- architecture

def sd_pipeline_class():
    """``diffusers.StableDiffusionPipeline``, imported without transformers' notices about optional
    image-processor backends (torchvision) that a LoRA build never uses."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionPipeline
    finally:
        transformers_logging.set_verbosity(level)
    return StableDiffusionPipeline


#: Tokens per prompt: enough for the byte-level tokenizer's ``a photo of sks <word>`` (one token a byte).
MINI_MAX_TOKENS = 32
TEXT_HIDDEN = 32


def _byte_unicode() -> list[str]:
    """The printable stand-ins for the 256 bytes, in the order CLIP's byte-level BPE uses."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer with a byte-level vocabulary and no merges: any text tokenizes, byte by byte."""
    chars = _byte_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(jsonio.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(jsonio.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": MINI_MAX_TOKENS,
         "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>"}, indent=2))


def create_miniature_pipeline(spec: MiniBackboneSpec = DEFAULT_MINI_SPEC):
    """A randomly initialised miniature SD pipeline (deterministic from ``spec.seed``)."""
    import torch

    StableDiffusionPipeline = sd_pipeline_class()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(spec.seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=MINI_MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    # Three encoder levels: 32 x 32 pixels -> 8 x 8 x 4 latents (SD: 512 -> 64).
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=spec.resolution,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 32), layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False)
    latent = spec.resolution // 4
    # SD's pattern in small: cross-attention blocks outside, a plain ResNet block at the bottom,
    # a cross-attention mid block; module paths match SD's (down_blocks.0.attentions.0....attn1.to_q).
    levels = len(spec.channels)
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(spec.channels),
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=spec.attention_heads, norm_num_groups=16)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=spec.beta_end,
                              beta_schedule="scaled_linear", clip_sample=False,
                              steps_offset=1, prediction_type="epsilon")
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


# ----------------------------------------------------------------------------- pre-training

def _to_pixels(images):
    """uint8 (N, H, W, 3) -> float tensor (N, 3, H, W) in [-1, 1], as the trainer normalises."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def encode_text(pipe, prompts: list[str]):
    """Last hidden states of the text encoder for ``prompts`` (padded to the tokenizer's length)."""
    import torch

    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def pretrain_miniature(pipe, spec: MiniBackboneSpec = DEFAULT_MINI_SPEC, progress: bool = True) -> dict:
    """Pre-train the VAE (reconstruction + KL) then the UNet (DDPM noise prediction) in place.

    Data: a pool of ``spec.pool_size`` scenes of the pre-training classes with their captions
    (``synthetic_images.generic_batch``), never a micro-dataset's images.  The UNet's learning rate
    warms up over 5% of the steps, then follows ``spec.lr_schedule``.  Returns timings.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from .synthetic_images import generic_batch

    timings = {}
    data_rng = np.random.default_rng([spec.seed, 0xBAC])
    gen = torch.Generator().manual_seed(spec.seed)
    pool_size = max(spec.pool_size, 2 * spec.batch_size)
    images, captions = generic_batch(pool_size, spec.resolution, data_rng)
    pixels = _to_pixels(images)

    # -- VAE: reconstruction with a small KL term, as SD's autoencoder is trained (no GAN here).
    start = time.perf_counter()
    vae = pipe.vae
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=spec.vae_learning_rate, weight_decay=0.0)
    for _ in tqdm(range(spec.vae_steps), desc="pre-training miniature VAE", disable=not progress,
                  unit="step", leave=False):
        idx = torch.randint(0, pool_size, (spec.batch_size,), generator=gen)
        x = pixels[idx]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + 1e-4 * posterior.kl().mean() / z[0].numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        latent_mean, latent_std = posterior.mean, posterior.std
        sample = latent_mean + latent_std * torch.randn(latent_mean.shape, generator=gen)
        scaling = float(1.0 / sample.std())
    vae.register_to_config(scaling_factor=round(scaling, 5))
    timings["vae_seconds"] = time.perf_counter() - start

    # -- UNet: epsilon prediction on scaled latents, conditioned on the captions.
    start = time.perf_counter()
    unique = sorted(set(captions))
    embeddings = encode_text(pipe, unique)
    caption_index = torch.tensor([unique.index(c) for c in captions])
    scheduler = pipe.scheduler
    unet = pipe.unet
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=spec.learning_rate, weight_decay=1e-2)
    warmup = max(1, spec.pretrain_steps // 20)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if spec.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, spec.pretrain_steps - warmup)))
        return 1.0

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    scale = vae.config.scaling_factor
    for _ in tqdm(range(spec.pretrain_steps), desc="pre-training miniature UNet", disable=not progress,
                  unit="step", leave=False):
        idx = torch.randint(0, pool_size, (spec.batch_size,), generator=gen)
        eps = torch.randn(latent_mean[idx].shape, generator=gen)
        latents = (latent_mean[idx] + latent_std[idx] * eps) * scale
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (spec.batch_size,), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, embeddings[caption_index[idx]]).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        opt.zero_grad(set_to_none=True)
        timings["final_unet_loss"] = float(loss.detach())
    unet.eval().requires_grad_(False)
    timings["unet_seconds"] = time.perf_counter() - start
    return timings


# ----------------------------------------------------------------------------- the cached miniature

@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def miniature_backbone(spec: MiniBackboneSpec = DEFAULT_MINI_SPEC, progress: bool = True,
                       root: Path | None = None) -> Path:
    """The folder of the pre-trained miniature pipeline, creating it on first use.

    ``root`` defaults to ``cache_dir("backbones")``.  Concurrent callers wait on a
    lock; the folder appears atomically (written beside, then renamed), so a killed
    pre-training leaves nothing that looks finished.
    """
    import torch

    base = Path(root) if root is not None else cache_dir("backbones")
    target = base / spec.key()
    if (target / INFO_FILE).is_file():
        return target
    with _file_lock(base / f".{spec.key()}.lock"):
        if (target / INFO_FILE).is_file():  # another process finished while we waited
            return target
        threads = torch.get_num_threads()
        start = time.perf_counter()
        pipe = create_miniature_pipeline(spec)
        timings = pretrain_miniature(pipe, spec, progress=progress)
        staging = Path(tempfile.mkdtemp(dir=base, prefix=f".{spec.key()}."))
        try:
            with _quiet_loading():
                pipe.save_pretrained(staging, safe_serialization=True)
            timings["total_seconds"] = time.perf_counter() - start
            (staging / INFO_FILE).write_text(jsonio.dumps(
                {"spec": asdict(spec), "key": spec.key(), "version": MINI_VERSION, "timings": timings,
                 "torch_threads": threads}, indent=2))
            if target.exists():  # a leftover without INFO_FILE: an interrupted earlier attempt
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def backbone_info(folder: str | os.PathLike) -> dict | None:
    """The miniature backbone's spec and timings, or None for another backbone."""
    path = Path(folder) / INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- loading

def resolve_backbone(backbone: str, mini_spec: MiniBackboneSpec = DEFAULT_MINI_SPEC,
                     progress: bool = True) -> str:
    """What ``from_pretrained`` should load for a config's ``backbone`` field.

    ``MINIATURE`` becomes the cached miniature folder (built on first use); a path
    must exist; anything else is taken as a Hub id.
    """
    if backbone == MINIATURE:
        return str(miniature_backbone(mini_spec, progress=progress))
    expanded = os.path.expanduser(backbone)
    if os.path.exists(expanded):
        if not Path(expanded, "model_index.json").is_file():
            raise BackboneError(f"backbone folder {backbone} has no model_index.json; it is not a diffusers "
                                f"pipeline folder. Pass a folder written by `save_pretrained` or a Hub id.")
        return expanded
    if backbone.startswith((".", "/", "~")) or backbone.count("/") != 1:
        raise BackboneError(f"backbone folder {backbone} does not exist; pass an existing diffusers pipeline "
                            f"folder or a Hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5.")
    return backbone


def pick_device(device: str | None = None) -> str:
    """``device`` when given, else CUDA when available, else the CPU."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} was asked for but CUDA is not available; "
                              f"pass --device cpu or run on a machine with a GPU.")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def _quiet_loading():
    """No per-component loading bars: a build shows its own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()


def load_pipeline(source: str, device: str = "cpu", dtype=None):
    """``StableDiffusionPipeline.from_pretrained(source)`` with a clear error when it cannot load.

    ``dtype`` (a torch dtype) is the dtype of the frozen weights: float16 for mixed
    precision on a GPU, float32 on a CPU.
    """
    import torch

    StableDiffusionPipeline = sd_pipeline_class()
    dtype = dtype or torch.float32
    try:
        with _quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(source, safety_checker=None,
                                                           requires_safety_checker=False, dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as exc:
        local = os.path.exists(source)
        where = f"folder {source}" if local else f"Hub repo {source}"
        hint = ("Check that it was written by `save_pretrained`." if local else
                "Log in / go online so it can be downloaded (it is cached afterwards), or download it on a "
                "machine with network access and pass the local folder with --backbone.")
        raise BackboneError(f"could not load the Stable Diffusion pipeline from {where}: {exc}. {hint}") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
