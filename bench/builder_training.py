"""Fine-tuning one miniature LoRA model: the builder's way vs the straightforward way, side by side.

On a miniature backbone (``--backbone`` folder, or the cached default one, pre-trained on first
use), trains the same models (4 images, ``--steps`` steps, rank 8) three ways and times them:

* ours       -- what ``lora_wise.builder.train`` does: VAE posteriors encoded once per model and a latent
                sampled from them each step, the prompt encoded once, the PEFT adapter injected
                once and re-initialised per model, the LoRA phase on 1 CPU thread;
* straight   -- the script's way: VAE-encode the batch and the prompt at every step, inject a
                fresh adapter for every model and remove it after, torch's default threads;
* two-thread -- ours, on torch's default thread count (2 on the target machine), to show
                why the LoRA phase of a miniature build runs on one thread.

Both ways train the same LoRA (same loss, optimiser, RNG streams); the straightforward way pays
for its recomputation.  Ends with
``RESULT ours_s_per_model=<s> straight_s_per_model=<s> speedup=<x> two_thread_s_per_model=<s>``.

    python bench/builder_training.py [--steps 100] [--models 3] [--backbone DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--backbone", help="miniature pipeline folder (default: the cached default backbone)")
    args = parser.parse_args()

    import torch.nn.functional as F

    from lora_wise.builder.backbones import miniature_backbone
    from lora_wise.builder.micro_datasets import SyntheticSource, load_pixels
    from lora_wise.builder.train import (ADAM_BETAS, ADAM_EPSILON, ADAM_WEIGHT_DECAY, MAX_GRAD_NORM, ImageOrder, TrainingJob,
                               draw_step, init_lora_weights, lora_config, lora_modules, lora_safetensors,
                               load_backbone, remove_lora_adapter, train_lora)
    from lora_wise.configs import get_config

    folder = args.backbone or str(miniature_backbone())
    backbone = load_backbone(folder, device="cpu")
    cfg = get_config("mini_low_r8")
    recipe = dataclasses.replace(cfg.recipe, max_train_steps=args.steps)
    source = SyntheticSource(32)
    default_threads = torch.get_num_threads()
    models = [(f"concept-{i:02d}", load_pixels(source, source.image_ids(f"concept-{i:02d}")[:4], 32))
              for i in range(args.models)]
    job = TrainingJob("bench", 0, "a photo of sks shape", cfg.rank, cfg.lora_alpha, recipe, (args.steps,))

    def ours(threads: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for _, pixels in models:
            train_lora(backbone, job, backbone.encode_images(pixels))
        return (time.perf_counter() - start) / len(models)

    def straight() -> float:
        """The script's per-step recomputation, same random streams and maths."""
        torch.set_num_threads(default_threads)
        remove_lora_adapter(backbone)
        unet, vae, scheduler = backbone.unet, backbone.vae, backbone.noise_scheduler
        start = time.perf_counter()
        for _, pixels in models:
            unet.add_adapter(lora_config(cfg.rank, cfg.lora_alpha, recipe.target_modules))
            generator = torch.Generator().manual_seed(job.seed)
            init_lora_weights(unet, cfg.rank, generator)
            params = [p for _, m in lora_modules(unet) for p in (m.lora_A["default"].weight,
                                                                  m.lora_B["default"].weight)]
            optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, betas=ADAM_BETAS,
                                          weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPSILON)
            order = ImageOrder(len(pixels))
            images = torch.from_numpy(pixels)
            for _ in range(args.steps):
                draws = draw_step(generator, order, 1, (4, 8, 8), backbone.num_train_timesteps, False)
                with torch.no_grad():
                    posterior = vae.encode(images[draws.indices]).latent_dist
                    latents = (posterior.mean + posterior.std * draws.latent_eps) * backbone.scaling_factor
                    backbone._prompts.clear()
                    embeddings = backbone.encode_prompt(job.prompt)
                noisy = scheduler.add_noise(latents, draws.noise, draws.timesteps)
                pred = unet(noisy, draws.timesteps, embeddings, return_dict=False)[0]
                F.mse_loss(pred, draws.noise).backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            lora_safetensors(unet)
            unet.unload_lora()
        return (time.perf_counter() - start) / len(models)

    ours(1)  # warm-up: first calls allocate and inject
    results = {"ours": ours(1), "straight": straight(), "two_thread": ours(default_threads)}
    for name, seconds in results.items():
        print(f"{name:>10}: {seconds:.2f} s per {args.steps}-step model ({1000 * seconds / args.steps:.1f} ms/step)")
    print(f"RESULT ours_s_per_model={results['ours']:.3f} straight_s_per_model={results['straight']:.3f} "
          f"speedup={results['straight'] / results['ours']:.2f} two_thread_s_per_model={results['two_thread']:.3f}")


if __name__ == "__main__":
    main()
