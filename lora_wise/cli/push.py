"""``lora-wise push``: upload a built folder with :func:`lora_wise.builder.push.push`."""

from __future__ import annotations

from .parser import add_command


def register(commands) -> None:
    p = add_command(commands, "push", "upload a built LoRA-WiSE folder to a Hub dataset repo",
                    "Create the dataset repo if needed and upload the card and the Parquet shards with "
                    "huggingface_hub (one commit per config). The token comes from HF_TOKEN or "
                    "`hf auth login` and is never printed.")
    p.add_argument("folder", help="the folder `lora-wise build --out` wrote")
    p.add_argument("repo_id", help="dataset repo, <user or org>/<name>")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    p.set_defaults(func=_cmd_push)


def _cmd_push(args) -> int:
    from ..builder.push import push

    plan = push(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run)
    if args.dry_run:
        print("dry run, nothing uploaded; would upload " + plan.format())
    else:
        print(f"uploaded {len(plan.files)} files ({plan.total_bytes / 1e6:.1f} MB) of "
              f"{', '.join(plan.configs)} to https://huggingface.co/datasets/{plan.repo_id}")
    return 0
