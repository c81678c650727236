"""Synthetic LoRA-WiSE datasets for tests that need data but not training.

Each model gets PEFT-named LoRA factors whose scale falls with the dataset size
(as fine-tuned LoRAs' norms do, paper Fig. 2a) plus per-model noise, written
through ``lora_wise.layout`` exactly as the builder writes real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save

from lora_wise.configs import get_config
from lora_wise.layout import render_card, snapshots_config, write_shards
from lora_wise.schema import model_id
from lora_wise.splits import standard_split

#: (module path, d, k) of a small SD-like UNet's attention projections.
LAYERS = [(f"down_blocks.0.attentions.0.transformer_blocks.0.attn{a}.{p}", 32, 32 if a == 1 or p in ("to_q", "to_out.0") else 16)
          for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")]


def synthetic_lora(size: int, seed: int, rank: int, noise: float = 0.15, signal: float = 1.0) -> bytes:
    """One LoRA as safetensors bytes (diffusers PEFT naming)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    strength = signal / (1.0 + np.log(size))
    for path, d, k in LAYERS:
        scale = strength * (1.0 + noise * rng.standard_normal())
        tensors[f"unet.{path}.lora_A.weight"] = (rng.standard_normal((rank, k)) / np.sqrt(k)).astype(np.float32)
        tensors[f"unet.{path}.lora_B.weight"] = (scale * rng.standard_normal((d, rank)) / np.sqrt(rank)).astype(np.float32)
    return save(tensors, metadata={"format": "pt"})


def model_rows(config: str, micro_datasets: int | None = None, steps: tuple[int, ...] | None = None,
               noise: float = 0.15) -> dict[str, list[dict]]:
    """Rows of a synthetic build of ``config``, per split."""
    cfg = get_config(config)
    split = standard_split(cfg)
    steps = steps or (cfg.checkpoint_step,)
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for index in range(micro_datasets or cfg.num_micro_datasets):
        name = f"concept-{index:02d}"
        for size in cfg.dataset_sizes:
            for step in steps:
                seed = index * 1000 + size * 10 + step
                out[split.side(index)].append({
                    "model_id": model_id(cfg.name, name, size), "config": cfg.name, "micro_dataset": name,
                    "micro_dataset_index": index, "dataset_size": size, "rank": cfg.rank,
                    "backbone": cfg.backbone_name, "step": step, "seed": seed,
                    "image_ids": [f"{name}/{i:04d}" for i in range(size)], "recipe": cfg.recipe.to_json(),
                    "lora": synthetic_lora(size, seed, cfg.rank, noise=noise),
                })
    return out


def write_views(root: Path, config: str, rows_by_split: dict[str, list[dict]]) -> None:
    """Both views of ``config``, as the builder seals them: the checkpoint's rows, and every row."""
    cfg = get_config(config)
    for split, rows in rows_by_split.items():
        write_shards([r for r in rows if r["step"] == cfg.checkpoint_step], root, cfg.name, split)
        write_shards(rows, root, snapshots_config(cfg.name), split)


def write_synthetic_benchmark(root: Path, configs=("mini_low_r8",), **kwargs) -> Path:
    """A LoRA-WiSE folder with synthetic models for ``configs``; returns ``root``."""
    for config in configs:
        write_views(root, config, model_rows(config, **kwargs))
    render_card(root)
    return root
