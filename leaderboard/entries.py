"""A leaderboard entry, its withdrawal, its fingerprints, the ranking and how its numbers are shown.

An ``Entry`` is immutable: once stored it is never changed, only joined by newer
entries -- and, when its submitter withdraws it, by a ``Withdrawal`` record that takes
it out of the ranking while it stays in the history.  An entry keeps the predictions
themselves (so it can be re-scored or inspected):

* ``predictions`` and ``metrics``: the **standard split** (draw 0 of the reference
  protocol, the test split of the dataset) -- the number the leaderboard ranks;
* ``draws`` (an entry made from a results record): every draw's predictions and
  metrics, recomputed here, so ``summary()`` gives the mean ± std over the
  **paper protocol**'s 10 draws beside the standard number.

``sha256`` is the SHA-256 of the standard predictions' canonical form (pairs sorted by
model id, values as floats, compact JSON), so the same predictions hash the same
whatever order or number formatting the file used, and ``verify()`` detects an entry
whose stored predictions were altered.  ``duplicate_key()`` hashes the config, the
split and every draw's predictions: a second active entry with the same key is refused.

Ranking is by the standard split's MAE (lower first), then its MAPE, then the earlier time.
Metrics are fractions (MAPE 0.0397, accuracy 0.861); :func:`format_metric` is the one
place that turns them into text.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from lora_wise import jsonio
from lora_wise.metrics.dataset_size_recovery.scores import FRACTIONS, for_display
from lora_wise.results import MAX_PREDICTION
from lora_wise.text import check_link, check_text, one_line, safe_link

METRICS = ("mae", "mape", "accuracy")
METRIC_NAMES = {"mae": "MAE", "mape": "MAPE", "accuracy": "accuracy"}
#: The protocols an entry can carry, and how every number says which one it belongs to.
PROTOCOL_LABELS = {"standard": "standard split", "paper": "paper protocol: mean ± std of 10 draws"}
#: Format of an entry's stored form; 1 (before withdrawals and records) stored MAPE and accuracy in percent.
ENTRY_FORMAT = 2


def format_metric(metric: str, value: float | None, std: float | None = None) -> str:
    """``0.770``, ``3.97%``, ``86.11 ± 2.50%``: every metric the leaderboard prints goes through here
    (the units are the metric's ``for_display``: MAE in images, MAPE and accuracy in percent)."""
    if value is None:
        return "-"
    unit = "%" if metric in FRACTIONS else ""
    digits = 2 if unit else 3
    text = f"{for_display(metric, value):.{digits}f}"
    if std is not None:
        text += f" ± {for_display(metric, std):.{digits}f}"
    return text + unit


def metric_header(metric: str, protocol: str = "standard") -> str:
    """``"MAE (standard split)"``: a column header naming the protocol of its numbers."""
    return f"{METRIC_NAMES[metric]} ({PROTOCOL_LABELS[protocol]})"


def canonical_predictions(predictions: dict[str, float]) -> str:
    """Compact JSON of the ``[model_id, prediction]`` pairs sorted by model id."""
    return jsonio.dumps(sorted((str(k), float(v)) for k, v in predictions.items()), compact=True)


def predictions_sha256(predictions: dict[str, float]) -> str:
    return hashlib.sha256(canonical_predictions(predictions).encode()).hexdigest()


def duplicate_key(config: str, split: str, draws: list[dict[str, float]]) -> str:
    """SHA-256 of the config, the split and each draw's predictions (draw 0 first) in canonical form."""
    payload = [config, split, [sorted((str(k), float(v)) for k, v in d.items()) for d in draws]]
    return hashlib.sha256(jsonio.dumps(payload, compact=True).encode()).hexdigest()


def utc_now() -> str:
    """The current time as UTC ISO-8601 with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_entry_id() -> str:
    return uuid.uuid4().hex


def _from_percent(metrics: dict) -> dict:
    """Metrics of an entry stored in format 1 (MAPE and accuracy in percent) as fractions."""
    out = dict(metrics)
    for key in set(FRACTIONS) & set(out):
        out[key] = float(out[key]) / 100.0
    if isinstance(out.get("per_size"), dict):
        out["per_size"] = {size: _from_percent(values) for size, values in out["per_size"].items()}
    return out


class _Stored:
    """What entries and withdrawals share: a UTC ``time``, and their JSON form in the stores."""

    time: str

    @property
    def date(self) -> str:
        """``YYYY-MM-DD HH:MM`` (UTC) for tables."""
        return self.time[:16].replace("T", " ")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return jsonio.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_json(cls, text: str | bytes):
        return cls.from_dict(jsonio.loads(text))


@dataclass(frozen=True)
class Entry(_Stored):
    """One scored submission: the standard split's predictions and metrics, and every draw of a record."""

    method: str
    config: str
    split: str
    dataset: str
    metrics: dict
    predictions: dict[str, float]
    authors: str = ""
    link: str = ""
    reference: bool = False
    id: str = field(default_factory=new_entry_id)
    time: str = field(default_factory=utc_now)
    sha256: str = ""
    n_models: int = 0
    #: ``"standard"`` (one draw: a predictions file) or ``"paper"`` (a results record's 10 draws).
    protocol: str = "standard"
    #: Results records: ``[{"draw": i, "metrics": {mae, mape, accuracy}, "predictions": {...}}]``, draw 0 first.
    draws: list = field(default_factory=list)
    #: Results records: the method's class and parameters, package versions, the dataset's fingerprint, dates.
    source: dict = field(default_factory=dict)
    format: int = ENTRY_FORMAT

    def __post_init__(self) -> None:
        # Metrics in their JSON form (per-size keys become strings), so an entry read back
        # from any store equals the one that was written; a non-finite number is refused here.
        object.__setattr__(self, "metrics", jsonio.loads(jsonio.dumps(self.metrics)))
        object.__setattr__(self, "draws", jsonio.loads(jsonio.dumps(list(self.draws))))
        object.__setattr__(self, "source", jsonio.loads(jsonio.dumps(self.source)))
        if not self.sha256:
            object.__setattr__(self, "sha256", predictions_sha256(self.predictions))
        if not self.n_models:
            object.__setattr__(self, "n_models", len(self.predictions))

    @property
    def mae(self) -> float:
        return float(self.metrics["mae"])

    @property
    def mape(self) -> float:
        return float(self.metrics["mape"])

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    def summary(self) -> dict[str, dict[str, float]] | None:
        """Mean and standard deviation (ddof=0, as the protocol runner) of each metric over the draws;
        None for an entry with fewer than two draws (a predictions file: the standard split only)."""
        if len(self.draws) < 2:
            return None
        out = {}
        for metric in METRICS:
            values = [float(d["metrics"][metric]) for d in self.draws]
            mean = math.fsum(values) / len(values)
            out[metric] = {"mean": mean, "std": math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))}
        return out

    def mean_text(self, metric: str) -> str:
        """``"0.900 ± 0.130"`` over the paper protocol's draws, or ``"-"`` (standard split only)."""
        summary = self.summary()
        return format_metric(metric, summary[metric]["mean"], summary[metric]["std"]) if summary else "-"

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def shown_link(self) -> str:
        """The link when it passes today's character policy; an older row's bad link is not shown as one."""
        return safe_link(self.link)

    def all_draw_predictions(self) -> list[dict[str, float]]:
        """Every draw's predictions, draw 0 (the standard split) first."""
        return [d["predictions"] for d in self.draws] if self.draws else [self.predictions]

    def duplicate_key(self) -> str:
        return duplicate_key(self.config, self.split, self.all_draw_predictions())

    def verify(self) -> bool:
        """True when the stored predictions still hash to the stored SHA-256."""
        return predictions_sha256(self.predictions) == self.sha256 and len(self.predictions) == self.n_models

    def check(self) -> "Entry":
        """The entry, when what it shows follows the policies (raises ``TextPolicyError``/``ValueError``).

        Every store calls this before writing, so no path -- the CLI, the Python call, the web form,
        a script appending directly -- stores text outside the character policy or a prediction that
        is not a dataset size (an entry cannot even hold a metric that is not finite: valid JSON only).
        """
        check_text(self.method, "method", required=True)
        check_text(self.authors, "authors")
        check_link(self.link)
        for predictions in self.all_draw_predictions():
            bad = [v for v in predictions.values() if not (isinstance(v, (int, float)) and 0 < v <= MAX_PREDICTION)]
            if bad:
                raise ValueError(f"entry {self.id} holds predictions outside (0, {MAX_PREDICTION:,.0f}]: {bad[:3]}")
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "Entry":
        if data.get("format", 1) < 2:  # stored before fractions: MAPE and accuracy in percent
            data = {**data, "metrics": _from_percent(data["metrics"]), "format": ENTRY_FORMAT}
        return super().from_dict(data)


