"""The LoRA-WiSE leaderboard: validate, score, store, rank and show dataset-size predictions.

The flow, one direction::

    predictions file (CSV or JSONL: model_id,prediction)
        │  submission.read_submission: format by content, size limit, one finite
        │  positive number per model id, metadata columns consistent
        ▼
    references.load_references: the true sizes of one split of one config, read from a
        │  LoRA-WiSE dataset (a folder or a Hub repo id) with ``lora_wise.data.labels``
        ▼
    scoring.submit: every model predicted exactly once, scored with the
        │  ``dataset_size_recovery`` metric (MAE, MAPE, accuracy, per size, confusion matrix)
        ▼
    store: an append-only SQLite file (default) or a Hub dataset repo (a public Space)
        ▼
    ranking: by MAE, then MAPE, then time  ──►  ``lora-wise leaderboard show``,
                                                the Gradio Space (``app.py``), ``lora_wise.figures``

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
    "SQLiteStore": "store", "HubDatasetStore": "store", "open_store": "store",
    "add_baselines": "baselines",
    "build_app": "app",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lora_wise.leaderboard' has no attribute {name!r}")


__all__ = sorted(_LAZY)
