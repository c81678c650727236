"""Read a submission file into validated predictions: the leaderboard's one gate for input.

A submission is a CSV or a JSON Lines file with one row per model of a split::

    model_id,prediction                         {"model_id": "mini_low_r8/concept-01/n1", "prediction": 1}
    mini_low_r8/concept-01/n1,1                 {"model_id": "mini_low_r8/concept-01/n2", "prediction": 2.4}
    mini_low_r8/concept-01/n2,2.4

Optional columns (CSV) or fields (JSONL) ``method``, ``authors``, ``link``, ``config``
and ``split`` describe the submission; when present they must hold one value in every
row and agree with what the command line or the upload form says.

The format is recognised by content, never by the file name: a first non-blank
character ``{`` means JSON Lines, anything else is parsed as comma-separated text
with a header.  Binary data, a JSON array, a header without ``model_id`` and
``prediction``, a value that is not a number of images (finite, positive, at most
``MAX_PREDICTION``), a model id given twice and files over ``MAX_BYTES`` or
``MAX_ROWS`` are each a ``SubmissionError`` whose message names the problem (with line
numbers) and says how to fix it.

A **results record** (the JSON ``lora-wise evaluate`` writes, ``"kind": "lora-wise-results"``)
is recognised by content too: one JSON object with a ``kind``.  Its owner,
``lora_wise.results``, validates it (strict JSON, schema version 1, predictions in
(0, ``MAX_PREDICTION``]); its reported metrics are never used (``scoring`` recomputes
them against the leaderboard's own references).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lora_wise import jsonio
from lora_wise.errors import SubmissionError
from lora_wise.results import MAX_PREDICTION

#: Largest submission accepted, in bytes (the paper's biggest split has 1,750 models;
#: 50 MB leaves room for any foreseeable config while keeping a public Space safe).
MAX_BYTES = 50 * 1024 * 1024
#: Largest number of prediction rows accepted.
MAX_ROWS = 1_000_000
REQUIRED_COLUMNS = ("model_id", "prediction")
METADATA_FIELDS = ("method", "authors", "link", "config", "split")
#: Largest provenance (method, parameters, versions, dataset fields) of a record kept with an entry.
MAX_SOURCE_CHARS = 20_000
#: How many offending rows an error message quotes.
EXAMPLES = 3


@dataclass(frozen=True)
class RecordDraw:
    """One draw of a results record: its split as the record states it, and its test predictions."""

    draw: int
    train: tuple
    test: tuple
    predictions: dict[str, float]


@dataclass(frozen=True)
class ParsedSubmission:
    """The content of a submission: the standard split's predictions and the metadata fields.

    From a results record also: its ``protocol``, every draw (``draws``, draw 0 first: its
    predictions are ``predictions``) and its provenance (``source``: the method's class and
    parameters, versions, the dataset's fingerprint, checkpoint step and split seed, the date).
    """

    predictions: dict[str, float]
    metadata: dict[str, str] = field(default_factory=dict)
    format: str = "csv"
    protocol: str = "standard"
    draws: tuple[RecordDraw, ...] = ()
    source: dict = field(default_factory=dict)


def counted(items, noun: str, verb: str = "are") -> str:
    """``"1 prediction is"`` / ``"3 predictions are"``: numbers in messages read as English."""
    n = len(items)
    singular = {"are": "is", "appear": "appears", "have": "has"}.get(verb, verb)
    return f"{n} {noun}{'' if n == 1 else 's'} {singular if n == 1 else verb}"


def _shown(value) -> str:
    """``repr`` of an offending value, cut short enough for a one-line message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f", ... ({len(items)} in all)" if len(items) > EXAMPLES else "")


