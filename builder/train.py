"""One-model DreamBooth-LoRA trainer: diffusers + PEFT, as diffusers' ``train_dreambooth_lora.py``.

What happens to one model (a :class:`TrainingJob`):

* the backbone (any ``StableDiffusionPipeline.from_pretrained`` source) is frozen:
  VAE, text encoder and UNet; a PEFT ``LoraConfig(r, lora_alpha, init_lora_weights=
  "gaussian", target_modules=[to_q, to_k, to_v, to_out.0])`` is added to the UNet
  with ``unet.add_adapter`` (once per backbone and adapter shape; every model then
  re-initialises all LoRA weights from its own generator and gets a fresh optimiser,
  which is the same as a freshly injected adapter);
* the instance prompt is encoded once; each image is encoded by the VAE once
  (posterior mean and std, and of the flipped image when flips are on) and a
  latent is *sampled* from that posterior at every step, as encoding every step
  would, for a fraction of the cost;
* DDPM forward noising at a uniformly drawn timestep; MSE between the UNet's
  prediction and the noise (or the velocity where the scheduler's
  ``prediction_type`` is ``v_prediction``, as SD 2); AdamW (betas 0.9/0.999,
  weight decay 1e-2, eps 1e-8, the script's defaults), the recipe's learning
  rate and schedule, gradients clipped to norm 1.0;
* mixed precision on a GPU (frozen weights in fp16, LoRA weights in fp32,
  autocast, a gradient scaler), plain float32 on a CPU;
* at every snapshot step the LoRA is serialised by
  ``StableDiffusionPipeline.save_lora_weights(unet_lora_layers=get_peft_model_state_dict(unet))``
  -- the file ``pipeline.load_lora_weights`` loads -- and kept as bytes.

RNG protocol -- every random number of a model comes from its own generator, so a
K-model batched trainer reproduces each model exactly by drawing the same
numbers in the same order, model by model (:func:`init_lora_weights` and
:func:`draw_step` are the shared implementation)::

    g = torch.Generator("cpu").manual_seed(job.seed)
    # 0. LoRA init, once: for each LoRA layer in unet.named_modules() order,
    #    lora_A.weight.normal_(0, 1 / rank, generator=g)      (PEFT's "gaussian" init)
    #    lora_B.weight = 0
    # then for each optimiser step 1..max_train_steps and each of its
    # gradient_accumulation_steps micro-batches, with B = train_batch_size,
    # (C, h, w) the latent shape and T = num_train_timesteps:
    # 1. image indices: the next B of an endless stream of epochs, each epoch
    #    torch.randperm(n, generator=g), drawn when the previous one runs out
    # 2. flips, only if flip_augmentation: torch.rand(B, generator=g) < 0.5
    # 3. VAE posterior sample: eps = torch.randn(B, C, h, w, generator=g);
    #    latents = (mean[idx] + std[idx] * eps) * scaling_factor
    # 4. noise = torch.randn(B, C, h, w, generator=g)
    # 5. timesteps = torch.randint(0, T, (B,), generator=g)

All draws happen on the CPU generator, then move to the device, so a GPU build
draws the same numbers as a CPU build.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from lora_wise.configs import Recipe
from lora_wise.lora import canonical_safetensors

#: diffusers' DreamBooth-LoRA script's defaults, used for every model.
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPSILON = 1e-8
MAX_GRAD_NORM = 1.0
ADAPTER_NAME = "default"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class TrainingJob:
    """Everything that determines one fine-tuned model (its images come separately, as pixels)."""

    model_id: str
    seed: int
    prompt: str
    rank: int
    lora_alpha: int
    recipe: Recipe
    snapshot_steps: tuple[int, ...]

    @property
    def max_train_steps(self) -> int:
        return self.recipe.max_train_steps


@dataclass
class Snapshot:
    step: int
    lora: bytes


@dataclass
class LatentStats:
    """VAE posterior of each training image (n, C, h, w), and of its mirror image when flips are on."""

    mean: "torch.Tensor"  # noqa: F821
    std: "torch.Tensor"  # noqa: F821
    flipped_mean: "torch.Tensor | None" = None  # noqa: F821
    flipped_std: "torch.Tensor | None" = None  # noqa: F821

    @property
    def count(self) -> int:
        return self.mean.shape[0]


# ----------------------------------------------------------------------------- the backbone, loaded once

@dataclass
class Backbone:
    """A loaded, frozen SD pipeline with what training needs from it."""

    source: str
    pipeline: object
    device: str
    weight_dtype: object
    mixed_precision: bool
    noise_scheduler: object
    _prompts: dict = field(default_factory=dict)
    _adapter_key: tuple | None = None

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    def encode_prompt(self, prompt: str):
        """Text-encoder hidden states (1, L, D) of ``prompt``, cached per prompt."""
        import torch

        if prompt not in self._prompts:
            tok = self.pipeline.tokenizer(prompt, padding="max_length", truncation=True, return_tensors="pt",
                                          max_length=self.pipeline.tokenizer.model_max_length)
            with torch.no_grad():
                self._prompts[prompt] = self.pipeline.text_encoder(tok.input_ids.to(self.device))[0]
        return self._prompts[prompt]

    def encode_images(self, pixels: np.ndarray, flip: bool = False, batch_size: int = 16) -> LatentStats:
        """VAE posterior (mean, std) of every image once; of its mirror too when ``flip``."""
        import torch

        def encode(array: np.ndarray):
            means, stds = [], []
            with torch.no_grad():
                for start in range(0, len(array), batch_size):
                    chunk = torch.from_numpy(array[start:start + batch_size]).to(self.device, self.weight_dtype)
                    posterior = self.vae.encode(chunk).latent_dist
                    means.append(posterior.mean.float())
                    stds.append(posterior.std.float())
            return torch.cat(means), torch.cat(stds)

        mean, std = encode(pixels)
        stats = LatentStats(mean, std)
        if flip:
            stats.flipped_mean, stats.flipped_std = encode(np.ascontiguousarray(pixels[..., ::-1]))
        return stats


def load_backbone(source: str, device: str | None = None, mixed_precision: str = "no") -> Backbone:
    """Load and freeze a backbone; fp16 (or bf16) frozen weights only on a GPU with mixed precision."""
    import torch
    from diffusers import DDPMScheduler

    from .backbones import load_pipeline, pick_device

    device = pick_device(device)
    use_amp = device.startswith("cuda") and mixed_precision in ("fp16", "bf16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision] if use_amp else torch.float32
    pipe = load_pipeline(source, device=device, dtype=dtype)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    return Backbone(source=source, pipeline=pipe, device=device, weight_dtype=dtype, mixed_precision=use_amp,
                    noise_scheduler=noise_scheduler)


# ----------------------------------------------------------------------------- the shared RNG protocol

class ImageOrder:
    """An endless stream of epochs over ``n`` images; each epoch a fresh ``randperm`` from the model's generator."""

    def __init__(self, n: int):
        self.n = n
        self._pending: list[int] = []

    def take(self, generator, count: int) -> list[int]:
        import torch

        while len(self._pending) < count:
            self._pending.extend(torch.randperm(self.n, generator=generator).tolist())
        taken, self._pending = self._pending[:count], self._pending[count:]
        return taken


