"""Models per hour: one-at-a-time PEFT training vs the batched trainer at K = 1, 4, 16, 64, in one run.

On a miniature backbone (``--backbone`` folder, or the cached default one, pre-trained on
first use), trains models of the miniature configs -- their planned units with their own
images, seeds and prompts, the configs' steps and snapshots (or ``--steps`` steps and three
snapshots) -- the ways a build can:

* one-at-a-time, 1 process   -- ``lora_wise.builder.train.train_units``: PEFT adapter, batch 1, one model
                                after another on one thread: how ``lora-wise build`` trained
                                before the batched trainer;
* one-at-a-time, P processes -- the same trainer in one single-threaded worker process per core;
* batched K, 1 process       -- ``lora_wise.builder.batched.train_units_batched``: groups of K models in
                                one forward/backward, on one thread;
* batched K, P processes     -- one group per worker process per core: what ``lora-wise build``
                                does now on a CPU (``--batch-models 64``, one worker per core).

Every way pays what a build pays per model: loading and VAE-encoding its images, training,
serialising its snapshots (worker processes are started and have loaded the backbone
before the clock starts, as they stay up for a whole build).  Each line prints seconds
per model, models/hour and the speedup over one-at-a-time in 1 process.  Ends with
``RESULT best_k=<k> speedup=<x> same_processes_speedup=<y>``: the best K the build's way
over one-at-a-time as the build ran it, and over one-at-a-time in as many processes.

    python bench/build.py [--steps N] [--ks 1,4,16,64] [--single-models 4] [--backbone DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="training steps per model, snapshots at 1/3, 2/3, 3/3 "
                                                  "(default: the miniature configs' own)")
    parser.add_argument("--ks", default="1,4,16,64", help="group sizes of the batched trainer")
    parser.add_argument("--single-models", type=int, default=4, help="models trained one at a time (per process)")
    parser.add_argument("--backbone", help="miniature pipeline folder (default: the cached default backbone)")
    args = parser.parse_args()

    from lora_wise.builder.backbones import miniature_backbone
    from lora_wise.builder.batched import train_units_batched
    from lora_wise.builder.build import BuildOptions, _local_workers, _training_threads
    from lora_wise.builder.distributed import BackboneRef, train_in_processes, worker_pool
    from lora_wise.builder.micro_datasets import SyntheticSource
    from lora_wise.builder.plan import plan_config
    from lora_wise.builder.train import load_backbone, torch_threads, train_units
    from lora_wise.configs import MINIATURE_CONFIGS, get_config

    folder = args.backbone or str(miniature_backbone())
    ks = [int(k) for k in args.ks.split(",")]
    threads = _training_threads(BuildOptions(), "cpu", folder)
    processes = _local_workers(BuildOptions(), "cpu", folder, threads)
    source = SyntheticSource(get_config(MINIATURE_CONFIGS[0]).recipe.resolution)
    planned = []
    for name in MINIATURE_CONFIGS:  # both miniature configs: one recipe, so their models group together
        cfg = get_config(name)
        if args.steps:
            cfg = dataclasses.replace(cfg.with_overrides(max_train_steps=args.steps),
                                      snapshot_steps=(args.steps // 3, 2 * args.steps // 3, args.steps))
        planned += plan_config(cfg, source.micro_datasets(cfg))
    steps, snapshots = cfg.recipe.max_train_steps, len(cfg.snapshot_steps)
    if processes * max(ks) > len(planned):
        raise SystemExit(f"--ks asks for {processes} x {max(ks)} models; the miniature configs plan {len(planned)}")
    print(f"{len(planned)} planned miniature models available; {steps} steps and {snapshots} snapshots per model; "
          f"{threads} thread(s) per process, {processes} processes (one per core); torch {torch.__version__}")

    backbone = load_backbone(folder, device="cpu")
    ref = BackboneRef(folder, "no")

    def in_process(trainer, models) -> float:
        done = []
        with torch_threads(threads):
            start = time.perf_counter()
            trainer(models, backbone, source, lambda m, snaps: done.append(len(snaps)), progress=False)
            elapsed = time.perf_counter() - start
        assert done == [snapshots] * len(models)
        return elapsed / len(models)

    def in_pool(pool, models, group_size) -> float:
        done = []
        start = time.perf_counter()
        train_in_processes(models, ref, source, lambda m, snaps: done.append(len(snaps)), pool, progress=False,
                           group_size=group_size, threads=threads)
        elapsed = time.perf_counter() - start
        assert done == [snapshots] * len(models)
        return elapsed / len(models)

    def batched(k):
        return lambda models, *rest, **kw: train_units_batched(models, *rest, group_size=k, **kw)

    def report(label: str, seconds: float, base: float | None) -> None:
        speedup = f"speedup {base / seconds:5.2f}" if base else ""
        print(f"{label:>30}: {seconds:7.3f} s/model {3600 / seconds:9.0f} models/hour  {speedup}", flush=True)

    in_process(train_units, planned[:1])  # warm-up: the first calls inject the adapter and allocate
    in_process(batched(2), planned[:2])
    single = in_process(train_units, planned[:args.single_models])
    report("one-at-a-time, 1 process", single, None)
    with worker_pool(processes, preload=ref) as pool:
        in_pool(pool, planned[:processes], 1)  # warm-up: every worker has loaded the backbone and trained once
        single_pool = in_pool(pool, planned[:processes * args.single_models], 1)
        report(f"one-at-a-time, {processes} processes", single_pool, single)
        speedups = {}
        for k in ks:
            report(f"batched K={k}, 1 process", in_process(batched(k), planned[:k]), single)
            seconds = in_pool(pool, planned[:processes * k], k)
            report(f"batched K={k}, {processes} processes", seconds, single)
            speedups[k] = (single / seconds, single_pool / seconds)
    best = max(speedups, key=lambda k: speedups[k][0])
    print(f"RESULT best_k={best} speedup={speedups[best][0]:.2f} same_processes_speedup={speedups[best][1]:.2f}")


if __name__ == "__main__":
    main()