def _read_bytes(source: str | os.PathLike | bytes, name: str, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.exists():
            raise SubmissionError(f"{name}: no such file; give the path of a CSV or JSONL predictions file")
        if not path.is_file():
            raise SubmissionError(f"{name} is not a file; give the path of a CSV or JSONL predictions file")
        size = path.stat().st_size
        if size > max_bytes:
            raise SubmissionError(_too_big(name, size, max_bytes))
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise SubmissionError(_too_big(name, len(data), max_bytes))
    return data


def _too_big(name: str, size: int, max_bytes: int) -> str:
    return (f"{name} is {size:,} bytes, over the limit of {max_bytes:,} bytes; a submission holds one "
            f"`model_id,prediction` row per model of one split -- remove anything else")


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data[:65536]:
        raise SubmissionError(f"{name} is binary data, not a CSV or JSONL text file; save the predictions "
                              f"as text with a header `model_id,prediction` (or one JSON object per line)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SubmissionError(f"{name} is not UTF-8 text (byte {exc.start} cannot be decoded), so it is not a "
                              f"CSV or JSONL file; save the predictions as UTF-8 text") from None
    if not text.strip():
        raise SubmissionError(f"{name} is empty; a submission needs a header `model_id,prediction` and "
                              f"one row per model of the split")
    return text


def _check_columns(columns: list[str], where: str) -> None:
    allowed = REQUIRED_COLUMNS + METADATA_FIELDS
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise SubmissionError(
            f"{where} has no {' and no '.join(repr(c) for c in missing)} "
            f"{'column' if len(missing) == 1 else 'columns'} (found: {_shown(', '.join(columns)) if columns else 'none'}); "
            f"a submission needs `model_id,prediction`, e.g. `mini_low_r8/concept-01/n1,3`")
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise SubmissionError(f"{where} has unexpected {'column' if len(unknown) == 1 else 'columns'} "
                              f"{_shown(', '.join(unknown))}; allowed: {', '.join(allowed)}")
    repeated = [c for c, n in Counter(columns).items() if n > 1]
    if repeated:
        raise SubmissionError(f"{where} repeats the {', '.join(map(repr, repeated))} column; keep one of each")


def _csv_rows(text: str, name: str, max_rows: int):
    """Yield ``(line number, {column: value})`` for each non-blank data row."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        while not any(cell.strip() for cell in header):
            header = next(reader)
    except StopIteration:
        raise SubmissionError(f"{name} is empty; a submission needs a header `model_id,prediction`") from None
    except csv.Error as exc:
        raise SubmissionError(f"{name} is not a valid CSV file ({exc}); write `model_id,prediction` rows") from None
    columns = [c.strip().lower() for c in header]
    if len(columns) == 1 and any(sep in columns[0] for sep in ";\t|"):
        raise SubmissionError(f"{name}: the header {_shown(header[0])} is not comma-separated; a submission is a "
                              f"CSV with columns separated by commas (`model_id,prediction`)")
    _check_columns(columns, f"{name} (header {_shown(','.join(header))})")
    rows = 0
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != len(columns):
                raise SubmissionError(f"{name} line {line} has {len(row)} fields but the header has "
                                      f"{len(columns)}; every row needs {','.join(columns)}")
            rows += 1
            if rows > max_rows:
                raise SubmissionError(f"{name} has more than {max_rows:,} rows, over the limit; a submission "
                                      f"holds one row per model of one split")
            yield line, dict(zip(columns, (cell.strip() for cell in row)))
    except csv.Error as exc:
        raise SubmissionError(f"{name} line {reader.line_num} is not valid CSV ({exc}); quote fields that "
                              f"contain commas or quotes") from None


def _jsonl_rows(text: str, name: str, max_rows: int):
    rows = 0
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SubmissionError(f"{name} line {line} is not valid JSON ({exc.msg} at column {exc.colno}); "
                                  f"JSON Lines needs one object per line, e.g. "
                                  f'{{"model_id": "mini_low_r8/concept-01/n1", "prediction": 3}}') from None
        if not isinstance(obj, dict):
            raise SubmissionError(f"{name} line {line} is a JSON {type(obj).__name__}, not an object; write one "
                                  f'{{"model_id": ..., "prediction": ...}} object per line')
        _check_columns(list(obj), f"{name} line {line}")
        rows += 1
        if rows > max_rows:
            raise SubmissionError(f"{name} has more than {max_rows:,} rows, over the limit; a submission "
                                  f"holds one row per model of one split")
        yield line, obj


def _as_number(value, text_ok: bool) -> float | None:
    """A float for numbers (and numeric text in CSV); None for anything else (bool, '', 'abc', a list)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # a JSON integer too large for a float is infinite for our purpose
        return float(value) if abs(value) < 2**1023 else (math.inf if value > 0 else -math.inf)
    if isinstance(value, float):
        return value
    if isinstance(value, str) and text_ok:
        try:
            return float(value)
        except ValueError:
            return None
    return None


class _BadValues:
    """Predictions that are not a number of images, collected by kind for one message."""

    def __init__(self):
        self.not_numbers: list[str] = []
        self.not_finite: list[str] = []
        self.not_positive: list[str] = []
        self.too_large: list[str] = []

    def check(self, raw, where: str, text_ok: bool) -> float | None:
        """The prediction as a float, or None after noting why it is not a dataset size."""
        value = _as_number(raw, text_ok=text_ok)
        kind = (self.not_numbers if value is None else self.not_finite if not math.isfinite(value)
                else self.not_positive if value <= 0 else self.too_large if value > MAX_PREDICTION else None)
        if kind is not None:
            kind.append(f"{where}: {_shown(raw)}")
            return None
        return value

    def problems(self, json_numbers: bool) -> list[str]:
        out = []
        if self.not_numbers:
            out.append(f"{counted(self.not_numbers, 'prediction')} not a number ({_examples(self.not_numbers)}); "
                       f"a prediction is a number of images, e.g. 3 or 12.5"
                       + (" (a JSON number, not a string)" if json_numbers else ""))
        if self.not_finite:
            out.append(f"{counted(self.not_finite, 'prediction')} NaN or infinite ({_examples(self.not_finite)}); "
                       f"predict a finite number of images for every model")
        if self.not_positive:
            out.append(f"{counted(self.not_positive, 'prediction')} zero or negative "
                       f"({_examples(self.not_positive)}); a dataset size is at least 1 image")
        if self.too_large:
            out.append(f"{counted(self.too_large, 'prediction')} over {MAX_PREDICTION:,.0f} images "
                       f"({_examples(self.too_large)}); a dataset size is at most {MAX_PREDICTION:,.0f} images")
        return out


def parse_submission(text: str, name: str = "submission", max_rows: int = MAX_ROWS) -> ParsedSubmission:
    """Parse decoded text; every problem found is reported together in one ``SubmissionError``."""
    start = text.lstrip()[:1]
    if start == "[":
        raise SubmissionError(f"{name} is a JSON array; the leaderboard reads JSON Lines (one object per line) "
                              f"or CSV -- write each {{\"model_id\": ..., \"prediction\": ...}} on its own line")
    fmt = "jsonl" if start == "{" else "csv"
    rows = _jsonl_rows(text, name, max_rows) if fmt == "jsonl" else _csv_rows(text, name, max_rows)

    predictions: dict[str, float] = {}
    lines_of: dict[str, list[int]] = {}
    metadata_values: dict[str, dict[str, int]] = {}
    bad_ids, bad_values = [], _BadValues()
    for line, row in rows:
        model_id = row["model_id"]
        if not isinstance(model_id, str) or not model_id.strip():
            bad_ids.append(f"line {line}: {_shown(model_id)}")
            continue
        model_id = model_id.strip()
        lines_of.setdefault(model_id, []).append(line)
        value = bad_values.check(row["prediction"], f"line {line}", text_ok=fmt == "csv")
        if value is not None:
            predictions.setdefault(model_id, value)
        for key in METADATA_FIELDS:
            if key in row and row[key] is not None and str(row[key]).strip():
                metadata_values.setdefault(key, {}).setdefault(str(row[key]).strip(), line)

    if not lines_of and not bad_ids:
        raise SubmissionError(f"{name} has a header but no predictions; add one `model_id,prediction` row "
                              f"per model of the split")
    problems = []
    if bad_ids:
        problems.append(f"{counted(bad_ids, 'row', 'have')} an empty or non-text model_id ({_examples(bad_ids)}); "
                        f"give every row the id of a model of the split")
    problems += bad_values.problems(json_numbers=fmt == "jsonl")
    duplicates = [f"{_shown(mid)} (lines {', '.join(map(str, lines))})" for mid, lines in lines_of.items() if len(lines) > 1]
    if duplicates:
        problems.append(f"{counted(duplicates, 'model id', 'appear')} more than once ({_examples(duplicates)}); "
                        f"predict each model exactly once")
    for key, values in metadata_values.items():
        if len(values) > 1:
            quoted = [f"{_shown(v)} (line {line})" for v, line in values.items()]
            problems.append(f"the {key!r} column holds {len(values)} different values ({_examples(quoted)}); "
                            f"a submission is one {key}: use one value in every row or drop the column")
    if problems:
        raise SubmissionError(f"{name} cannot be scored:\n  - " + "\n  - ".join(problems))
    metadata = {key: next(iter(values)) for key, values in metadata_values.items()}
    return ParsedSubmission(predictions=predictions, metadata=metadata, format=fmt)


def read_submission(source: str | os.PathLike | bytes, name: str | None = None,
                    max_bytes: int = MAX_BYTES, max_rows: int = MAX_ROWS) -> ParsedSubmission:
    """Read and validate a submission -- a predictions file or a results record -- from a path or its bytes."""
    if name is None:
        name = "the submission" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    data = _read_bytes(source, name, max_bytes)
    if not data:
        raise SubmissionError(f"{name} is empty; a submission needs a header `model_id,prediction` and "
                              f"one row per model of the split")
    text = _decode(data, name)
    if _is_record(text):
        from lora_wise import results

        return parse_record(results.loads(text, name=name), name)
    return parse_submission(text, name, max_rows=max_rows)


def _is_record(text: str) -> bool:
    """Whether the text is one JSON object that means to be a results record (has its ``kind``)."""
    if not text.lstrip().startswith("{"):
        return False
    try:  # lenient here (NaN read): whether it is valid is the record reader's to say
        obj = json.loads(text)
    except ValueError:  # JSON Lines (several objects), or broken JSON: read as a predictions file
        return False
    return isinstance(obj, dict) and "kind" in obj


# --------------------------------------------------------------------------- results records

def parse_record(record: dict, name: str = "the record") -> ParsedSubmission:
    """A results record, validated by its owner (``lora_wise.results.validate``: schema version 1, finite
    numbers, predictions in (0, ``MAX_PREDICTION``], the protocol's number of draws), as a submission.

    Its reported metrics are not kept: ``scoring`` recomputes every draw's.  Whether its draws and
    their models are the leaderboard's is checked against the references there.
    """
    from lora_wise import results

    results.validate(record)
    draws = tuple(RecordDraw(draw=d["draw"], train=tuple(d["train_micro_datasets"]),
                             test=tuple(d["test_micro_datasets"]),
                             predictions={str(m): float(v) for m, v in d["predictions"].items()})
                  for d in record["draws"])
    method = record["method"]
    source = {"method_class": method["class"], "method_params": method["params"], "date": record["date"],
              "lora_wise_version": record["lora_wise_version"], "versions": record["versions"],
              "dataset": record["dataset"]}
    if len(jsonio.dumps(source)) > MAX_SOURCE_CHARS:
        raise SubmissionError(f"{name}: the record's method, versions and dataset fields take more than "
                              f"{MAX_SOURCE_CHARS:,} characters as JSON; keep the method's parameters short")
    return ParsedSubmission(predictions=draws[0].predictions, format="record", protocol=record["protocol"],
                            draws=draws, source=source,
                            metadata={"method": method["name"], "config": record["dataset"]["config"],
                                      "split": "test"})
