"""Results records (lora_wise/results.py): built, written, read back equal; every broken rule refused."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from lora_wise import results
from lora_wise.errors import LoRAWiSEError, ResultsRecordError
from lora_wise.splits import draws as split_draws


def _draws(protocol: str = "paper") -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i, split in enumerate(split_draws("mini_low_r8", results.PROTOCOLS[protocol])):
        predictions = {f"mini_low_r8/{m}/n{s}": int(rng.integers(1, 7)) for m in split.test for s in (1, 2, 3)}
        out.append({"draw": i, "train_micro_datasets": list(split.train), "test_micro_datasets": list(split.test),
                    "metrics": {"mae": float(rng.uniform(0, 2)), "mape": float(rng.uniform(0, 1)),
                                "accuracy": float(rng.uniform(0, 1))},
                    "predictions": predictions})
    return out


def make(protocol: str = "paper", **changes) -> dict:
    record = results.new_record(
        dataset={"source": "lora-wise", "config": "mini_low_r8", "fingerprint": "sha256:" + "ab" * 32,
                 "checkpoint_step": 100},
        method={"name": "my method", "class": "my_method.py:MyMethod", "params": {"k": 1, "scale": 0.5}},
        protocol=protocol, draws=_draws(protocol))
    record.update(changes)
    return record


def test_a_record_has_the_schema_and_its_summary_is_the_draws_mean_and_std():
    record = make()
    assert list(record) == list(results._TOP)
    assert record["schema_version"] == 1 and record["kind"] == "lora-wise-results"
    assert record["dataset"]["split_seed"] == 42
    assert {"python", "numpy", "datasets", "evaluate", "scikit-learn"} <= set(record["versions"])
    for m in results.METRICS:
        values = [d["metrics"][m] for d in record["draws"]]
        assert record["summary"][m] == {"mean": pytest.approx(np.mean(values)), "std": pytest.approx(np.std(values))}
    assert record["standard"] == {"draw": 0, "metrics": record["draws"][0]["metrics"]}
    assert len(record["draws"]) == 10 and len(make("standard")["draws"]) == 1


def test_write_then_read_gives_the_same_record_and_canonical_text(tmp_path):
    record = make()
    path = results.write(record, tmp_path / "sub" / "results.json")
    assert results.read(path) == record
    assert results.canonical_json(results.read(path)) == results.canonical_json(record)
    assert json.loads(path.read_text()) == record  # plain JSON any reader parses
    assert results.predictions_digest(record) == results.predictions_digest(results.read(path))


def test_numpy_values_become_json_types():
    draws = _draws("standard")
    draws[0]["metrics"] = {k: np.float64(v) for k, v in draws[0]["metrics"].items()}
    draws[0]["predictions"] = {k: np.int64(v) for k, v in draws[0]["predictions"].items()}
    draws[0]["test_micro_datasets"] = np.asarray(draws[0]["test_micro_datasets"])
    record = results.new_record(
        dataset={"source": "me/LoRA-WiSE", "config": "mini_low_r8", "fingerprint": "hub:me/LoRA-WiSE@" + "a" * 40,
                 "checkpoint_step": np.int64(100)},
        method={"name": "x", "class": "pkg.mod:Cls", "params": {"k": np.int64(3)}}, protocol="standard",
        draws=draws)
    assert results.loads(results.dumps(record)) == record


def _set(record: dict, dotted: str, value) -> dict:
    record = copy.deepcopy(record)
    *path, last = dotted.split(".")
    target = record
    for key in path:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return record


_DELETE = object()
_MODEL = "mini_low_r8/{}/n1"


@pytest.mark.parametrize("field, value, says", [
    ("kind", "mteb", "not a LoRA-WiSE results record"),
    ("schema_version", 2, "version 1"),
    ("schema_version", True, "version 1"),
    ("extra", 1, "unknown field"),
    ("date", "yesterday", "ISO 8601"),
    ("date", "2025-01-01T10:00:00+02:00", "UTC"),
    ("date", "2025-01-01T10:00:00", "UTC"),
    ("versions.python", "", "non-empty"),
    ("versions.numpy", _DELETE, "lacks numpy"),
    ("dataset.source", "/home/me/lora-wise", "never a path"),
    ("dataset.source", "../lora-wise", "never a path"),
    ("dataset.config", "low_8", "alias"),
    ("dataset.config", "a b", "not a config name"),
    ("dataset.fingerprint", "md5:abc", "sha256"),
    ("dataset.checkpoint_step", 1.5, "integer"),
    ("dataset.split_seed", _DELETE, "lacks split_seed"),
    ("method.name", "x\u202ey", "bidi"),
    ("method.name", "\x1b[31mred", "control"),
    ("method.name", "x" * 101, "at most 100"),
    ("method.class", "/abs/path.py:Cls", "module:Class"),
    ("method.params", {"lr": float("nan")}, "finite"),
    ("method.params", [1], "JSON object"),
    ("protocol", "custom", "one of"),
    ("draws", [], "10 draw"),
    ("draws.1.draw", 3, "in order"),
    ("draws.0.metrics.accuracy", 86.1, "fraction"),
    ("draws.0.metrics.mae", float("inf"), "finite"),
    ("draws.0.metrics.mape", -0.1, "negative"),
    ("draws.0.metrics.f1", 0.5, "unknown field"),
    ("draws.0.train_micro_datasets", [0, 0], "twice"),
    ("draws.0.predictions", {}, "non-empty"),
    ("summary.mae.mean", 123.0, "the draws give"),
    ("standard.draw", 1, "first draw"),
    ("standard.metrics.mae", 9.0, "draws[0].metrics"),
])
def test_a_broken_rule_is_one_error_naming_the_field(field, value, says):
    with pytest.raises(ResultsRecordError, match=None) as caught:
        results.validate(_set(make(), field, value))
    assert says in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, LoRAWiSEError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("prediction, says", [(0, "positive"), (-3, "positive"), (2e9, "at most"),
                                              ("3", "number"), (True, "number")])
def test_predictions_are_sizes(prediction, says):
    record = make("standard")
    model_id = next(iter(record["draws"][0]["predictions"]))
    record["draws"][0]["predictions"][model_id] = prediction
    with pytest.raises(ResultsRecordError, match=says):
        results.validate(record)


def test_train_and_test_must_not_share_a_micro_dataset():
    record = make("standard")
    record["draws"][0]["test_micro_datasets"].append(record["draws"][0]["train_micro_datasets"][0])
    with pytest.raises(ResultsRecordError, match="both sides"):
        results.validate(record)


@pytest.mark.parametrize("text, says", [
    ('{"a": NaN}', "not valid JSON"),
    ('{"a": Infinity}', "not valid JSON"),
    ('{"a": 1, "a": 2}', "appears twice"),
    ("{", "not valid JSON"),
    (b"\xff\xfe", "UTF-8"),
    ("[" * 100000 + "]" * 100000, "nested"),
    ("[]", "JSON object"),
])
def test_reading_is_strict_json(text, says):
    with pytest.raises(ResultsRecordError, match=says):
        results.loads(text)


def test_large_numbers_that_json_reads_as_infinity_are_refused():
    text = results.dumps(make("standard")).replace('"mae": ', '"mae": 1e999, "x": ', 1)
    with pytest.raises(ResultsRecordError):
        results.loads(text)


def test_reading_refuses_oversized_and_missing_files_before_parsing(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 2048)
    with pytest.raises(ResultsRecordError, match="over the limit"):
        results.read(path, max_bytes=1024)
    with pytest.raises(FileNotFoundError, match="no such results file"):
        results.read(tmp_path / "none.json")


def test_writing_an_invalid_record_writes_nothing(tmp_path):
    record = _set(make(), "draws.0.metrics.mae", float("nan"))
    with pytest.raises(ResultsRecordError):
        results.write(record, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_canonical_json_refuses_non_finite_numbers():
    with pytest.raises(ResultsRecordError):
        results.canonical_json({"x": float("inf")})
    assert results.canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'
