"""K-model batched trainer: fine-tune K LoRA models of one config in one forward/backward.

The one-model trainer (:mod:`lora_wise.builder.train`) runs the miniature UNet at batch 1,
where a CPU spends its time in per-module Python overhead, and SD 1.5 at batch 1,
where a GPU sits mostly idle.  This trainer fine-tunes a *group* of K models over
one frozen backbone at once, and every model of the group ends with the snapshots
the one-model trainer would give it, to float tolerance:

* **its own random numbers** -- each model has its own ``torch.Generator`` seeded
  with its seed and draws through the shared protocol functions of
  :mod:`lora_wise.builder.train` (:func:`~lora_wise.builder.train.init_lora_weights`,
  :class:`~lora_wise.builder.train.ImageOrder`, :func:`~lora_wise.builder.train.draw_step`,
  :func:`~lora_wise.builder.train.sample_latents`), model by model, in the documented order;
* **its own LoRA weights** -- each adapted projection (PEFT's target modules:
  ``to_q``, ``to_k``, ``to_v``, ``to_out.0``) is swapped, for the group's training,
  for a :class:`StackedLoRALinear` holding A (K, r, k) and B (K, d, r): the frozen
  base ``nn.Linear`` runs once on the whole batch (shared, never modified), and
  each model's slice of the batch gets its own low-rank update through batched
  matmuls, exactly PEFT's ``base(x) + B(A(x)) * alpha / r``;
* **one UNet forward and backward for the group** -- batch = K x train_batch_size,
  model k owning rows ``k*B .. (k+1)*B - 1``.  Nothing in an SD UNet mixes samples
  of a batch (group norm, attention, time embeddings are per sample; there is no
  batch norm), so model k's loss depends only on its own rows and LoRA slice;
  the group's loss is the *sum* of the models' own mean losses, so each model's
  gradient is the gradient of its own loss;
* **its own optimiser state** -- :class:`BatchedAdamW` is AdamW over the stacked
  tensors (AdamW is element-wise, so this is K AdamWs; with equal step counts it
  runs torch's own single-tensor AdamW arithmetic) with a step count per model;
* **its own gradient clipping** -- each model's gradient norm over all its LoRA
  tensors is clipped to ``MAX_GRAD_NORM`` (:func:`clip_grad_norm_per_model`);
* **its own loss scale** on a GPU with mixed precision -- :class:`BatchedGradScaler`
  is ``torch.amp.GradScaler`` per model: a model whose gradients overflow skips its
  step and halves its scale while the others step on, as K separate runs would;
* **its own snapshots**, serialised by :func:`lora_wise.builder.train.lora_file`, the one
  serialiser of both trainers (same keys, metadata and canonical header).

Every recipe setting is supported (train batch size, gradient accumulation, flips,
epsilon and v-prediction, fp16/bf16 mixed precision); a group needs one recipe,
rank, alpha and target list, which every model of a config shares.  Groups are
formed from consecutive models (:func:`lora_wise.builder.plan.groups_of`), so a build's grouping
-- and so its float rounding -- is a function of its plan and the group size.

This module imports torch; the build imports it only when training starts.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .plan import group_key, groups_of
from .train import (ADAM_BETAS, ADAM_EPSILON, ADAM_WEIGHT_DECAY, ADAPTER_NAME, MAX_GRAD_NORM, Backbone,
                    ImageOrder, LatentStats, Snapshot, TrainingJob, _lr_scheduler, adapter_metadata, denoising_step,
                    draw_step, init_lora_weights, lora_adapter, lora_file, sample_latents)

#: Models per group on a CPU: bench/build.py measured the miniature's throughput rising up to K = 64.
DEFAULT_CPU_GROUP_SIZE = 64
#: Upper bound of the group size chosen from free GPU memory.
MAX_GPU_GROUP_SIZE = 64
#: Share of the free GPU memory a group may plan to use (the rest absorbs fragmentation).
GPU_MEMORY_HEADROOM = 0.85


# ----------------------------------------------------------------------------- stacked LoRA layers

class StackedLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus K LoRA updates, model k applied to the k-th K-th of the batch.

    ``forward(x)`` with x (K*B, ..., k): ``base(x) + (x_k A_k^T B_k^T) * scaling`` for each
    model's rows, as PEFT's ``lora.Linear`` computes ``base(x) + lora_B(lora_A(x)) * scaling``.
    """

    def __init__(self, base: nn.Linear, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float):
        super().__init__()
        self.base_layer = base
        self.lora_a = lora_a  # (K, r, in_features), plain tensors: the optimiser owns them
        self.lora_b = lora_b  # (K, out_features, r)
        self.scaling = scaling

    def forward(self, x):
        result = self.base_layer(x)
        models = self.lora_a.shape[0]
        if x.shape[0] % models:
            raise RuntimeError(f"a batch of {x.shape[0]} rows cannot be split among {models} models")
        result_dtype = result.dtype
        if x.dtype != self.lora_a.dtype:  # as PEFT casts the input to the LoRA weights' dtype
            x = x.to(self.lora_a.dtype)
        per_model = x.reshape(models, -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(per_model, self.lora_a.transpose(1, 2)), self.lora_b.transpose(1, 2))
        return (result + (delta * self.scaling).reshape(result.shape)).to(result_dtype)


