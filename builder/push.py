"""``lora-wise push``: upload a built LoRA-WiSE folder to a Hub dataset repo with huggingface_hub.

The folder is already laid out as the repo (``README.md`` + ``data/<view>/<split>-NNNNN-<digest>.parquet``
for both views of each config, ``<config>`` and ``<config>_snapshots``), so pushing is: re-render
the card with the repo id in its loading example, create the dataset repo if needed, then one
``upload_folder`` commit per view (``delete_patterns`` removes remote shards a rebuild replaced,
so the repo never holds a row twice) and a last commit with the card.  The build's
bookkeeping (``.lora-wise-build/``) and hidden files are never uploaded.

The token is whatever huggingface_hub finds (``HF_TOKEN`` or ``hf auth login``);
it is passed to nothing and printed nowhere by this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lora_wise.errors import PushError
from lora_wise.hub import check_repo_id, require_token, talking_to_hub
from lora_wise.layout import built_configs, built_views, data_dir, data_path, shard_paths
from lora_wise.schema import SPLITS

from .write import BUILD_DIR, render


@dataclass
class PushPlan:
    folder: Path
    repo_id: str
    configs: list[str]
    files: list[Path] = field(default_factory=list)
    #: The folders of shards uploaded: each config's views (``<config>``, ``<config>_snapshots``).
    views: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def format(self) -> str:
        lines = [f"{len(self.files)} files, {self.total_bytes / 1e6:.1f} MB, to "
                 f"https://huggingface.co/datasets/{self.repo_id}:"]
        lines += [f"  {p.relative_to(self.folder).as_posix()}" for p in self.files]
        return "\n".join(lines)


def plan_push(folder: str | os.PathLike, repo_id: str) -> PushPlan:
    """What would be uploaded; errors for a folder that is not a finished LoRA-WiSE build."""
    root = Path(folder)
    if not root.is_dir():
        raise PushError(f"{root} does not exist; build one with `lora-wise build --out {root}`")
    repo_id = check_repo_id(repo_id, "dataset repo")
    configs = built_configs(root)
    if not configs or not (root / "README.md").is_file():
        raise PushError(f"{root} holds no built LoRA-WiSE config (README.md and data/<config>/*.parquet); "
                        f"build one with `lora-wise build --out {root}` first")
    unsealed = sorted({p.parent.parent.name for p in (root / BUILD_DIR).glob("*/units/*.parquet")})
    if unsealed:
        raise PushError(f"{root} has finished models not sealed into shards yet (configs: {', '.join(unsealed)}); "
                        f"rerun the same `lora-wise build` command to seal them, then push")
    shown = built_views(root)
    files = [root / "README.md"] + [p for v in shown for s in SPLITS for p in shard_paths(root, v, s)]
    return PushPlan(folder=root, repo_id=repo_id, configs=configs, files=files, views=shown)


def push(folder: str | os.PathLike, repo_id: str, private: bool = False, dry_run: bool = False,
         api=None) -> PushPlan:
    """Upload ``folder`` to the dataset repo ``repo_id`` (created if missing); returns what was sent."""
    plan = plan_push(folder, repo_id)
    if dry_run:
        return plan
    if api is None:
        from huggingface_hub import HfApi

        require_token(f"push to {plan.repo_id}")
        api = HfApi()
    repo_id = plan.repo_id
    render(plan.folder, repo=repo_id)  # the card's loading example names the repo
    with talking_to_hub(f"upload to {repo_id}"):
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        for view in plan.views:
            api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=data_dir(plan.folder, view),
                              path_in_repo=data_path(view), allow_patterns=["*.parquet"],
                              ignore_patterns=[".*", "**/.*"], delete_patterns=["*.parquet"],
                              commit_message=f"LoRA-WiSE: upload {view}")
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=plan.folder,
                          allow_patterns=["README.md"], commit_message="LoRA-WiSE: dataset card")
    return plan
