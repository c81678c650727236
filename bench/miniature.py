"""What controls the miniature's dataset-size signal: one lever at a time, measured side by side in one run.

Each setting is a small benchmark built for real -- ``lora_wise.builder.build`` on a registered
config (DreamBooth-LoRA on a miniature backbone, Parquet shards), read back with
``lora_wise.feature_table`` and scored with ``lora_wise.run_protocol`` under the paper's
protocol shape (10 draws, 30% of the micro-datasets for training).  Every setting is the chosen
recipe (the mini_* configs: class micro-datasets, lr 3e-4, 300 steps, rank 8, fixed seed, the
default backbone) with one thing changed:

  passes      steps per model (75, 150, 300: snapshots of one build), i.e. passes over each image
  lr          1e-4 (the paper's), 3e-4, 1e-3
  diversity   what a micro-dataset's images share: "drawing" (one object, plain background),
              "object" (one object, varied scenes), "class" (varied things of one class, varied scenes)
  pretrain    the backbone: not pre-trained, pre-trained at a constant rate, annealed (default)
  capacity    UNet widths (32, 64) (default) and (32, 64, 64) (a third level, 7 attention blocks)
  resolution  32 px (default) and 64 px (4x the latent, ~5x the compute; 150 steps, fewer concepts)
  rank        4, 8, 16
  noise       the DDPM schedule's beta_end: 0.012 (SD 1.5's) and 0.004 (default)
  seed        "fixed" (the paper's recipe) and "random" (one seed per model: what is left of the
              signal without the shared random stream of equal-sized models)

Prints one table per lever (mean |BA|_F by n, Spearman's rho, DSiRe and Frobenius-NN accuracy at
each snapshot) and ends with ``RESULT``: the chosen recipe's figures, and for every lever each
setting's ``rho/DSiRe`` at its last snapshot.  Read rho first: with the paper's fixed seed, every
model of one size sees the same noise, and DSiRe reads that stream too (the seed lever measures how
much), so its accuracy alone can be high where the norm does not follow the dataset size at all.

    python bench/miniature.py [--levers passes,lr,...] [--concepts 20] [--workers 2] [--out DIR]

Takes about 40 minutes on 2 cores for every lever (backbones are pre-trained once and cached).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

LEVERS = ("passes", "lr", "diversity", "pretrain", "capacity", "resolution", "rank", "noise", "seed")
SIZES = (1, 10, 20, 30, 40, 50)


def _name(key: str) -> str:
    """A config name for a setting, the same in every process."""
    import hashlib

    return "bench-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def settings(concepts: int) -> dict[str, list[dict]]:
    """Every lever's settings; ``{}`` changes nothing (the chosen recipe)."""
    return {
        "passes": [dict(label="steps 75/150/300", snapshots=(75, 150, 300))],
        "lr": [dict(label="lr 1e-4", lr=1e-4), dict(label="lr 3e-4"), dict(label="lr 1e-3", lr=1e-3)],
        "diversity": [dict(label="drawing", kind="drawing"), dict(label="object", kind="object"),
                      dict(label="class")],
        "pretrain": [dict(label="not pre-trained", spec=dict(pretrain_steps=0)),
                     dict(label="constant rate", spec=dict(lr_schedule="constant")),
                     dict(label="annealed")],
        "capacity": [dict(label="widths 32,64"), dict(label="widths 32,64,64", spec=dict(channels=(32, 64, 64)))],
        "resolution": [dict(label="32 px, 150 steps", steps=150, concepts=max(10, concepts // 2)),
                       dict(label="64 px, 150 steps", steps=150, resolution=64, spec=dict(resolution=64),
                            concepts=max(10, concepts // 2))],
        "rank": [dict(label="rank 4", rank=4), dict(label="rank 8"), dict(label="rank 16", rank=16)],
        "noise": [dict(label="beta_end 0.012", spec=dict(beta_end=0.012)), dict(label="beta_end 0.004")],
        "seed": [dict(label="fixed seed"), dict(label="random seeds", seed_mode="random")],
    }


def _key(setting: dict, concepts: int) -> str:
    """Settings equal but for their label build once."""
    fields = {k: v for k, v in setting.items() if k != "label"}
    fields.setdefault("concepts", concepts)
    return json.dumps(fields, sort_keys=True, default=list)


def _config(setting: dict, concepts: int, name: str):
    from lora_wise.builder.micro_datasets import SYNTHETIC_SOURCES
    from lora_wise.configs import MINI_RECIPE, MINIATURE, BenchmarkConfig

    source = {kind: name for name, (kind, _) in SYNTHETIC_SOURCES.items()}[setting.get("kind", "class")]

    steps = setting.get("steps", MINI_RECIPE.max_train_steps)
    snapshots = tuple(setting.get("snapshots", (steps // 4, steps)))
    recipe = dataclasses.replace(MINI_RECIPE, learning_rate=setting.get("lr", MINI_RECIPE.learning_rate),
                                 max_train_steps=steps, resolution=setting.get("resolution", 32),
                                 seed_mode=setting.get("seed_mode", "fixed"))
    count = setting.get("concepts", concepts)
    return BenchmarkConfig(
        name=name, description=f"bench/miniature.py: {setting['label']}", data_range="medium", dataset_sizes=SIZES,
        image_source=source,
        backbone=MINIATURE, backbone_name="mini-sd", rank=setting.get("rank", 8), recipe=recipe,
        snapshot_steps=snapshots, checkpoint_step=snapshots[-1], num_micro_datasets=count,
        num_train_micro_datasets=max(2, round(0.3 * count)), miniature=True)


def _build(job: tuple[str, dict, int, str]) -> tuple[str, float]:
    """In a worker process: register the setting's config and build it (one process, one thread)."""
    key, setting, concepts, out = job
    import torch

    torch.set_num_threads(1)  # one thread per worker: a second one on a busy core slows pre-training 5x
    from lora_wise.builder.backbones import DEFAULT_MINI_SPEC
    from lora_wise.builder.build import BuildOptions, build
    from lora_wise.configs import register_config

    name = _name(key)
    register_config(_config(setting, concepts, name), replace=True)
    spec = dataclasses.replace(DEFAULT_MINI_SPEC, **setting.get("spec", {}))
    record = Path(out) / "bench-seconds.json"
    start = time.perf_counter()
    summary = build([name], BuildOptions(out=out, mini_spec=spec, workers=1, threads=1, progress=False))
    took = time.perf_counter() - start
    if summary.models_built == 0 and record.is_file():  # a rerun: the build was done before
        return key, json.loads(record.read_text())["seconds"]
    record.write_text(json.dumps({"seconds": took}))
    return key, took


def _measure(setting: dict, concepts: int, out: str, name: str) -> list[dict]:
    import numpy as np

    from lora_wise.configs import register_config
    from lora_wise.data import feature_table
    from lora_wise.findings import norm_trend
    from lora_wise.protocol import run_protocol

    cfg = register_config(_config(setting, concepts, name), replace=True)
    rows = []
    for step in cfg.snapshot_steps:
        table = feature_table(out, name, step=step, progress=False)
        norms = table.norms["BA"].mean(axis=1)
        means, rho = norm_trend(SIZES, norms, table.dataset_sizes)
        dsire = run_protocol(table, cfg, "dsire", protocol="paper").mean("accuracy")
        frob = run_protocol(table, cfg, "frobenius-nn", protocol="paper").mean("accuracy")
        rows.append(dict(step=step, means=means, rho=rho, dsire=dsire, frob=frob,
                         cv=float(np.mean([np.std(v) / np.mean(v) for v in (
                             norms[table.dataset_sizes == s] for s in SIZES)]))))
    return rows


def main() -> None:
    import datasets

    datasets.disable_progress_bars()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated, of {', '.join(LEVERS)}")
    parser.add_argument("--concepts", type=int, default=20, help="micro-datasets per setting")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="settings built at once")
    parser.add_argument("--out", help="folder for the builds (default: a temporary one); reused when rerun")
    args = parser.parse_args()
    levers = [lever.strip() for lever in args.levers.split(",") if lever.strip()]
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        parser.error(f"unknown levers {unknown}; choose from {', '.join(LEVERS)}")
    every = settings(args.concepts)
    root = Path(args.out or tempfile.mkdtemp(prefix="lw-bench-miniature-"))
    jobs, seen = [], set()
    for lever in levers:
        for setting in every[lever]:
            key = _key(setting, args.concepts)
            if key not in seen:
                seen.add(key)
                jobs.append((key, setting, args.concepts, str(root / str(len(jobs)))))
    print(f"{len(jobs)} builds of {args.concepts} micro-datasets x {len(SIZES)} sizes into {root}", flush=True)
    seconds = {}
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for key, took in pool.imap_unordered(_build, jobs):
            seconds[key] = took
            print(f"  built {json.loads(key)} in {took:.0f} s", flush=True)
    measured = {key: _measure(setting, args.concepts, out, _name(key))
                for key, setting, _, out in jobs}
    effects = {}
    for lever in levers:
        print(f"\n== {lever}")
        print(f"{'setting':22s} {'step':>5s}  {'mean |BA|_F by n = ' + '/'.join(map(str, SIZES)):44s} "
              f"{'rho':>6s} {'cv':>6s} {'DSiRe':>6s} {'Frob':>6s} {'build':>7s}")
        cells = []
        for setting in every[lever]:
            key = _key(setting, args.concepts)
            for row in measured[key]:
                trend = "/".join(f"{m:.3f}" for m in row["means"])
                print(f"{setting['label']:22s} {row['step']:5d}  {trend:44s} {row['rho']:6.2f} {row['cv']:6.3f} "
                      f"{100 * row['dsire']:5.1f}% {100 * row['frob']:5.1f}% {seconds[key]:6.0f}s")
            last = measured[key][-1]
            label = setting["label"].replace(" ", "_").replace(",", "_").replace("/", "_")
            cells.append(f"{label}:{last['rho']:.2f}/{100 * last['dsire']:.1f}")
        effects[lever] = ",".join(cells)
    chosen = next((measured[_key(s, args.concepts)][-1] for lever in levers for s in every[lever]
                   if set(s) == {"label"}), None)
    parts = []
    if chosen:
        parts += [f"chosen_rho={chosen['rho']:.2f}", f"chosen_dsire={100 * chosen['dsire']:.1f}",
                  f"chosen_frobenius={100 * chosen['frob']:.1f}"]
    # per lever, each setting's rho / DSiRe accuracy (%) at its last snapshot
    parts += [f"{lever}={cells}" for lever, cells in effects.items()]
    if "seed" in levers:
        fixed, random_ = (measured[_key(s, args.concepts)][-1]["dsire"] for s in every["seed"])
        parts.append(f"fixed_minus_random_seed_points={100 * (fixed - random_):.1f}")
    print(f"\nbuilds kept in {root}" if args.out else "")
    print("RESULT " + " ".join(parts))


if __name__ == "__main__":
    main()