@contextlib.contextmanager
def stacked_lora(unet, layers: Sequence[tuple[str, object]], stacks_a, stacks_b):
    """Swap each PEFT LoRA layer of ``layers`` for a :class:`StackedLoRALinear` during the block.

    The PEFT layers (and their frozen ``base_layer``) are put back on exit, whatever happens.
    """
    swapped = []
    try:
        for (name, peft_layer), a, b in zip(layers, stacks_a, stacks_b):
            parent_name, _, child = name.rpartition(".")
            parent = unet.get_submodule(parent_name)
            setattr(parent, child, StackedLoRALinear(peft_layer.base_layer, a, b, peft_layer.scaling[ADAPTER_NAME]))
            swapped.append((parent, child, peft_layer))
        yield
    finally:
        for parent, child, peft_layer in swapped:
            setattr(parent, child, peft_layer)


# ----------------------------------------------------------------------------- per-model optimisation

def _per_model(values, like):
    """A (K, 1, 1, ...) tensor broadcasting one value per model over stacked tensors like ``like``."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


class BatchedAdamW(torch.optim.Optimizer):
    """AdamW over tensors stacked along dim 0 (one slice per model); one step count per model.

    The arithmetic is torch's single-tensor AdamW (decoupled weight decay, bias-corrected
    moments); when every model steps with the same count -- always, without mixed
    precision -- it runs exactly torch's operations with the same Python scalars.  With a
    mask, models whose step is skipped (a GradScaler overflow) keep their weights, moments
    and step count.  A ``torch.optim.Optimizer``, so the recipe's LR schedulers drive its ``lr``.
    """

    def __init__(self, params, models: int, lr: float, betas=ADAM_BETAS, weight_decay: float = ADAM_WEIGHT_DECAY,
                 eps: float = ADAM_EPSILON):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, eps=eps))
        self.models = models
        self.steps = [0] * models

    @torch.no_grad()
    def step(self, active: Sequence[bool] | None = None) -> None:
        """One AdamW step of every model, or only of those ``active`` marks."""
        stepping = [True] * self.models if active is None else [bool(a) for a in active]
        if not any(stepping):
            return
        self.steps = [s + 1 if go else s for s, go in zip(self.steps, stepping)]
        uniform = all(stepping) and len(set(self.steps)) == 1
        skipped = [k for k, go in enumerate(stepping) if not go]
        for group in self.param_groups:
            lr, (beta1, beta2), weight_decay, eps = group["lr"], group["betas"], group["weight_decay"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], param.grad
                kept = [t[skipped].clone() for t in (param, exp_avg, exp_avg_sq)] if skipped else []
                param.mul_(1 - lr * weight_decay)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if uniform:  # torch's single-tensor AdamW, operation for operation
                    step = self.steps[0]
                    step_size = lr / (1 - beta1 ** step)
                    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                    param.addcdiv_(exp_avg, denom, value=-step_size)
                else:
                    counts = [max(s, 1) for s in self.steps]  # a model that never stepped is restored below
                    neg_step_size = _per_model([-(lr / (1 - beta1 ** s)) for s in counts], param)
                    bias_correction2_sqrt = _per_model([(1 - beta2 ** s) ** 0.5 for s in counts], param)
                    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                    param.add_(exp_avg.mul(neg_step_size).div_(denom))
                for tensor, old in zip((param, exp_avg, exp_avg_sq), kept):
                    tensor[skipped] = old


def clip_grad_norm_per_model(grads, max_norm: float):
    """``torch.nn.utils.clip_grad_norm_`` of each model's own gradients (slices along dim 0).

    Returns the per-model total norms (K,) before clipping.
    """
    models = grads[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(models, -1), 2, dim=1) for g in grads])
    total = torch.linalg.vector_norm(norms, 2, dim=0)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).view(-1, *([1] * (g.dim() - 1))))
    return total


class BatchedGradScaler:
    """``torch.amp.GradScaler`` for K models at once: one loss scale and growth tracker per model.

    Same defaults and update rule as torch's (init 2**16, x2 after 2000 finite steps, x0.5
    and a skipped step on an overflow), applied to each model on its own.
    """

    def __init__(self, models: int, device, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.scale = torch.full((models,), init_scale, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros(models, dtype=torch.int32, device=device)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval

    def scale_losses(self, losses):
        """Each model's loss times its scale: (K,)."""
        return losses * self.scale.to(losses.device)

    def unscale_(self, grads):
        """Divide each model's gradients by its scale (as torch: times the float32 reciprocal); (K,) overflow flags."""
        inv_scale = self.scale.double().reciprocal().float()
        found_inf = torch.zeros_like(self.scale, dtype=torch.bool)
        for g in grads:
            g.mul_(inv_scale.view(-1, *([1] * (g.dim() - 1))))
            found_inf |= ~torch.isfinite(g.reshape(g.shape[0], -1)).all(dim=1)
        return found_inf

    def update(self, found_inf) -> None:
        grown = self.growth_tracker + 1
        grow = (~found_inf) & (grown == self.growth_interval)
        new_scale = self.scale * self.growth_factor
        grow_ok = grow & torch.isfinite(new_scale)
        self.scale = torch.where(found_inf, self.scale * self.backoff_factor,
                                 torch.where(grow_ok, new_scale, self.scale))
        self.growth_tracker = torch.where(found_inf | grow, torch.zeros_like(grown), grown).to(torch.int32)


