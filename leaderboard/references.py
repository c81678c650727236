"""The true dataset sizes a submission is scored against, and the checks that tie the two.

References come from a LoRA-WiSE dataset -- a local folder such as ``lora-wise``
(the builder's default output) or a Hub repo id -- through
``lora_wise.data.labels`` at each config's default checkpoint.  The dataset is
``--dataset`` on the command line, else ``$LORA_WISE_DATASET``, else ``lora-wise``.

Config names may be aliases (``medium_32`` is ``medium_r32``); an unknown config,
an unknown split, a config the dataset lacks or a dataset that cannot be opened is
a ``SubmissionError`` saying what exists and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lora_wise.configs import UnknownConfigError, canonical_name
from lora_wise.errors import DatasetLayoutError, LoRAWiSEError, NotFoundError
from lora_wise.schema import SPLITS

from .submission import EXAMPLES, SubmissionError, counted

DATASET_ENV = "LORA_WISE_DATASET"
DEFAULT_DATASET = "lora-wise"
DEFAULT_SPLIT = "test"


def default_dataset() -> str:
    """Where references come from when nobody says: ``$LORA_WISE_DATASET`` or ``lora-wise``."""
    return os.environ.get(DATASET_ENV) or DEFAULT_DATASET


@dataclass(frozen=True)
class References:
    """The model ids of one split of one config and their true sizes, in dataset order."""

    dataset: str
    config: str
    split: str
    sizes: dict[str, int]
    #: What these models are, for messages (default: ``the <split> split of <config>``).
    label: str = ""

    def check_ids(self, predicted_ids) -> None:
        """Every model of the split predicted, nothing else (duplicates are caught when parsing)."""
        predicted = set(predicted_ids)
        missing = [m for m in self.sizes if m not in predicted]
        unknown = [m for m in predicted_ids if m not in self.sizes]
        where = self.label or f"the {self.split} split of {self.config}"
        problems = []
        if missing:
            problems.append(f"{counted(missing, 'model', 'have')} no prediction among the {len(self.sizes)} of {where} "
                            f"(e.g. {', '.join(missing[:EXAMPLES])}); predict every model of the split")
        if unknown:
            example = next(iter(self.sizes))
            problems.append(f"{counted(unknown, 'model id')} not in {where} "
                            f"(e.g. {', '.join(map(repr, unknown[:EXAMPLES]))}); ids look like {example!r} -- "
                            f"check --config and --split")
        if problems:
            raise SubmissionError("the predictions do not match the references:\n  - " + "\n  - ".join(problems))


def resolve_config(config: str | None) -> str:
    """The canonical config name, or a ``SubmissionError`` listing the known ones."""
    if not config or not str(config).strip():
        raise SubmissionError("no config given: say which config the predictions are for "
                              "(--config NAME, e.g. mini_low_r8; `lora-wise configs` lists them)")
    try:
        return canonical_name(str(config).strip())
    except UnknownConfigError as exc:
        raise SubmissionError(str(exc)) from None


def resolve_split(split: str | None) -> str:
    split = (split or DEFAULT_SPLIT).strip()
    if split not in SPLITS:
        raise SubmissionError(f"unknown split {split!r}: LoRA-WiSE configs have {' and '.join(SPLITS)} "
                              f"(the leaderboard ranks {DEFAULT_SPLIT})")
    return split


def available_configs(dataset: str | os.PathLike) -> list[str]:
    """Configs the dataset holds: shards under a local folder, or the Hub repo's configs; none when it
    cannot be read (offline, private, missing).  :func:`lora_wise.data.dataset_configs` says why."""
    from lora_wise.data import dataset_configs

    try:
        return dataset_configs(dataset)
    except LoRAWiSEError:
        return []


def _labels(where: str, config: str, split: str):
    """``lora_wise.data.labels`` of one split at the checkpoint step, its failures as ``SubmissionError``."""
    from lora_wise.data import labels, locate

    try:
        locate(where)  # decided before any Hub call
    except NotFoundError:
        raise SubmissionError(
            f"no LoRA-WiSE dataset at {where!r} to score against: build one (`lora-wise build --config "
            f"{config} --out {where}`), or point --dataset (or ${DATASET_ENV}) at a folder or Hub repo id") from None
    except DatasetLayoutError as exc:  # a file
        raise SubmissionError(f"cannot read the references of {config}/{split} from {where!r}: {exc}") from None
    try:
        found = labels(where, config, split=split)
    except (UnknownConfigError, ValueError) as exc:
        raise SubmissionError(f"cannot read the references of {config}/{split} from {where!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - network, permissions, a repo that does not exist
        raise SubmissionError(
            f"cannot open the dataset {where!r} to read the references of {config}/{split} "
            f"({type(exc).__name__}: {exc}); point --dataset (or ${DATASET_ENV}) at a LoRA-WiSE folder or "
            f"Hub repo id") from None
    if not found.model_ids:
        raise SubmissionError(f"the {split} split of {config} in {where!r} has no models at the checkpoint "
                              f"step; rebuild it with `lora-wise build --config {config}`")
    return found


def load_references(dataset: str | os.PathLike | None, config: str, split: str = DEFAULT_SPLIT) -> References:
    """True sizes of ``split`` of ``config`` in ``dataset`` (None: the default dataset)."""
    where = str(dataset) if dataset else default_dataset()
    config, split = resolve_config(config), resolve_split(split)
    found = _labels(where, config, split)
    return References(dataset=where, config=config, split=split,
                      sizes=dict(zip(found.model_ids, (int(s) for s in found.dataset_sizes))))


def load_draw_references(dataset: str | os.PathLike | None, config: str, n: int) -> list[References]:
    """The true sizes of the test models of each of the first ``n`` draws of the reference protocol.

    A draw's test models are those of its test micro-datasets (``lora_wise.splits.draws``) at the
    checkpoint step, from both splits of the dataset -- what ``lora_wise.protocol`` scores on that draw.
    """
    from lora_wise.splits import draws

    where = str(dataset) if dataset else default_dataset()
    config = resolve_config(config)
    models = []
    for split in SPLITS:
        found = _labels(where, config, split)
        models += zip(found.model_ids, (int(s) for s in found.dataset_sizes),
                      (int(i) for i in found.micro_dataset_indices))
    out = []
    for index, split in enumerate(draws(config, n)):
        test = set(split.test)
        out.append(References(dataset=where, config=config, split=DEFAULT_SPLIT,
                              sizes={m: size for m, size, micro in models if micro in test},
                              label=f"the test micro-datasets of draw {index} of {config}"))
    return out
