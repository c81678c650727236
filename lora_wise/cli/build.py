"""``lora-wise build``: parse the flags into ``BuildOptions`` and call :func:`lora_wise.builder.build.build`.

Kept import-light: torch, diffusers and PEFT load only when the command runs.
"""

from __future__ import annotations

import argparse

from ..configs import SEED_MODES
from .parser import add_command

BUILD_DESCRIPTION = """\
Fine-tune DreamBooth-LoRA models (diffusers + PEFT) for one or more configs and write
them as a LoRA-WiSE dataset folder laid out exactly as the Hub repo: README.md (the
card) and data/<config>/<split>-NNNNN.parquet.  With no --config, every miniature
config is built on the miniature backbone (pre-trained once and cached).  Builds are
resumable: rerun the same command after an interruption and finished models are kept.

Models are fine-tuned --batch-models at a time in one batched pass, each exactly as
one-at-a-time PEFT training would (to float tolerance).  Spread a build over machines
with --shard i/N (e.g. a Slurm job array writing into one shared --out folder) or over
a Ray cluster with --ray; either gives the same dataset as one process.  Builds started
into one --out folder at the same time split its models instead of each training all
of them, and each ends with the complete dataset.
"""

BUILD_EPILOG = """\
examples:
  lora-wise build                                    # every miniature config, CPU minutes
  lora-wise build --config mini_low_r8 --micro-datasets 4
  lora-wise build --config low_r8 --images concept101/ --out lora-wise
  lora-wise build --config medium_r32 --image-dataset imagenet-1k --label-column label
  lora-wise build --config medium_r32 --flip         # the paper's defense, as config medium_r32-flip
  lora-wise build --config low_r8 --images /shared/c101 --out /shared/lw --shard 0/8   # shard 0 of 8
  lora-wise build --config low_r8 --images /shared/c101 --ray auto   # on a running Ray cluster
"""


def register(commands) -> None:
    from ..builder.backbones import DEFAULT_MINI_SPEC
    from ..builder.build import DEFAULT_OUT

    p = add_command(commands, "build", "fine-tune LoRA models and write a LoRA-WiSE dataset folder", BUILD_DESCRIPTION)
    p.epilog = BUILD_EPILOG
    p.add_argument("--config", action="append", metavar="NAME",
                   help="config to build (repeatable; default: every miniature config; see `lora-wise configs`)")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (the Hub repo's layout)")
    p.add_argument("--micro-datasets", type=int, metavar="N",
                   help="build only the first N micro-datasets of each config (resumable to more later)")
    ablation = p.add_argument_group("ablation options (each derives a config with its own name)")
    ablation.add_argument("--steps", type=int, metavar="N", help="max training steps")
    ablation.add_argument("--batch-size", type=int, metavar="B", help="training batch size")
    ablation.add_argument("--seed-mode", choices=list(SEED_MODES), help="one seed for all models, or one each")
    ablation.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                          help="random horizontal flips (the paper's defense)")
    images = p.add_argument_group("images (configs whose images are not synthetic)")
    images.add_argument("--images", metavar="DIR", help="image-folder tree: one sub-folder of images per concept")
    images.add_argument("--image-dataset", metavar="NAME",
                        help="a `datasets` image dataset (Hub id or local folder) with a label column")
    images.add_argument("--label-column", default="label", help="the image dataset's label column")
    images.add_argument("--image-column", default="image", help="the image dataset's image column")
    images.add_argument("--image-split", default="train", help="the image dataset's split")
    model = p.add_argument_group("backbone and device")
    model.add_argument("--backbone", metavar="ID_OR_DIR",
                       help="Hub id or local diffusers pipeline folder replacing the config's backbone")
    model.add_argument("--pretrain-steps", type=int, default=DEFAULT_MINI_SPEC.pretrain_steps,
                       help="UNet pre-training steps of the miniature backbone (cached per value)")
    model.add_argument("--device", help="cuda, cuda:1 or cpu (default: CUDA when available)")
    model.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads per training process (default: 1 for the miniature backbone on a CPU, "
                            "whose small steps gain more from a process per core; torch's choice otherwise)")
    scale = p.add_argument_group("speed and scale")
    scale.add_argument("--batch-models", type=int, metavar="K",
                       help="models fine-tuned together in one batched pass (default: 64 on a CPU, as many as "
                            "fit in free memory on a GPU); 1 trains one model at a time with PEFT")
    scale.add_argument("--workers", type=int, metavar="N",
                       help="training processes on this machine, each taking whole groups (default: one per core "
                            "for the miniature backbone on a CPU, else 1)")
    scale.add_argument("--shard", metavar="I/N", type=_shard,
                       help="build only shard I of N (groups of --batch-models models, index I modulo N), e.g. "
                            "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; all shards write into one --out folder "
                            "and the last to finish leaves the complete dataset")
    scale.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="run each group as a Ray task (a GPU per task where the cluster has GPUs); without "
                            "ADDRESS Ray's default (RAY_ADDRESS, else a local cluster), `auto` for a cluster "
                            "started with `ray start`")
    p.add_argument("--max-shard-mb", type=float, default=256.0, help="upper bound on a Parquet shard's size")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_build)


def _cmd_build(args) -> int:
    import dataclasses

    from ..builder.backbones import DEFAULT_MINI_SPEC
    from ..builder.build import BuildOptions, build

    options = BuildOptions(
        out=args.out, micro_datasets=args.micro_datasets, steps=args.steps, batch_size=args.batch_size,
        seed_mode=args.seed_mode, flip=args.flip, images=args.images, image_dataset=args.image_dataset,
        label_column=args.label_column, image_column=args.image_column, image_split=args.image_split,
        backbone=args.backbone, device=args.device, threads=args.threads,
        mini_spec=dataclasses.replace(DEFAULT_MINI_SPEC, pretrain_steps=args.pretrain_steps),
        max_shard_bytes=int(args.max_shard_mb * 1024 * 1024), progress=not args.no_progress,
        batch_models=args.batch_models, workers=args.workers, shard=args.shard, ray=args.ray)
    summary = build(args.config, options)
    print(summary.format())
    if summary.complete:
        print(f"load it with: datasets.load_dataset({str(args.out)!r}, {summary.configs[0]!r})")
    else:
        print(f"shard {args.shard[0]}/{args.shard[1]} done; {args.out} is complete once every shard has finished "
              f"(or rerun without --shard to build whatever is missing)" if args.shard else
              f"{args.out} is not complete yet; rerun the same command to finish it")
    return 0


def _shard(text: str) -> tuple[int, int]:
    from ..builder.distributed import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