@dataclass(frozen=True)
class Withdrawal(_Stored):
    """The record that takes an entry out of the ranking; the entry itself stays, unchanged."""

    entry_id: str
    reason: str
    config: str = ""
    time: str = field(default_factory=utc_now)
    id: str = field(default_factory=new_entry_id)

    def check(self) -> "Withdrawal":
        check_text(self.reason, "reason", required=True)
        return self


def active(entries: Iterable[Entry], withdrawals: Iterable[Withdrawal]) -> list[Entry]:
    """The entries no withdrawal names: the ones that are ranked."""
    gone = {w.entry_id for w in withdrawals}
    return [e for e in entries if e.id not in gone]


def rank_key(entry: Entry) -> tuple:
    return (entry.mae, entry.mape, entry.time)


def rank_entries(entries: Iterable[Entry]) -> list[Entry]:
    """Best first: MAE ascending, then MAPE, then earlier time."""
    return sorted(entries, key=rank_key)


def rank_of(entry_id: str, entries: Iterable[Entry]) -> tuple[int, int]:
    """``(rank, total)`` of one entry among ``entries`` (one config and split), rank from 1."""
    ranked = rank_entries(entries)
    for position, entry in enumerate(ranked, start=1):
        if entry.id == entry_id:
            return position, len(ranked)
    raise KeyError(f"entry {entry_id} is not among the {len(ranked)} entries ranked")