@dataclass
class StepDraws:
    """The random numbers of one micro-batch of one model (CPU tensors)."""

    indices: "torch.Tensor"  # noqa: F821  (B,) long
    flips: "torch.Tensor | None"  # noqa: F821  (B,) bool, or None without flip augmentation
    latent_eps: "torch.Tensor"  # noqa: F821  (B, C, h, w)
    noise: "torch.Tensor"  # noqa: F821  (B, C, h, w)
    timesteps: "torch.Tensor"  # noqa: F821  (B,) long


def draw_step(generator, order: ImageOrder, batch_size: int, latent_shape: Sequence[int],
              num_train_timesteps: int, flip: bool) -> StepDraws:
    """Draw one micro-batch's random numbers in the protocol's order (see the module docstring)."""
    import torch

    indices = torch.tensor(order.take(generator, batch_size), dtype=torch.long)
    flips = torch.rand(batch_size, generator=generator) < 0.5 if flip else None
    shape = (batch_size, *latent_shape)
    latent_eps = torch.randn(shape, generator=generator)
    noise = torch.randn(shape, generator=generator)
    timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator)
    return StepDraws(indices, flips, latent_eps, noise, timesteps)


def lora_modules(unet) -> list[tuple[str, object]]:
    """(module path, PEFT LoRA layer) of every adapted layer, in ``named_modules`` order."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in unet.named_modules()
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A]


def init_lora_weights(unet, rank: int, generator) -> None:
    """PEFT's gaussian init drawn from the model's generator: A ~ N(0, 1/rank), B = 0, layer by layer."""
    import torch

    with torch.no_grad():
        for _, module in lora_modules(unet):
            a = module.lora_A[ADAPTER_NAME].weight
            draw = torch.empty(a.shape, dtype=torch.float32).normal_(0.0, 1.0 / rank, generator=generator)
            a.copy_(draw)
            module.lora_B[ADAPTER_NAME].weight.zero_()


def sample_latents(stats: LatentStats, draws: StepDraws, scaling_factor: float):
    """Latents of the drawn images (mirror images where flipped), sampled with the drawn eps."""
    import torch

    mean, std = stats.mean[draws.indices], stats.std[draws.indices]
    if draws.flips is not None:
        if stats.flipped_mean is None:
            raise ValueError("flip augmentation needs the flipped images' latents (encode_images(flip=True))")
        f = draws.flips.to(mean.device)[:, None, None, None]
        mean = torch.where(f, stats.flipped_mean[draws.indices], mean)
        std = torch.where(f, stats.flipped_std[draws.indices], std)
    return (mean + std * draws.latent_eps.to(mean.device)) * scaling_factor


# ----------------------------------------------------------------------------- the adapter and its file

def lora_config(rank: int, alpha: int, target_modules: Iterable[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules))


def lora_adapter(backbone: "Backbone", rank: int, alpha: int, target_modules: Iterable[str]):
    """The UNet's PEFT LoRA adapter for (rank, alpha, targets): added on first use, then reused.

    Each model re-initialises every LoRA weight (:func:`init_lora_weights`) and gets a
    fresh optimiser, so reusing the injected layers is the same as injecting new ones,
    without re-wrapping the UNet's modules for every model.  A different rank, alpha
    or target list replaces the adapter.
    """
    key = (rank, alpha, tuple(target_modules))
    unet = backbone.unet
    if backbone._adapter_key != key:
        if backbone._adapter_key is not None:
            unet.unload_lora()
        unet.add_adapter(lora_config(rank, alpha, target_modules), adapter_name=ADAPTER_NAME)
        backbone._adapter_key = key
    return lora_modules(unet)


def remove_lora_adapter(backbone: "Backbone") -> None:
    """Give the UNet back without LoRA layers (the next model adds them again)."""
    if backbone._adapter_key is not None:
        backbone.unet.unload_lora()
        backbone._adapter_key = None


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def adapter_metadata(unet) -> dict:
    """The UNet's PEFT adapter config as diffusers stores it in a LoRA file (sets as sorted lists)."""
    return _jsonable(unet.peft_config[ADAPTER_NAME].to_dict())


