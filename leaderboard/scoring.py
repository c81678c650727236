"""Submit predictions or a results record: validate, score against the references, store, rank.

``submit`` is the one code path behind ``lora-wise submit``, the Space's upload
form and the reference baselines.  It checks everything before it writes
anything, so an error of any kind leaves the store untouched:

1. the metadata (method required; config and split known, aliases resolved;
   file columns agreeing with the options; method, authors and link under the
   character policy of ``lora_wise.text``),
2. the file (``submission.read_submission``): a predictions file (CSV or JSON Lines)
   or a results record (``lora-wise evaluate``'s JSON),
3. for a record: its draws are the reference protocol's (``lora_wise.splits.draws``: the
   same train and test micro-datasets, in order), at the config's checkpoint step,
4. the model ids against the references -- the test split, or each draw's test
   micro-datasets (none missing, none unknown),
5. the scores, always recomputed here: ``compute_metrics`` of the ``dataset_size_recovery``
   metric on every draw (a record's reported metrics are never used), with the per-size
   breakdown and the confusion matrix of the standard split,

then appends one ``Entry`` -- refused as a duplicate when an entry of the same config with
the same predictions is on the board -- and returns it with its rank on its config and split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lora_wise.configs import get_config
from lora_wise.splits import SEED, draws
from lora_wise.text import check_link, check_text

from .entries import PROTOCOL_LABELS, Entry, format_metric, rank_of
from .references import References, load_draw_references, load_references, resolve_config, resolve_split
from .submission import ParsedSubmission, SubmissionError, read_submission
from .store import Store, open_store, ranked_entries


def format_scores(entry: Entry) -> str:
    """The standard split's numbers and, for a record, the paper protocol's mean ± std -- each labelled."""
    lines = [f"{PROTOCOL_LABELS['standard']}: " + ", ".join(
        f"{label} {format_metric(m, entry.metrics[m])}" for m, label in (("mae", "MAE"), ("mape", "MAPE"),
                                                                         ("accuracy", "accuracy")))]
    summary = entry.summary()
    if summary:
        lines.append(f"{PROTOCOL_LABELS['paper']}: " + ", ".join(
            f"{label} {format_metric(m, summary[m]['mean'], summary[m]['std'])}"
            for m, label in (("mae", "MAE"), ("mape", "MAPE"), ("accuracy", "accuracy"))))
    return "\n".join(lines)


@dataclass(frozen=True)
class SubmitResult:
    """The stored entry, its rank among the ranked entries of its config and split, and where it went."""

    entry: Entry
    rank: int
    total: int
    store: str

    def format(self) -> str:
        e = self.entry
        return (f"{e.method} on {e.config}/{e.split} ({e.n_models} models)\n{format_scores(e)}\n"
                f"stored as entry {e.short_id} in {self.store}\n"
                f"rank {self.rank} of {self.total} on {e.config}/{e.split} (by the {PROTOCOL_LABELS['standard']}'s MAE)")


def resolve_metadata(file_metadata: dict[str, str], record: bool = False, **given: str | None) -> dict[str, str]:
    """Merge the options with the file's metadata (a results record's method and config, or a predictions
    file's columns); a disagreement or text outside the policy is an error."""
    merged = {}
    for key in ("method", "authors", "link", "config", "split"):
        option = (given.get(key) or "").strip()
        in_file = (file_metadata.get(key) or "").strip()
        if option and in_file:
            same = (resolve_config(option) == resolve_config(in_file)) if key == "config" else option == in_file
            if not same:
                if record:
                    raise SubmissionError(f"the record's {key} is {in_file!r} but the submission says {option!r}; "
                                          f"make them agree, or leave the {key} to the record")
                raise SubmissionError(f"the file's {key!r} column says {in_file!r} but the submission says "
                                      f"{option!r}; make them agree or drop the column from the file")
        merged[key] = option or in_file
    if not merged["method"]:
        raise SubmissionError("no method name: name the method that made the predictions "
                              "(--method NAME, or a `method` column in the file)")
    merged["config"] = resolve_config(merged["config"])
    merged["split"] = resolve_split(merged["split"])
    merged["method"] = check_text(merged["method"], "method", required=True)
    merged["authors"] = check_text(merged["authors"], "authors")
    merged["link"] = check_link(merged["link"])
    return merged


def score(predictions: dict[str, float], references: References, details: bool = True) -> dict:
    """MAE, MAPE, accuracy (and, with ``details``, per-size numbers and the confusion matrix)."""
    from lora_wise.metrics.dataset_size_recovery import DatasetSizeRecoveryInputError, compute_metrics

    references.check_ids(predictions)
    ids = list(references.sizes)
    try:
        return compute_metrics([predictions[m] for m in ids], [references.sizes[m] for m in ids],
                               per_size=details, confusion_matrix=details)
    except DatasetSizeRecoveryInputError as exc:
        raise SubmissionError(f"the predictions cannot be scored: {exc}") from None