# ----------------------------------------------------------------------------- training one group

def _state_keys(unet, layers) -> list[tuple[str, int, str]]:
    """(state-dict key, layer index, "A" or "B") in ``get_peft_model_state_dict``'s order.

    The keys are PEFT's own (read off the injected adapter), so a batched model's file
    names its tensors exactly as a one-model file does.
    """
    from peft.utils import get_peft_model_state_dict

    index = {}
    for i, (name, _) in enumerate(layers):
        index[f"{name}.lora_A.weight"] = (i, "A")
        index[f"{name}.lora_B.weight"] = (i, "B")
    keys = list(get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME))
    if set(keys) != set(index):
        raise RuntimeError("PEFT's LoRA state dict names tensors this trainer does not know "
                           f"({sorted(set(keys) ^ set(index))[:4]}); train with --batch-models 1.")
    return [(key, *index[key]) for key in keys]


def train_group(backbone: Backbone, jobs: Sequence[TrainingJob], latents: Sequence[LatentStats],
                step_callback: Callable[[int, object], None] | None = None) -> list[list[Snapshot]]:
    """Fine-tune ``len(jobs)`` LoRAs at once, model k on ``latents[k]``; each model's snapshots, in step order.

    ``step_callback(step, losses)`` follows every optimiser step with the (K,) losses.
    """
    if not jobs or len(jobs) != len(latents):
        raise ValueError(f"train_group needs one latent set per job ({len(jobs)} jobs, {len(latents)} latent sets)")
    keys = {group_key(job) for job in jobs}
    if len(keys) != 1:
        raise ValueError("a group's models must share rank, alpha, recipe and snapshot steps; "
                         "group models of one config (train_units_batched does)")
    first = jobs[0]
    recipe, rank, models = first.recipe, first.rank, len(jobs)
    unknown = sorted(set(first.snapshot_steps) - set(range(1, recipe.max_train_steps + 1)))
    if unknown:
        raise ValueError(f"{first.model_id}: snapshot steps {unknown} are outside 1..{recipe.max_train_steps}")
    shapes = {tuple(lat.mean.shape[1:]) for lat in latents}
    if len(shapes) != 1:
        raise ValueError(f"a group's images must share one latent shape, not {sorted(shapes)}")
    latent_shape = shapes.pop()
    unet, device = backbone.unet, backbone.device
    batch = recipe.train_batch_size
    accumulation = recipe.gradient_accumulation_steps

    # Each model's generator draws its LoRA init first, through PEFT's layers (the shared protocol).
    layers = lora_adapter(backbone, rank, first.lora_alpha, recipe.target_modules)
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in jobs]
    stacks_a = [torch.empty((models, *m.lora_A[ADAPTER_NAME].weight.shape), dtype=torch.float32, device=device)
                for _, m in layers]
    stacks_b = [torch.zeros((models, *m.lora_B[ADAPTER_NAME].weight.shape), dtype=torch.float32, device=device)
                for _, m in layers]
    with torch.no_grad():
        for k, generator in enumerate(generators):
            init_lora_weights(unet, rank, generator)
            for stack, (_, m) in zip(stacks_a, layers):
                stack[k].copy_(m.lora_A[ADAPTER_NAME].weight)
    keys_in_order = _state_keys(unet, layers)
    metadata = adapter_metadata(unet)
    params = [t.requires_grad_(True) for pair in zip(stacks_a, stacks_b) for t in pair]
    optimizer = BatchedAdamW(params, models, lr=recipe.learning_rate)
    lr_scheduler = _lr_scheduler(recipe, optimizer)
    scaler = BatchedGradScaler(models, device) if backbone.mixed_precision else None
    orders = [ImageOrder(lat.count) for lat in latents]
    embeddings = torch.cat([backbone.encode_prompt(job.prompt).expand(batch, -1, -1) for job in jobs])
    wanted = set(first.snapshot_steps)
    snapshots: list[list[Snapshot]] = [[] for _ in jobs]

    def serialise(k: int) -> bytes:
        stacks = {"A": stacks_a, "B": stacks_b}
        state = {key: stacks[which][i][k].detach().to("cpu", torch.float32).clone()
                 for key, i, which in keys_in_order}
        return lora_file(state, metadata)

    with stacked_lora(unet, layers, stacks_a, stacks_b):
        for step in range(1, recipe.max_train_steps + 1):
            total = None
            for _ in range(accumulation):
                draws = [draw_step(g, order, batch, latent_shape, backbone.num_train_timesteps,
                                   recipe.flip_augmentation) for g, order in zip(generators, orders)]
                x0 = torch.cat([sample_latents(lat, d, backbone.scaling_factor) for lat, d in zip(latents, draws)])
                noise = torch.cat([d.noise for d in draws]).to(device)
                timesteps = torch.cat([d.timesteps for d in draws]).to(device)
                pred, target = denoising_step(backbone, x0, noise, timesteps, embeddings)
                losses = F.mse_loss(pred.float(), target.float(), reduction="none").reshape(models, -1).mean(1)
                losses = losses / accumulation
                (scaler.scale_losses(losses) if scaler else losses).sum().backward()
                total = losses.detach() if total is None else total + losses.detach()
            grads = [p.grad for p in params]
            found_inf = scaler.unscale_(grads) if scaler else None
            clip_grad_norm_per_model(grads, MAX_GRAD_NORM)
            if scaler:
                optimizer.step(active=(~found_inf).tolist())
                scaler.update(found_inf)
            else:
                optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step in wanted:
                for k in range(models):
                    snapshots[k].append(Snapshot(step, serialise(k)))
            if step_callback is not None:
                step_callback(step, total)
    for p in params:
        p.requires_grad_(False)
    return snapshots