#: The ranked table's columns: the standard split's numbers, then the paper protocol's means.
BOARD_COLUMNS = ["rank", "method", "authors", metric_header("mae"), metric_header("mape"),
                 metric_header("accuracy"), metric_header("mae", "paper"), metric_header("accuracy", "paper"),
                 "date", "kind", "id"]


def board_rows(entries: Iterable[Entry]) -> list[dict]:
    """Ranked rows for a table, every number as text from :func:`format_metric`, labelled by protocol."""
    rows = []
    for position, e in enumerate(rank_entries(entries), start=1):
        rows.append({"rank": position, "method": e.method, "authors": e.authors,
                     metric_header("mae"): format_metric("mae", e.mae),
                     metric_header("mape"): format_metric("mape", e.mape),
                     metric_header("accuracy"): format_metric("accuracy", e.accuracy),
                     metric_header("mae", "paper"): e.mean_text("mae"),
                     metric_header("accuracy", "paper"): e.mean_text("accuracy"),
                     "date": e.date, "kind": "reference" if e.reference else "submission", "id": e.short_id})
    return rows


#: Widest text a terminal table shows of a name or a reason (the rest is cut with "…").
TERMINAL_TEXT_WIDTH = 40


def format_table(columns: list[str], rows: list[list[str]], numeric: set[str] = frozenset()) -> list[str]:
    """Aligned text lines (header, rule, rows); every cell is shown with control characters escaped."""
    cells = [[one_line(str(c), TERMINAL_TEXT_WIDTH) for c in row] for row in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    fmt = lambda values: "  ".join(v.rjust(w) if c in numeric else v.ljust(w)  # noqa: E731
                                   for v, w, c in zip(values, widths, columns)).rstrip()
    return [fmt(columns), "  ".join("-" * w for w in widths)] + [fmt(row) for row in cells]


#: Short protocol names for the terminal's column headers, explained in a legend line under the title.
SHORT_PROTOCOL = {"standard": "standard", "paper": "paper"}
LEGEND = (f"standard: the {PROTOCOL_LABELS['standard']} (ranked); "
          f"paper: the {PROTOCOL_LABELS['paper']} (results records)")


def format_board(entries: Iterable[Entry], title: str = "", withdrawals: Iterable[Withdrawal] = (),
                 show_withdrawn: bool = False) -> str:
    """The ranked table as aligned text, for ``lora-wise leaderboard show``.

    Withdrawn entries are left out of the ranking; with ``show_withdrawn`` they follow it, each
    with its withdrawal date and reason.  Names and reasons are shown with every control, escape
    and bidi character as a visible escape (``lora_wise.text.visible``), cut to a readable width.
    Each number's column names its protocol (the legend under the title says what they are).
    """
    entries = list(entries)
    withdrawn = {w.entry_id: w for w in withdrawals}
    ranked = active(entries, withdrawn.values())
    metrics = [("mae", "standard"), ("mape", "standard"), ("accuracy", "standard"), ("mae", "paper")]
    columns = ["rank", "method", *(f"{METRIC_NAMES[m]} ({SHORT_PROTOCOL[p]})" for m, p in metrics),
               "date", "kind", "id"]
    rows = []
    for position, e in enumerate(rank_entries(ranked), start=1):
        rows.append([str(position), e.method, format_metric("mae", e.mae), format_metric("mape", e.mape),
                     format_metric("accuracy", e.accuracy), e.mean_text("mae"), e.date,
                     "reference" if e.reference else "submission", e.short_id])
    for e in (e for e in entries if e.id in withdrawn and show_withdrawn):
        w = withdrawn[e.id]
        rows.append(["-", e.method, format_metric("mae", e.mae), format_metric("mape", e.mape),
                     format_metric("accuracy", e.accuracy), e.mean_text("mae"), e.date,
                     f"withdrawn {w.date}: {w.reason}", e.short_id])
    lines = [one_line(title)] if title else []
    if not rows:
        return "\n".join(lines + ["(no entries yet: `lora-wise submit` adds one)"])
    numeric = {"rank", *columns[2:6]}
    return "\n".join(lines + [LEGEND] + format_table(columns, rows, numeric))
