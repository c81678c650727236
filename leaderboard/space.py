"""``lora-wise leaderboard deploy``: assemble the leaderboard as a Gradio Space and upload it.

``assemble_space`` writes a folder that runs on Hugging Face Spaces by itself::

    README.md          the Space card: YAML front matter (sdk: gradio, sdk_version = the gradio
                       installed here, python_version, app_file: app.py, license) and a short text
    app.py             puts its own folder first on sys.path, builds the app (``demo``) on import
                       and launches it when run as ``python app.py`` (as a Space runs it)
    requirements.txt   lora-wise's core dependencies and its ``leaderboard`` extra, read from the
                       installed package metadata and pinned to the versions installed here
    lora_wise/         a copy of the installed package as far as the app imports it: the library
                       (floor 1) and ``lora_wise/leaderboard/``; not the other stages nor the
                       commands (torch, diffusers and PEFT are not on the app's import chain)

``deploy_space`` creates the Space repo if needed, sets its variables
(``LORA_WISE_DATASET``, ``LORA_WISE_LEADERBOARD_REPO``, ``LORA_WISE_SEED_BASELINES=1`` so a
fresh Space adds the reference baselines on start) and uploads the folder in one commit,
through ``huggingface_hub.HfApi`` (``create_repo``, ``add_space_variable``, ``upload_folder``).
The token is whatever huggingface_hub finds (``HF_TOKEN`` or ``hf auth login``); it is
passed to nothing and printed nowhere by this module.  The Space itself needs an
``HF_TOKEN`` secret that can write to the results repo; that is left to its owner.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lora_wise.errors import SpaceError
from lora_wise.hub import check_repo_id, require_token, talking_to_hub

from .baselines import SEED_ENV
from .references import DATASET_ENV
from .store import REPO_ENV

#: The distribution whose metadata lists the Space's requirements, and the extra it needs.
DISTRIBUTION = "lora-wise"
EXTRA = "leaderboard"
#: The package copied into the Space, and the parts of it the app never imports (left out): the other
#: stages (the builder needs torch, diffusers and PEFT), the command line, the demo and the report.
PACKAGE = "lora_wise"
LEFT_OUT = ("builder", "published", "cli", "demo.py", "report.py")
SPACE_FILES = ("README.md", "app.py", "requirements.txt")
#: Never copied nor uploaded (bytecode of a run of the assembled folder).
IGNORE_PATTERNS = ["*.pyc", "*__pycache__*"]

CARD_META = {
    "title": "LoRA-WiSE leaderboard",
    "emoji": "📉",
    "colorFrom": "blue",
    "colorTo": "indigo",
    "sdk": "gradio",
    "app_file": "app.py",
    "pinned": False,
    "license": "apache-2.0",
    "short_description": "Dataset size recovery from LoRA weights, ranked",
}

APP_PY = '''\
"""Entry point of the LoRA-WiSE leaderboard Space (written by `lora-wise leaderboard deploy`).

Configured by the Space variables LORA_WISE_DATASET, LORA_WISE_LEADERBOARD_REPO and
LORA_WISE_SEED_BASELINES, and an HF_TOKEN secret that can write to the results repo.
"""

import os
import sys

# The copy of lora_wise beside this file wins over any installed one.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from lora_wise.leaderboard.app import build_app, launch_from_environment  # noqa: E402

demo = build_app()

if __name__ == "__main__":
    launch_from_environment(demo)
'''

CARD_BODY = """\
# LoRA-WiSE leaderboard