# ----------------------------------------------------------------------------- the model loop

def train_units_batched(models: Sequence["PlannedModel"], backbone: Backbone, source,  # noqa: F821
                        on_done: Callable[["PlannedModel", list[Snapshot]], None],  # noqa: F821
                        progress: bool = True, group_size: int = DEFAULT_CPU_GROUP_SIZE,
                        on_step: Callable[[float], None] | None = None) -> None:
    """:func:`lora_wise.builder.train.train_units`, K models at a time: consecutive groups of ``group_size``.

    Each model's images are loaded, checked and VAE-encoded once; ``on_done(model, snapshots)``
    follows for every model of a group, in order, once the group finishes.  ``on_step(models)``
    follows every training step with the share of models it advanced (K / steps), for a
    progress bar in another process.
    """
    from tqdm.auto import tqdm

    from .micro_datasets import load_pixels

    name = models[0].unit.config if models else "models"
    bar = tqdm(total=len(models), desc=name, unit="model", disable=not progress, dynamic_ncols=True)
    try:
        for group in groups_of(models, group_size):
            recipe = group[0].job.recipe
            bar.set_postfix_str(f"{group[0].unit.model_id} +{len(group) - 1}", refresh=False)
            latents = [backbone.encode_images(load_pixels(source, m.image_ids, recipe.resolution),
                                              flip=recipe.flip_augmentation) for m in group]
            steps = tqdm(total=recipe.max_train_steps, desc=f"steps x{len(group)}", unit="step", leave=False,
                         disable=not progress, dynamic_ncols=True)

            def tick(step: int, losses, steps=steps, share=len(group) / recipe.max_train_steps) -> None:
                steps.update()
                if on_step is not None:
                    on_step(share)
                if progress and step % 50 == 0:
                    steps.set_postfix(loss=f"{float(losses.mean()):.4f}", refresh=False)

            try:
                snapshots = train_group(backbone, [m.job for m in group], latents, step_callback=tick)
            finally:
                steps.close()
            for model, snaps in zip(group, snapshots):
                on_done(model, snaps)
            bar.update(len(group))
    finally:
        bar.close()