def _micro_indices(values: tuple, config: str, where: str) -> set[int]:
    cfg = get_config(config)
    names = {cfg.micro_dataset_name(i): i for i in range(cfg.num_micro_datasets)}
    out = set()
    for value in values:
        index = value if isinstance(value, int) else names.get(value)
        if index is None or not 0 <= index < cfg.num_micro_datasets:
            raise SubmissionError(f"{where} names micro-dataset {value!r}, which {config} does not have "
                                  f"(indices 0..{cfg.num_micro_datasets - 1})")
        out.add(index)
    return out


def check_record_split(parsed: ParsedSubmission, config: str) -> None:
    """A record's checkpoint step, split seed and every draw's micro-datasets are the leaderboard's."""
    cfg = get_config(config)
    dataset = parsed.source.get("dataset") or {}
    for key, expected, fix in (("checkpoint_step", cfg.checkpoint_step, "the config's checkpoint (the default)"),
                               ("split_seed", SEED, f"the reference seed {SEED}")):
        value = dataset.get(key)
        if value != expected or isinstance(value, bool):
            raise SubmissionError(f"the record was evaluated with {key} {value!r}, but the leaderboard scores "
                                  f"{cfg.name} with {key} {expected}; evaluate again with {fix}")
    for position, (draw, split) in enumerate(zip(parsed.draws, draws(cfg, len(parsed.draws)))):
        if draw.draw != position:
            raise SubmissionError(f"the record's draw {position} is numbered {draw.draw}; draws are numbered "
                                  f"0 to {len(parsed.draws) - 1} in the order of the reference protocol")
        for side, given, expected in (("train", draw.train, split.train), ("test", draw.test, split.test)):
            if _micro_indices(given, cfg.name, f"draw {position}") != set(expected):
                raise SubmissionError(
                    f"draw {position} of the record has other {side} micro-datasets than draw {position} of the "
                    f"reference protocol for {cfg.name} (lora_wise.splits.draws: random.seed({SEED}), "
                    f"{cfg.num_train_micro_datasets} of {cfg.num_micro_datasets} for training); evaluate "
                    f"with lora-wise's splits")


def _score_draws(parsed: ParsedSubmission, dataset, config: str) -> tuple[dict, list[dict], References]:
    """The standard split's metrics and every draw's, recomputed against the references."""
    check_record_split(parsed, config)
    references = load_draw_references(dataset, config, len(parsed.draws))
    scored = []
    for draw, refs in zip(parsed.draws, references):
        metrics = score(draw.predictions, refs, details=draw.draw == 0)
        scored.append({"draw": draw.draw, "metrics": {m: metrics[m] for m in ("mae", "mape", "accuracy")},
                       "predictions": {m: draw.predictions[m] for m in refs.sizes}})
        if draw.draw == 0:
            standard = metrics
    return standard, scored, references[0]


def submit(source: str | os.PathLike | bytes | ParsedSubmission, *, method: str | None = None,
           config: str | None = None, split: str | None = None, authors: str | None = None,
           link: str | None = None, dataset: str | os.PathLike | None = None, store: Store | None = None,
           reference: bool = False, name: str | None = None,
           references: References | None = None) -> SubmitResult:
    """Validate, score, store and rank one submission.

    ``source`` is a file path, the file's bytes (an upload; ``name`` is used in messages)
    or an already parsed submission (the reference baselines): a predictions file or a
    results record (its config and method are read from it; options may repeat them).
    ``dataset`` holds the references (default ``$LORA_WISE_DATASET`` or ``lora-wise``);
    ``store`` defaults to ``open_store()``.  ``references`` skips re-reading the test split's
    references when the caller has them.  Raises ``SubmissionError`` or ``TextPolicyError``
    (both ``ValueError``) and stores nothing on any problem.
    """
    # The options are checked before the file is read: a typo in --config costs nothing.
    if config:
        resolve_config(config)
    if split:
        resolve_split(split)
    parsed = source if isinstance(source, ParsedSubmission) else read_submission(source, name=name)
    meta = resolve_metadata(parsed.metadata, record=bool(parsed.draws), method=method, config=config, split=split,
                            authors=authors, link=link)
    draw_scores: list[dict] = []
    if parsed.draws:
        metrics, draw_scores, references = _score_draws(parsed, dataset, meta["config"])
    else:
        if references is None or (references.config, references.split) != (meta["config"], meta["split"]):
            references = load_references(dataset, meta["config"], meta["split"])
        metrics = score(parsed.predictions, references)
    predictions = {m: parsed.predictions[m] for m in references.sizes}
    entry = Entry(method=meta["method"], authors=meta["authors"], link=meta["link"], config=meta["config"],
                  split=meta["split"], dataset=references.dataset, metrics=metrics, predictions=predictions,
                  reference=reference, protocol=parsed.protocol, draws=draw_scores, source=parsed.source)
    store = store if store is not None else open_store()
    store.append(entry)
    rank, total = rank_of(entry.id, ranked_entries(store, entry.config, entry.split))
    return SubmitResult(entry=entry, rank=rank, total=total, store=store.location)
