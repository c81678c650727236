"""A leaderboard entry, its fingerprint, and the ranking.

An ``Entry`` is immutable: once stored it is never changed, only joined by newer
entries.  It keeps the predictions themselves (so an entry can be re-scored or
inspected) and the SHA-256 of their canonical form -- the pairs sorted by model id,
values as floats, compact JSON -- so the same predictions always hash the same
whatever order or number formatting the file used, and ``verify()`` detects an
entry whose stored predictions were altered.

Ranking is by MAE (lower first), ties broken by MAPE, then by the earlier time.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from lora_wise.metrics.dataset_size_recovery.scores import for_display

METRICS = ("mae", "mape", "accuracy")


def canonical_predictions(predictions: dict[str, float]) -> str:
    """Compact JSON of the ``[model_id, prediction]`` pairs sorted by model id."""
    return json.dumps(sorted((str(k), float(v)) for k, v in predictions.items()), separators=(",", ":"))


def predictions_sha256(predictions: dict[str, float]) -> str:
    return hashlib.sha256(canonical_predictions(predictions).encode()).hexdigest()


def utc_now() -> str:
    """The current time as UTC ISO-8601 with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def new_entry_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Entry:
    """One scored submission."""

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

    def __post_init__(self) -> None:
        # Metrics in their JSON form (per-size keys become strings), so an entry read back
        # from any store equals the one that was written.
        object.__setattr__(self, "metrics", json.loads(json.dumps(self.metrics)))
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

    @property
    def date(self) -> str:
        """``YYYY-MM-DD HH:MM`` (UTC) for tables."""
        return self.time[:16].replace("T", " ")

    @property
    def short_id(self) -> str:
        return self.id[:8]

    def verify(self) -> bool:
        """True when the stored predictions still hash to the stored SHA-256."""
        return predictions_sha256(self.predictions) == self.sha256 and len(self.predictions) == self.n_models

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Entry":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str | bytes) -> "Entry":
        return cls.from_dict(json.loads(text))


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


def board_rows(entries: Iterable[Entry]) -> list[dict]:
    """Ranked rows for a table: rank, method, authors, MAE, MAPE, accuracy, date, kind, id."""
    return [{"rank": position, "method": e.method, "authors": e.authors, "MAE": round(e.mae, 3),
             "MAPE (%)": round(for_display("mape", e.mape), 2),  # the metric's fractions, shown in percent
             "accuracy (%)": round(for_display("accuracy", e.accuracy), 2), "date": e.date,
             "kind": "reference" if e.reference else "submission", "models": e.n_models, "id": e.short_id}
            for position, e in enumerate(rank_entries(entries), start=1)]


def format_board(entries: Iterable[Entry], title: str = "") -> str:
    """The ranked table as aligned text, for ``lora-wise leaderboard show``."""
    rows = board_rows(entries)
    if not rows:
        return (title + "\n" if title else "") + "(no entries yet: `lora-wise submit` adds one)"
    columns = ["rank", "method", "MAE", "MAPE (%)", "accuracy (%)", "date", "kind", "id"]
    cells = [[str(r[c]) if not isinstance(r[c], float) else f"{r[c]:.2f}" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    numeric = {"rank", "MAE", "MAPE (%)", "accuracy (%)"}
    fmt = lambda values: "  ".join(v.rjust(w) if c in numeric else v.ljust(w)  # noqa: E731
                                   for v, w, c in zip(values, widths, columns)).rstrip()
    lines = ([title] if title else []) + [fmt(columns), "  ".join("-" * w for w in widths)]
    lines += [fmt(row) for row in cells]
    return "\n".join(lines)