**Dataset size recovery from LoRA weights**: predict how many images each LoRA of a
LoRA-WiSE test split was fine-tuned on, upload the predictions in the *Submit* tab, and see
them scored (MAE, MAPE, accuracy) and ranked beside the paper's baselines, DSiRe and
Frobenius-NN ([Salama et al., 2024](https://arxiv.org/abs/2406.19395)).

* References (the true sizes): [{dataset}](https://huggingface.co/datasets/{dataset})
* Results, one JSON file per entry: [{results_repo}](https://huggingface.co/datasets/{results_repo})

The same submission from a checkout of lora-wise:

```bash
lora-wise submit predictions.csv --config CONFIG --method "My method" \\
    --dataset {dataset} --results-repo {results_repo}
```

This Space was written by `lora-wise leaderboard deploy` from lora-wise {version}: `app.py`
runs the copy of the `lora_wise` package beside it (the library and its leaderboard), with the
dependencies of `requirements.txt`. Its variables: `{dataset_env}` (the benchmark),
`{repo_env}` (the results repo) and `{seed_env}=1` (when the app
starts, add the reference baselines of any config that has none); its `HF_TOKEN` secret
must be able to write to the results repo.
"""


@dataclass
class SpaceDeployment:
    """What was (or, on a dry run, would be) sent to the Space repo."""

    space_id: str
    folder: Path
    files: list[str]
    variables: dict[str, str]
    dry_run: bool = False
    kept: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://huggingface.co/spaces/{self.space_id}"

    def format(self) -> str:
        head = "dry run, nothing uploaded; would upload" if self.dry_run else "uploaded"
        where = f" (assembled in {self.folder})" if self.kept else ""
        lines = [f"{head} {len(self.files)} files to {self.url}{where}:"]
        lines += [f"  {name}" for name in self.files]
        lines.append(("would set" if self.dry_run else "set") + " the Space variables: "
                     + ", ".join(f"{k}={v}" for k, v in self.variables.items()))
        lines += self.notes
        return "\n".join(lines)


def space_requirements() -> list[str]:
    """lora-wise's core requirements and its ``leaderboard`` extra, pinned to the installed versions."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        declared = requires(DISTRIBUTION) or []
    except PackageNotFoundError:
        raise SpaceError(f"{DISTRIBUTION} is not installed, so its requirements are unknown; install it "
                         f"from a checkout with `pip install \".[{EXTRA}]\"`") from None
    pins: dict[str, str] = {}
    for text in declared:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": EXTRA}):
            continue  # another extra (the builder's torch, the tests' ...) or another platform
        key = canonicalize_name(req.name)
        if key in pins:
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            raise SpaceError(f"{req.name} (needed by the leaderboard) is not installed here; install "
                             f"`pip install \".[{EXTRA}]\"` so the Space can be pinned to tested versions") from None
        if not req.specifier.contains(installed, prereleases=True):
            raise SpaceError(f"{req.name} {installed} is installed but lora-wise needs {req.name}{req.specifier}; "
                             f"reinstall with `pip install \".[{EXTRA}]\"`")
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        pins[key] = f"{req.name}{extras}=={installed}"
    if "gradio" not in pins:
        raise SpaceError(f"the installed {DISTRIBUTION} metadata has no `{EXTRA}` extra with gradio; "
                         f"reinstall it from this checkout (`pip install -e \".[{EXTRA}]\"`)")
    return sorted(pins.values(), key=str.lower)


def card_text(dataset: str, results_repo: str) -> str:
    """The Space's README.md: its metadata for the Hub (huggingface_hub's ``SpaceCardData``), then a description."""
    from importlib.metadata import version

    from huggingface_hub import SpaceCard, SpaceCardData

    import lora_wise

    data = SpaceCardData(**CARD_META, sdk_version=version("gradio"), datasets=[dataset, results_repo],
                         python_version=f"{sys.version_info.major}.{sys.version_info.minor}")
    body = CARD_BODY.format(dataset=dataset, results_repo=results_repo, version=lora_wise.__version__,
                            dataset_env=DATASET_ENV, repo_env=REPO_ENV, seed_env=SEED_ENV)
    return str(SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _package_dir(name: str) -> Path:
    return Path(importlib.import_module(name).__file__).resolve().parent


def _ignored(rel: str) -> bool:
    return any(fnmatch.fnmatch(rel, pattern) for pattern in IGNORE_PATTERNS)


def _copy_package(target: Path) -> None:
    """``target``: the installed ``lora_wise`` less :data:`LEFT_OUT`, with its leaderboard as ``leaderboard/``.

    The leaderboard is copied from where it is installed (``lora_wise/leaderboard/`` of a wheel,
    ``leaderboard/`` of a checkout installed in editable mode), so both give the same folder.
    """
    library = _package_dir(PACKAGE)

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if _ignored(n)}
        if Path(folder) == library:
            skipped |= set(names) & {*LEFT_OUT, "leaderboard"}
        return skipped

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(library, target, ignore=ignore)
    shutil.copytree(_package_dir(f"{PACKAGE}.leaderboard"), target / "leaderboard",
                    ignore=shutil.ignore_patterns(*IGNORE_PATTERNS))


def space_files(folder: str | os.PathLike) -> list[str]:
    """The files of an assembled folder that an upload sends, as repo paths, sorted."""
    root = Path(folder)
    return sorted(rel for rel in (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
                  if not _ignored(rel))


def assemble_space(out_dir: str | os.PathLike, dataset: str, results_repo: str) -> Path:
    """Write the Space folder into ``out_dir`` (new, empty, or an earlier assembly); returns it."""
    dataset = check_repo_id(dataset, "dataset")
    results_repo = check_repo_id(results_repo, "results repo")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SpaceError(f"{out} is a file; give a folder to assemble the Space in")
    ours = set(SPACE_FILES) | {PACKAGE, "__pycache__"}  # bytecode of an `import app`
    others = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if others:
        raise SpaceError(f"{out} holds files that are not a leaderboard Space ({', '.join(others[:5])}); "
                         f"give a new or empty folder (everything in it is uploaded)")
    requirements = space_requirements()  # before writing anything: an error leaves the folder as it was
    out.mkdir(parents=True, exist_ok=True)
    _copy_package(out / PACKAGE)
    (out / "app.py").write_text(APP_PY, encoding="utf-8")
    (out / "requirements.txt").write_text(
        f"# The leaderboard Space's dependencies: {DISTRIBUTION}'s core requirements and its `{EXTRA}` extra,\n"
        f"# pinned to the versions `lora-wise leaderboard deploy` ran with.\n" + "\n".join(requirements) + "\n",
        encoding="utf-8")
    (out / "README.md").write_text(card_text(dataset, results_repo), encoding="utf-8")
    return out


def space_variables(dataset: str, results_repo: str) -> dict[str, str]:
    """The Space variables that configure ``leaderboard.app`` on the Hub."""
    return {DATASET_ENV: dataset, REPO_ENV: results_repo, SEED_ENV: "1"}


def deploy_space(space_id: str, dataset: str, results_repo: str, private: bool = False, dry_run: bool = False,
                 api=None, out_dir: str | os.PathLike | None = None) -> SpaceDeployment:
    """Assemble the Space and upload it to ``space_id`` (created if missing); returns what was sent.

    ``out_dir`` keeps the assembled folder there; by default it goes to a temporary folder that
    is removed afterwards (on a dry run too: the listing says what it held).
    """
    space_id = check_repo_id(space_id, "Space id")
    dataset = check_repo_id(dataset, "dataset")
    results_repo = check_repo_id(results_repo, "results repo")
    variables = space_variables(dataset, results_repo)
    temporary = None if out_dir is not None else tempfile.mkdtemp(prefix="lora-wise-space-")
    folder = Path(out_dir if out_dir is not None else temporary)
    try:
        assemble_space(folder, dataset=dataset, results_repo=results_repo)
        result = SpaceDeployment(space_id=space_id, folder=folder, files=space_files(folder), variables=variables,
                                 dry_run=dry_run, kept=temporary is None)
        if dry_run:
            return result
        if api is None:
            from huggingface_hub import HfApi

            require_token(f"deploy the Space {space_id}")
            api = HfApi()
        with talking_to_hub(f"deploy the Space {space_id}"):
            api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            # variables first: the upload starts the Space's build, which then sees them
            for key, value in variables.items():
                api.add_space_variable(space_id, key, value)
            api.upload_folder(repo_id=space_id, repo_type="space", folder_path=folder,
                              ignore_patterns=IGNORE_PATTERNS, delete_patterns=[f"{PACKAGE}/*"],
                              commit_message="LoRA-WiSE leaderboard: deploy")
        result.notes.append(f"the Space needs an HF_TOKEN secret that can write to {results_repo}: add it under "
                            f"Settings > Variables and secrets of {result.url} if it has none")
        return result
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