def lora_file(state: dict, metadata: dict) -> bytes:
    """A PEFT-named LoRA state dict as the safetensors file diffusers writes, canonical header.

    ``state`` maps ``<module path>.lora_A.weight`` / ``.lora_B.weight`` to float32 CPU
    tensors (the keys of ``get_peft_model_state_dict``); ``metadata`` is
    :func:`adapter_metadata`.  Both trainers serialise through this one function, so a
    batched model's file has the same keys, metadata and header as a one-model file.
    """
    from .backbones import sd_pipeline_class

    StableDiffusionPipeline = sd_pipeline_class()
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=state, unet_lora_adapter_metadata=metadata,
                                                  weight_name=LORA_WEIGHT_NAME)
        return canonical_safetensors((Path(tmp) / LORA_WEIGHT_NAME).read_bytes())


def lora_safetensors(unet) -> bytes:
    """The UNet's LoRA as the safetensors file diffusers writes (PEFT naming, adapter metadata).

    Sets in the adapter config become sorted lists first, so the bytes do not depend
    on the process's string hashing.
    """
    import torch
    from peft.utils import get_peft_model_state_dict

    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME).items()}
    return lora_file(state, adapter_metadata(unet))


# ----------------------------------------------------------------------------- training one model

def _lr_scheduler(recipe: Recipe, optimizer):
    from diffusers.optimization import get_scheduler

    return get_scheduler(recipe.lr_scheduler, optimizer, num_warmup_steps=recipe.lr_warmup_steps,
                         num_training_steps=recipe.max_train_steps)


def denoising_step(backbone: Backbone, x0, noise, timesteps, embeddings):
    """DDPM forward noising of ``x0`` and the UNet's prediction: ``(prediction, target)``.

    The target is the noise, or the velocity where the scheduler predicts ``v_prediction``
    (SD 2); the UNet runs under autocast where the backbone trains in mixed precision.
    """
    import torch

    scheduler = backbone.noise_scheduler
    noisy = scheduler.add_noise(x0, noise, timesteps)
    if backbone.prediction_type == "epsilon":
        target = noise
    elif backbone.prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction type {backbone.prediction_type!r}")
    with torch.autocast("cuda", dtype=backbone.weight_dtype, enabled=backbone.mixed_precision):
        pred = backbone.unet(noisy.to(backbone.weight_dtype), timesteps, embeddings, return_dict=False)[0]
    return pred, target


