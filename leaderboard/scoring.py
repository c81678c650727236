"""Submit predictions: validate, score against the references, store, rank.

``submit`` is the one code path behind ``lora-wise submit``, the Space's upload
form and the reference baselines.  It checks everything before it writes
anything, so an error of any kind leaves the store untouched:

1. the metadata (method required; config and split known, aliases resolved;
   file columns agreeing with the options),
2. the file (``submission.read_submission``),
3. the model ids against the split's references (none missing, none unknown),
4. the scores: ``compute_metrics`` of the ``dataset_size_recovery`` metric with the
   per-size breakdown and the confusion matrix, which the app draws,

then appends one ``Entry`` and returns it with its rank on its config and split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lora_wise.metrics.dataset_size_recovery.scores import for_display

from .entries import Entry, rank_of
from .references import References, load_references, resolve_config, resolve_split
from .submission import ParsedSubmission, SubmissionError, check_text, read_submission
from .store import Store, open_store


@dataclass(frozen=True)
class SubmitResult:
    """The stored entry, its rank among the entries of its config and split, and where it went."""

    entry: Entry
    rank: int
    total: int
    store: str

    def format(self) -> str:
        e = self.entry
        return (f"{e.method} on {e.config}/{e.split} ({e.n_models} models): MAE {e.mae:.3f}, "
                f"MAPE {for_display('mape', e.mape):.2f}%, accuracy {for_display('accuracy', e.accuracy):.2f}%\n"
                f"stored as entry {e.short_id} in {self.store}\n"
                f"rank {self.rank} of {self.total} on {e.config}/{e.split}")


def resolve_metadata(file_metadata: dict[str, str], **given: str | None) -> dict[str, str]:
    """Merge the options with the file's metadata columns; a disagreement is an error."""
    merged = {}
    for key in ("method", "authors", "link", "config", "split"):
        option = (given.get(key) or "").strip()
        in_file = (file_metadata.get(key) or "").strip()
        if option and in_file:
            same = (resolve_config(option) == resolve_config(in_file)) if key == "config" else option == in_file
            if not same:
                raise SubmissionError(f"the file's {key!r} column says {in_file!r} but the submission says "
                                      f"{option!r}; make them agree or drop the column from the file")
        merged[key] = option or in_file
    if not merged["method"]:
        raise SubmissionError("no method name: name the method that made the predictions "
                              "(--method NAME, or a `method` column in the file)")
    merged["config"] = resolve_config(merged["config"])
    merged["split"] = resolve_split(merged["split"])
    for key in ("method", "authors", "link"):
        merged[key] = check_text(key, merged[key])
    return merged


def score(predictions: dict[str, float], references: References) -> dict:
    """MAE, MAPE, accuracy, per-size numbers and the confusion matrix, in the references' order."""
    from lora_wise.metrics.dataset_size_recovery import DatasetSizeRecoveryInputError, compute_metrics

    references.check_ids(predictions)
    ids = list(references.sizes)
    try:
        return compute_metrics([predictions[m] for m in ids], [references.sizes[m] for m in ids],
                               per_size=True, confusion_matrix=True)
    except DatasetSizeRecoveryInputError as exc:
        raise SubmissionError(f"the predictions cannot be scored: {exc}") from None


def submit(source: str | os.PathLike | bytes | ParsedSubmission, *, method: str | None = None,
           config: str | None = None, split: str | None = None, authors: str | None = None,
           link: str | None = None, dataset: str | os.PathLike | None = None, store: Store | None = None,
           reference: bool = False, name: str | None = None,
           references: References | None = None) -> SubmitResult:
    """Validate, score, store and rank one submission.

    ``source`` is a file path, the file's bytes (an upload; ``name`` is used in messages)
    or an already parsed submission (the reference baselines).  ``dataset`` holds the
    references (default ``$LORA_WISE_DATASET`` or ``lora-wise``); ``store`` defaults to
    ``open_store()``.  ``references`` skips re-reading them when the caller has them.
    Raises ``SubmissionError`` (a ``ValueError``) and stores nothing on any problem.
    """
    # The options are checked before the file is read: a typo in --config costs nothing.
    if config:
        resolve_config(config)
    if split:
        resolve_split(split)
    parsed = source if isinstance(source, ParsedSubmission) else read_submission(source, name=name)
    meta = resolve_metadata(parsed.metadata, method=method, config=config, split=split,
                            authors=authors, link=link)
    if references is None or (references.config, references.split) != (meta["config"], meta["split"]):
        references = load_references(dataset, meta["config"], meta["split"])
    metrics = score(parsed.predictions, references)
    predictions = {m: parsed.predictions[m] for m in references.sizes}
    entry = Entry(method=meta["method"], authors=meta["authors"], link=meta["link"], config=meta["config"],
                  split=meta["split"], dataset=references.dataset, metrics=metrics, predictions=predictions,
                  reference=reference)
    store = store if store is not None else open_store()
    store.append(entry)
    rank, total = rank_of(entry.id, store.entries(entry.config, entry.split))
    return SubmitResult(entry=entry, rank=rank, total=total, store=store.location)
