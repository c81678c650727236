"""Spectral features of SD-1.5-shaped LoRAs: ours vs the dense way vs merely reading the files.

Writes N synthetic rank-r LoRAs with Stable Diffusion 1.5's real attention-layer shapes (taken
from diffusers' UNet2DConditionModel with SD 1.5's config, built on the meta device) as
safetensors files, then times, side by side in one run:

* read   -- `lora_wise.read_lora` of every file (parse + canonical names, float32 arrays);
* ours   -- `FeatureTable.build` over the files: read + singular values of A, B, BA from the r x r
            QR cores, the next file read while the current one's features are computed;
* dense  -- read + the straightforward way: form BA (d x k) and take full SVDs of A, B and BA,
            on the first --dense-models files (it is slow), scaled per model.

Prints per-model times and ends with `RESULT speedup_vs_dense=<dense/ours> vs_read=<ours/read>`.

    python bench/features.py [--models 300] [--rank 32] [--dense-models 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from lora_wise.features import FeatureTable, SpectralExtractor
from lora_wise.lora import read_lora

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)


def sd15_attention_shapes() -> list[tuple[str, int, int]]:
    """(module path, d_out, k_in) of every to_q/to_k/to_v/to_out.0 in SD 1.5's UNet."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    return [(name, module.out_features, module.in_features) for name, module in unet.named_modules()
            if name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0")]


def write_loras(folder: Path, shapes, models: int, rank: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(models):
        tensors = {}
        for name, d, k in shapes:
            tensors[f"unet.{name}.lora_A.weight"] = rng.standard_normal((rank, k), dtype=np.float32)
            tensors[f"unet.{name}.lora_B.weight"] = rng.standard_normal((d, rank), dtype=np.float32) * 0.01
        path = folder / f"lora_{i:04d}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


def dense_features(weights) -> list:
    """The straightforward way: materialise delta W = B A and take full SVDs (float64: LAPACK's
    float32 SVD is several times slower still on these rank-deficient d x k matrices)."""
    out = []
    for layer in weights.values():
        a, b = layer.A.astype(np.float64), layer.B.astype(np.float64)
        out.append((np.linalg.svd(a, compute_uv=False), np.linalg.svd(b, compute_uv=False),
                    np.linalg.svd(b @ a, compute_uv=False)))
    return out


def timed(fn, paths) -> float:
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return (time.perf_counter() - start) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--dense-models", type=int, default=1)
    args = parser.parse_args()

    shapes = sd15_attention_shapes()
    with tempfile.TemporaryDirectory(prefix="lora-wise-bench-") as tmp:
        paths = write_loras(Path(tmp), shapes, args.models, args.rank)
        size_mb = paths[0].stat().st_size / 2**20
        print(f"{args.models} LoRAs, {len(shapes)} layers, rank {args.rank}, {size_mb:.1f} MiB each")
        extractor = SpectralExtractor(args.rank)
        for path in paths:  # the files in the page cache for every contender alike
            path.read_bytes()
        for path in paths[:3]:  # and the extractor's buffers allocated
            extractor(read_lora(path))

        def pipeline() -> float:
            start = time.perf_counter()
            FeatureTable.build(({"model_id": p.name, "dataset_size": 1, "micro_dataset_index": 0, "step": 0},
                                read_lora(p)) for p in paths)
            return (time.perf_counter() - start) / len(paths)

        # alternate the contenders and keep each one's best of two passes, so that neither
        # gains from going second or loses to a burst of load elsewhere
        t_read = min(timed(read_lora, paths) for _ in range(2))
        t_ours = min(pipeline() for _ in range(2))
        t_sequential = min(timed(lambda p: extractor(read_lora(p)), paths) for _ in range(2))
        t_dense = timed(lambda p: dense_features(read_lora(p)), paths[: args.dense_models])
    print(f"read   {t_read * 1e3:9.1f} ms/model")
    print(f"ours   {t_ours * 1e3:9.1f} ms/model  (FeatureTable.build: read + exact spectra from QR cores)")
    print(f"       {t_sequential * 1e3:9.1f} ms/model  (the same without overlapping reads)")
    print(f"dense  {t_dense * 1e3:9.1f} ms/model  (read + SVD of the dense d x k product; "
          f"{args.dense_models} models)")
    print(f"total for {args.models} models: ours {t_ours * args.models:.1f} s, "
          f"dense {t_dense * args.models:.1f} s")
    print(f"RESULT speedup_vs_dense={t_dense / t_ours:.1f} vs_read={t_ours / t_read:.2f}")


if __name__ == "__main__":
    main()
