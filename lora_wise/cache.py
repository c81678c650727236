"""Where LoRA-WiSE keeps what it can rebuild: backbones, feature tables, the local leaderboard.

Everything the package writes outside an explicit output folder goes under one
directory, so users can find it, move it or wipe it:

* ``$LORA_WISE_CACHE`` when set;
* otherwise ``$XDG_CACHE_HOME/lora-wise``;
* otherwise ``~/.cache/lora-wise``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LORA_WISE_CACHE"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """Return the cache directory (or a sub-directory of it), creating it on demand."""
    root = os.environ.get(ENV_VAR)
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lora-wise"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
