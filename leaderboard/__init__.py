"""The LoRA-WiSE leaderboard: validate, score, store, rank and show dataset-size predictions.

The flow, one direction::

    a results record (lora-wise evaluate's JSON)   or   a predictions file (CSV or JSONL: model_id,prediction)
        │  submission.read_submission: format by content, size limit, one number of images per model
        │  id (finite, positive, at most lora_wise.results.MAX_PREDICTION); a record validated by
        │  lora_wise.results
        ▼
    references: the true sizes of the test split -- and of each draw's test micro-datasets
        │  (lora_wise.splits.draws) -- read from a LoRA-WiSE dataset with ``lora_wise.data.labels``
        ▼
    scoring.submit: method, authors and link under the character policy (lora_wise.text);
        │  a record's draws checked against ours; every draw rescored with the
        │  ``dataset_size_recovery`` metric (never the reported numbers)
        ▼
    store: an append-only SQLite file (default) or a Hub dataset repo (a public Space), which
        │  refuses duplicates (config + predictions) and keeps withdrawals as records of their own
        ▼
    ranking: the standard split's MAE, then MAPE, then time, withdrawn entries left out
        ──►  ``lora-wise leaderboard show``, the Gradio Space (``app.py``), ``lora_wise.figures``

Every entry point -- ``lora-wise submit``, the Space's upload form, the reference
baselines (``baselines.add_baselines``) -- goes through ``scoring.submit``, so a file
the CLI rejects is rejected the same way in the browser and nothing is stored on
any error.  Gradio and matplotlib (through ``lora_wise.figures``) are imported only by ``app.py``.
"""

from __future__ import annotations

_LAZY = {
    "submit": "scoring", "SubmitResult": "scoring",
    "SubmissionError": "submission", "read_submission": "submission",
    "Entry": "entries", "rank_entries": "entries",
    "SQLiteStore": "store", "HubDatasetStore": "store", "open_store": "store", "withdraw": "store",
    "ranked_entries": "store", "Withdrawal": "entries",
    "add_baselines": "baselines",
    "build_app": "app",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lora_wise.leaderboard' has no attribute {name!r}")


__all__ = sorted(_LAZY)