# ----------------------------------------------------------------------------- group size on a GPU

def fit_group_size(free_bytes: int, peak_one: int, peak_two: int, limit: int = MAX_GPU_GROUP_SIZE,
                   headroom: float = GPU_MEMORY_HEADROOM) -> int:
    """The largest K whose training fits: memory grows by ``peak_two - peak_one`` per model.

    ``peak_one`` / ``peak_two``: peak memory of one training step of groups of 1 and 2.
    """
    per_model = max(peak_two - peak_one, 1)
    fixed = max(peak_one - per_model, 0)
    return int(max(1, min(limit, (free_bytes * headroom - fixed) // per_model)))


def probe_group_size(backbone: Backbone, job: TrainingJob, limit: int = MAX_GPU_GROUP_SIZE) -> int:
    """Measure one training step of groups of 1 and 2 models on the GPU and fit K into its free memory.

    The probe models train on zero latents with their own seed-0 generators; nothing of them is kept.
    """
    import dataclasses

    if not backbone.device.startswith("cuda"):
        return DEFAULT_CPU_GROUP_SIZE
    recipe = dataclasses.replace(job.recipe, max_train_steps=1)
    probe = dataclasses.replace(job, model_id="probe", seed=0, recipe=recipe, snapshot_steps=())
    size = recipe.resolution // int(backbone.pipeline.vae_scale_factor)
    shape = (1, int(backbone.unet.config.in_channels), size, size)
    zeros = torch.zeros(shape, device=backbone.device)
    latents = LatentStats(zeros, torch.ones_like(zeros), zeros, torch.ones_like(zeros))
    device = torch.device(backbone.device)
    peaks = {}
    for models in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        train_group(backbone, [probe] * models, [latents] * models)
        torch.cuda.synchronize(device)
        peaks[models] = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return fit_group_size(free, peaks[1], peaks[2], limit)
