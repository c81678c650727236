"""``lora_wise.evaluate``: score a method on a config under the paper's protocol and get its results record.

The researcher's loop in one call, as ``lora-wise evaluate`` runs it::

    record = lora_wise.evaluate(MyMethod, "lora-wise", "mini_low_r8", protocol="paper", out="results.json")

reads the config's models at their checkpoint (their features computed once, their weights on
demand), runs the method on every draw of the protocol (:func:`lora_wise.protocol.run_protocol`)
and returns the results record of :mod:`lora_wise.results` -- per-draw metrics and predictions,
mean ± std, the method and its parameters, package versions, the dataset's fingerprint and the
date -- written to ``out`` when given.  ``lora-wise submit results.json`` sends it to the leaderboard.
"""

from __future__ import annotations

import os
from typing import Any

from . import results
from .baselines import BASELINES
from .configs import get_config
from .data import CHECKPOINT, WeightsByModel, dataset_source, feature_table, fingerprint
from .errors import OptionError
from .methods import load_method
from .protocol import ProtocolResult, method_factory, run_protocol
from .splits import SEED


def resolve_method(method: Any) -> Any:
    """A baseline's name stays a name; ``FILE.py:Class`` or ``module:Class`` becomes the class; anything else is kept."""
    if isinstance(method, str) and method not in BASELINES:
        return load_method(method)
    return method


def to_record(result: ProtocolResult, dataset: str | os.PathLike, name: str | None = None) -> dict:
    """The results record of a protocol run on ``dataset`` (one step: the scored snapshots')."""
    if result.step is None:
        raise ValueError("a results record is of models at one step; this run mixed steps")
    draws = [{"draw": i, "train_micro_datasets": list(d.split.train), "test_micro_datasets": list(d.split.test),
              "metrics": {m: d.metrics[m] for m in results.METRICS},
              "predictions": {model_id: int(p) if float(p).is_integer() else float(p)
                              for model_id, p in zip(d.model_ids, d.predictions.tolist())}}
             for i, d in enumerate(result.draws)]
    return results.new_record(
        dataset={"source": dataset_source(dataset), "config": result.config.name,
                 "fingerprint": fingerprint(dataset, result.config.name), "checkpoint_step": result.step,
                 "split_seed": SEED},
        method={"name": name or result.method, "class": result.method_class, "params": result.params},
        protocol=result.protocol, draws=draws)


def evaluate(method: Any, dataset: str | os.PathLike, config: str, protocol: str = "paper", *,
             params: dict | None = None, name: str | None = None, out: str | os.PathLike | None = None,
             progress: bool = False) -> dict:
    """Score ``method`` on ``config`` of ``dataset`` (a folder or a Hub repo id) and return its results record.

    ``method``: a class with ``fit(train, sizes)`` and ``predict(test)`` (see
    :mod:`lora_wise.methods`), an instance of one, ``"FILE.py:Class"`` / ``"module:Class"``, or a
    built-in baseline's name (``"dsire"``).  ``params`` go to its constructor.  ``protocol``:
    ``"paper"`` (10 draws; draw 0 is the standard split) or ``"standard"``.  ``name`` names the
    method in the record (default: its ``name`` attribute or class name).  With ``out`` the
    record is also written there (JSON).
    """
    cfg = get_config(config)
    method = resolve_method(method)
    method_factory(method, dict(params or {}))  # a method or option that fails, fails before any data is read
    if protocol not in results.PROTOCOLS:
        raise OptionError(f"unknown protocol {protocol!r}: choose {' or '.join(results.PROTOCOLS)}")
    table = feature_table(dataset, cfg.name, step=CHECKPOINT, progress=progress)
    weights = WeightsByModel(dataset, cfg.name, step=CHECKPOINT)
    result = run_protocol(table, cfg, method, protocol=protocol, weights=weights, **(params or {}))
    record = to_record(result, dataset, name)
    if out is not None:
        results.write(record, out)
    return record