def train_lora(backbone: Backbone, job: TrainingJob, latents: LatentStats,
               step_callback: Callable[[int, object], None] | None = None) -> list[Snapshot]:
    """Fine-tune one LoRA on ``latents`` (the job's images, encoded); return its snapshots in step order.

    ``step_callback(step, loss)`` follows every optimiser step; ``loss`` is a 0-d tensor
    (converting it synchronises a GPU, so a callback should do it rarely).
    """
    import torch
    import torch.nn.functional as F

    recipe = job.recipe
    unknown = sorted(set(job.snapshot_steps) - set(range(1, recipe.max_train_steps + 1)))
    if unknown:
        raise ValueError(f"{job.model_id}: snapshot steps {unknown} are outside 1..{recipe.max_train_steps}")
    unet = backbone.unet
    device = backbone.device
    generator = torch.Generator("cpu").manual_seed(job.seed)
    prompt = backbone.encode_prompt(job.prompt)
    batch = recipe.train_batch_size
    embeddings = prompt.expand(batch, -1, -1)
    latent_shape = tuple(latents.mean.shape[1:])
    snapshots = []
    layers = lora_adapter(backbone, job.rank, job.lora_alpha, recipe.target_modules)
    init_lora_weights(unet, job.rank, generator)
    params = [p for _, m in layers for p in (m.lora_A[ADAPTER_NAME].weight, m.lora_B[ADAPTER_NAME].weight)]
    for p in params:  # LoRA weights train in float32 even when the frozen weights are fp16
        p.data = p.data.float()
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, betas=ADAM_BETAS,
                                  weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPSILON)
    lr_scheduler = _lr_scheduler(recipe, optimizer)
    scaler = torch.amp.GradScaler("cuda") if backbone.mixed_precision else None
    order = ImageOrder(latents.count)
    wanted = set(job.snapshot_steps)
    for step in range(1, recipe.max_train_steps + 1):
        total = None
        for _ in range(recipe.gradient_accumulation_steps):
            draws = draw_step(generator, order, batch, latent_shape, backbone.num_train_timesteps,
                              recipe.flip_augmentation)
            x0 = sample_latents(latents, draws, backbone.scaling_factor)
            pred, target = denoising_step(backbone, x0, draws.noise.to(device), draws.timesteps.to(device),
                                          embeddings)
            loss = F.mse_loss(pred.float(), target.float()) / recipe.gradient_accumulation_steps
            (scaler.scale(loss) if scaler else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step in wanted:
            snapshots.append(Snapshot(step, lora_safetensors(unet)))
        if step_callback is not None:
            step_callback(step, total)
    return snapshots


# ----------------------------------------------------------------------------- the model loop

@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` (unchanged for None) during the block."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_units(models: Sequence["PlannedModel"], backbone: Backbone, source,  # noqa: F821
                on_done: Callable[["PlannedModel", list[Snapshot]], None], progress: bool = True) -> None:  # noqa: F821
    """Train planned models one at a time; ``on_done(model, snapshots)`` as each finishes.

    This is the trainer interface of a build: a batched trainer or a distributed
    executor takes the same arguments and calls ``on_done`` once per model, in any
    order.  Images are loaded, checked and VAE-encoded once per model.
    """
    from tqdm.auto import tqdm

    from .micro_datasets import load_pixels

    name = models[0].unit.config if models else "models"
    units = tqdm(models, desc=name, unit="model", disable=not progress, dynamic_ncols=True)
    for model in units:
        units.set_postfix_str(model.unit.model_id, refresh=False)
        recipe = model.job.recipe
        pixels = load_pixels(source, model.image_ids, recipe.resolution)
        latents = backbone.encode_images(pixels, flip=recipe.flip_augmentation)
        steps = tqdm(total=recipe.max_train_steps, desc="steps", unit="step", leave=False,
                     disable=not progress, dynamic_ncols=True)

        def tick(step: int, loss, steps=steps) -> None:
            steps.update()
            if progress and step % 50 == 0:
                steps.set_postfix(loss=f"{float(loss):.4f}", refresh=False)

        try:
            snapshots = train_lora(backbone, model.job, latents, step_callback=tick)
        finally:
            steps.close()
        on_done(model, snapshots)
