"""Results records: one JSON file per evaluation of a method, as mteb writes its results.

``lora-wise evaluate`` (and ``lora_wise.evaluate``) writes one; ``lora-wise submit results.json``
reads one.  This module is the one owner of the format: it builds, validates, writes and reads
records, and gives their canonical JSON.  A record (schema version 1)::

    {"schema_version": 1, "kind": "lora-wise-results",
     "date": "2025-01-31T12:00:00+00:00",           # ISO 8601, UTC
     "lora_wise_version": "0.1.0",
     "versions": {"python": ..., "numpy": ..., "datasets": ..., "evaluate": ..., "scikit-learn": ...,
                  "torch": ...},                      # torch only where installed
     "dataset": {"source": "user/LoRA-WiSE",         # a Hub repo id, or a folder's name (never a path)
                 "config": "mini_low_r8",             # the canonical config name, not an alias
                 "fingerprint": "sha256:<64 hex>",    # content hash of the shards, or "hub:<repo>@<revision>"
                 "checkpoint_step": 100, "split_seed": 42},
     "method": {"name": "my method", "class": "my_method.py:MyMethod",   # or "module:Class"
                "params": {...}},                     # JSON: the method's parameters
     "protocol": "paper",                             # or "standard"
     "draws": [{"draw": 0, "train_micro_datasets": [...], "test_micro_datasets": [...],
                "metrics": {"mae": 0.77, "mape": 0.21, "accuracy": 0.53},
                "predictions": {"<model_id>": 3, ...}}, ...],   # 10 draws (paper) or 1 (standard)
     "summary": {"mae": {"mean": ..., "std": ...}, "mape": {...}, "accuracy": {...}},
     "standard": {"draw": 0, "metrics": {...}}}      # draw 0 is the standard split

Metrics are the ``dataset_size_recovery`` metric's: MAE in images, MAPE and accuracy as
fractions (0.861, not 86.1).  ``summary`` is the mean and standard deviation (``numpy.std``,
ddof=0) over the draws; ``standard`` repeats draw 0's metrics.

Validation is strict: valid JSON only (no NaN or Infinity, no duplicate keys), every number
finite, every key known, predictions positive and at most :data:`MAX_PREDICTION`, a summary
that is the mean and std of its draws.  A record that breaks a rule is a
:class:`~lora_wise.errors.ResultsRecordError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import jsonio
from .errors import ResultsRecordError
from .splits import PAPER_DRAWS, SEED
from .text import refused_category

SCHEMA_VERSION = 1
KIND = "lora-wise-results"
#: Protocols and how many draws each has: the standard split, or the paper's first ten draws.
PROTOCOLS: dict[str, int] = {"standard": 1, "paper": PAPER_DRAWS}
METRICS: tuple[str, ...] = ("mae", "mape", "accuracy")
#: Package versions every record names (``torch`` too, where it is installed).
VERSIONED = ("numpy", "datasets", "evaluate", "scikit-learn")
OPTIONAL_VERSIONED = ("torch",)
#: The largest dataset size a prediction may be: a billion images.
MAX_PREDICTION = 1e9
#: The largest record :func:`read` opens (a paper-protocol record of 10,000 test models is ~5 MB).
MAX_BYTES = 64 * 1024 * 1024
#: The longest method name.
MAX_NAME = 100

_TOP = ("schema_version", "kind", "date", "lora_wise_version", "versions", "dataset", "method", "protocol",
        "draws", "summary", "standard")
_DATASET = ("source", "config", "fingerprint", "checkpoint_step", "split_seed")
_METHOD = ("name", "class", "params")
_DRAW = ("draw", "train_micro_datasets", "test_micro_datasets", "metrics", "predictions")
_FINGERPRINT = re.compile(r"^(sha256:[0-9a-f]{64}|hub:[^@\s]+@[^@\s]+)$")
_CLASS = re.compile(r"^([A-Za-z_][\w]*(\.[A-Za-z_]\w*)*|[\w.\-]+\.py):[A-Za-z_]\w*$")
_CONFIG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


# --------------------------------------------------------------------------- building

def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on, read from the installed metadata."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in VERSIONED + OPTIONAL_VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            if name in VERSIONED:
                out[name] = "not installed"
    return out


def utc_now() -> str:
    """The current time as a record's ``date``: ISO 8601, UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, tuples and paths turned into JSON's types."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalar or array
        return plain(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def summarize(draws: list[dict]) -> dict:
    """Mean and standard deviation (ddof=0) of each metric over ``draws``."""
    import numpy as np

    return {m: {"mean": float(np.mean([d["metrics"][m] for d in draws])),
                "std": float(np.std([d["metrics"][m] for d in draws]))} for m in METRICS}


def new_record(*, dataset: dict, method: dict, protocol: str, draws: list[dict], date: str | None = None,
               versions: dict | None = None) -> dict:
    """A valid record from its parts; ``summary`` and ``standard`` are computed from ``draws``.

    ``dataset`` holds ``source``, ``config``, ``fingerprint``, ``checkpoint_step`` (``split_seed``
    defaults to the splits' seed); ``method`` holds ``name``, ``class`` and ``params``; each draw
    ``draw``, ``train_micro_datasets``, ``test_micro_datasets``, ``metrics``, ``predictions``.
    """
    from . import __version__

    draws = plain(draws)
    record = {
        "schema_version": SCHEMA_VERSION, "kind": KIND, "date": date or utc_now(),
        "lora_wise_version": __version__, "versions": plain(versions or package_versions()),
        "dataset": plain({"split_seed": SEED, **dataset}), "method": plain(method), "protocol": protocol,
        "draws": draws, "summary": summarize(draws) if draws else {},
        "standard": {"draw": 0, "metrics": dict(draws[0]["metrics"])} if draws else {},
    }
    return validate(record)


# --------------------------------------------------------------------------- validation

def _fail(where: str, problem: str) -> ResultsRecordError:
    return ResultsRecordError(f"results record: {where} {problem}")


def _keys(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(value, dict):
        raise _fail(where, f"must be a JSON object, not {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise _fail(where, f"lacks {', '.join(missing)}")
    unknown = sorted(k for k in value if k not in required + optional)
    if unknown:
        raise _fail(where, f"has unknown field(s) {', '.join(map(repr, unknown[:5]))}; schema version "
                           f"{SCHEMA_VERSION} has {', '.join(required + optional)}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _fail(where, f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise _fail(where, "must be a finite number (no NaN or infinity)")
    return float(value)


def _text(value: Any, where: str, max_length: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(where, "must be a non-empty string")
    if len(value) > max_length:
        raise _fail(where, f"is {len(value)} characters long; at most {max_length}")
    bad = [c for c in value if refused_category(c)]  # the project's one character policy (lora_wise.text)
    if bad:
        raise _fail(where, f"holds a {refused_category(bad[0])} (U+{ord(bad[0]):04X}); plain text only")
    return value


def _json_value(value: Any, where: str, depth: int = 0) -> None:
    """Any JSON value whose numbers are finite."""
    if depth > 20:
        raise _fail(where, "is nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _fail(where, f"has a non-string key {k!r}")
            _json_value(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _json_value(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float):
        _number(value, where)
    elif value is not None and not isinstance(value, (str, int, bool)):
        raise _fail(where, f"is a {type(value).__name__}, not a JSON value")


def _date(value: Any) -> None:
    text = _text(value, "date", 40)
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise _fail("date", f"{text!r} is not an ISO 8601 date and time") from None
    if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:
        raise _fail("date", f"{text!r} must be in UTC (+00:00 or Z)")


def _source(value: Any) -> None:
    from .hub import is_repo_id

    text = _text(value, "dataset.source")
    if "/" in text or "\\" in text or text.startswith("~") or re.match(r"^[A-Za-z]:", text):
        if not is_repo_id(text):
            raise _fail("dataset.source", f"{text!r} must be a Hub repo id (owner/name) or a folder's name, "
                                          f"never a path")


def _config(value: Any) -> None:
    from .configs import ALIASES

    text = _text(value, "dataset.config", 100)
    if not _CONFIG.match(text):
        raise _fail("dataset.config", f"{text!r} is not a config name")
    if text in ALIASES:
        raise _fail("dataset.config", f"{text!r} is an alias; use the config's name, {ALIASES[text]!r}")


def _metrics(value: Any, where: str) -> dict:
    _keys(value, where, METRICS)
    for m in METRICS:
        number = _number(value[m], f"{where}.{m}")
        if number < 0 or (m == "accuracy" and number > 1):
            raise _fail(f"{where}.{m}", f"is {number:g}; "
                        + ("accuracy is a fraction in [0, 1]" if m == "accuracy" else "it cannot be negative"))
    return value


def _indices(value: Any, where: str) -> set[int]:
    if not isinstance(value, list) or not value or not all(_is_int(i) and i >= 0 for i in value):
        raise _fail(where, "must be a non-empty list of micro-dataset indices (integers from 0)")
    if len(set(value)) != len(value):
        raise _fail(where, "lists a micro-dataset twice")
    return set(value)


def _draw(value: Any, i: int) -> None:
    where = f"draws[{i}]"
    _keys(value, where, _DRAW)
    if value["draw"] != i or not _is_int(value["draw"]):
        raise _fail(f"{where}.draw", f"is {value['draw']!r}; draws are numbered 0, 1, ... in order")
    train = _indices(value["train_micro_datasets"], f"{where}.train_micro_datasets")
    test = _indices(value["test_micro_datasets"], f"{where}.test_micro_datasets")
    if train & test:
        raise _fail(where, f"puts micro-dataset(s) {sorted(train & test)[:5]} on both sides")
    _metrics(value["metrics"], f"{where}.metrics")
    predictions = value["predictions"]
    if not isinstance(predictions, dict) or not predictions:
        raise _fail(f"{where}.predictions", "must be a non-empty object {model_id: predicted size}")
    for model_id, prediction in predictions.items():
        _text(model_id, f"{where}.predictions key", 300)
        number = _number(prediction, f"{where}.predictions[{model_id!r}]")
        if not 0 < number <= MAX_PREDICTION:
            raise _fail(f"{where}.predictions[{model_id!r}]",
                        f"is {number:g}; a dataset size is positive and at most {MAX_PREDICTION:g}")


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def validate(record: Any) -> dict:
    """``record`` itself when it follows the schema; a :class:`ResultsRecordError` naming the first fault."""
    _keys(record, "the record", _TOP)
    if record["kind"] != KIND:
        raise _fail("kind", f"is {record['kind']!r}, not {KIND!r}: this is not a LoRA-WiSE results record")
    if not _is_int(record["schema_version"]) or record["schema_version"] != SCHEMA_VERSION:
        raise _fail("schema_version", f"is {record['schema_version']!r}; this lora-wise reads version "
                                      f"{SCHEMA_VERSION} (upgrade lora-wise for newer records)")
    _date(record["date"])
    _text(record["lora_wise_version"], "lora_wise_version", 50)
    versions = record["versions"]
    _keys(versions, "versions", ("python", *VERSIONED), tuple(versions) if isinstance(versions, dict) else ())
    for name, text in versions.items():
        _text(text, f"versions.{name}", 100)
    dataset = _keys(record["dataset"], "dataset", _DATASET)
    _source(dataset["source"])
    _config(dataset["config"])
    if not isinstance(dataset["fingerprint"], str) or not _FINGERPRINT.match(dataset["fingerprint"]):
        raise _fail("dataset.fingerprint", f"is {dataset['fingerprint']!r}; it must be 'sha256:<64 hex digits>' "
                                           f"or 'hub:<repo id>@<revision>'")
    for key in ("checkpoint_step", "split_seed"):
        if not _is_int(dataset[key]) or dataset[key] < 0:
            raise _fail(f"dataset.{key}", f"is {dataset[key]!r}; it must be a non-negative integer")
    method = _keys(record["method"], "method", _METHOD)
    _text(method["name"], "method.name", MAX_NAME)
    if not isinstance(method["class"], str) or not _CLASS.match(method["class"]):
        raise _fail("method.class", f"is {method['class']!r}; it must be 'module:Class' or 'file.py:Class'")
    if not isinstance(method["params"], dict):
        raise _fail("method.params", "must be a JSON object")
    _json_value(method["params"], "method.params")
    protocol = record["protocol"]
    if protocol not in PROTOCOLS:
        raise _fail("protocol", f"is {protocol!r}; it must be one of {', '.join(PROTOCOLS)}")
    draws = record["draws"]
    if not isinstance(draws, list) or len(draws) != PROTOCOLS[protocol]:
        raise _fail("draws", f"must list the {PROTOCOLS[protocol]} draw(s) of the {protocol} protocol")
    for i, draw in enumerate(draws):
        _draw(draw, i)
    summary = _keys(record["summary"], "summary", METRICS)
    expected = summarize(draws)
    for m in METRICS:
        _keys(summary[m], f"summary.{m}", ("mean", "std"))
        for stat in ("mean", "std"):
            value = _number(summary[m][stat], f"summary.{m}.{stat}")
            if not _close(value, expected[m][stat]):
                raise _fail(f"summary.{m}.{stat}", f"is {value!r}, but the draws give {expected[m][stat]!r}")
    standard = _keys(record["standard"], "standard", ("draw", "metrics"))
    if standard["draw"] != 0 or not _is_int(standard["draw"]):
        raise _fail("standard.draw", "must be 0: the standard split is the first draw")
    _metrics(standard["metrics"], "standard.metrics")
    if any(not _close(standard["metrics"][m], draws[0]["metrics"][m]) for m in METRICS):
        raise _fail("standard.metrics", "must equal draws[0].metrics")
    return record


# --------------------------------------------------------------------------- JSON

def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys and no NaN or infinity: equal values give equal text."""
    try:
        return jsonio.dumps(value, sort_keys=True, compact=True, ensure_ascii=False)
    except ValueError as exc:
        raise ResultsRecordError(f"results record: not valid JSON ({exc})") from None


def dumps(record: dict) -> str:
    """A validated record as the text of its file: indented JSON with sorted keys."""
    validate(record)
    return jsonio.dumps(record, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _no_constant(name: str):
    raise ResultsRecordError(f"results record: {name} is not valid JSON; every number must be finite")


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise ResultsRecordError(f"results record: the key {key!r} appears twice in one object")
        out[key] = value
    return out


def loads(text: str | bytes, name: str = "results record") -> dict:
    """Parse and validate a record's text (strict JSON: no NaN, Infinity or duplicate keys)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        record = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise ResultsRecordError(f"{name} is not UTF-8 text; a results record is a JSON file") from None
    except json.JSONDecodeError as exc:
        raise ResultsRecordError(f"{name} is not valid JSON ({exc.msg} at line {exc.lineno}, "
                                 f"column {exc.colno})") from None
    except RecursionError:
        raise ResultsRecordError(f"{name} is nested too deeply to be a results record") from None
    return validate(record)


def write(record: dict, path: str | os.PathLike) -> Path:
    """Validate ``record`` and write it to ``path`` atomically (a temporary file, then a rename)."""
    from .layout import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, dumps(record).encode("utf-8"))
    return path


def read(path: str | os.PathLike, max_bytes: int = MAX_BYTES) -> dict:
    """Read and validate the record in ``path`` (refused unread when over ``max_bytes``)."""
    from .errors import NotFoundError

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such results file; `lora-wise evaluate ... --out {path.name}` writes one")
    size = path.stat().st_size
    if size > max_bytes:
        raise ResultsRecordError(f"{path} is {size:,} bytes, over the limit of {max_bytes:,} for a results record")
    with path.open("rb") as f:
        return loads(f.read(max_bytes + 1), name=str(path))


def predictions_digest(record: dict, draw: int = 0) -> str:
    """``sha256:<hex>`` of one draw's predictions (canonical JSON): equal predictions, equal digest."""
    predictions = {k: float(v) for k, v in record["draws"][draw]["predictions"].items()}
    return "sha256:" + hashlib.sha256(canonical_json(predictions).encode()).hexdigest()


def summary_table(record: dict) -> str:
    """A record's numbers as a small table: mean ± std over the draws, and the standard split.

    MAPE and accuracy are printed in percent (the record holds fractions).
    """
    from .metrics.dataset_size_recovery.scores import DISPLAY_LABELS, for_display

    n = len(record["draws"])
    lines = [f"{record['method']['name']} on {record['dataset']['config']} ({record['protocol']} protocol, "
             f"{n} draw{'s' if n > 1 else ''}, step {record['dataset']['checkpoint_step']})",
             f"{'metric':<14}{'mean ± std':>20}{'standard split':>18}"]
    for metric in METRICS:
        summary = record["summary"][metric]
        mean, std = for_display(metric, summary["mean"]), for_display(metric, summary["std"])
        standard = for_display(metric, record["standard"]["metrics"][metric])
        lines.append(f"{DISPLAY_LABELS[metric]:<14}{f'{mean:.2f} ± {std:.2f}':>20}{standard:>18.2f}")
    return "\n".join(lines)
