"""The leaderboard takes results records: every draw rescored from its predictions, its draws checked, duplicates refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from lora_wise import results
from lora_wise.cli import main
from lora_wise.configs import get_config
from lora_wise.data import labels
from lora_wise.errors import ResultsRecordError
from lora_wise.leaderboard.scoring import submit
from lora_wise.leaderboard.store import SQLiteStore, ranked_entries
from lora_wise.leaderboard.submission import SubmissionError
from lora_wise.splits import draws, standard_split

CONFIG = "mini_low_r8"


@pytest.fixture(scope="module")
def models(synthetic_benchmark) -> dict[str, tuple[int, int]]:
    """model id -> (true size, micro-dataset index), both splits at the checkpoint."""
    out = {}
    for split in ("train", "test"):
        found = labels(synthetic_benchmark, CONFIG, split)
        out.update(zip(found.model_ids, zip(found.dataset_sizes.tolist(), found.micro_dataset_indices.tolist())))
    return out


def scores(predictions: dict, models: dict) -> dict:
    """MAE, MAPE and accuracy as fractions, computed here with numpy (independent of the leaderboard)."""
    p = np.array(list(predictions.values()))
    t = np.array([models[m][0] for m in predictions], dtype=float)
    return {"mae": float(np.mean(np.abs(p - t))), "mape": float(np.mean(np.abs(p - t) / t)),
            "accuracy": float(np.mean(np.round(p) == t))}


def make_record(models: dict, protocol: str = "paper", seed: int = 0, name: str = "my method",
                reported=None, **dataset) -> dict:
    """A results record written by lora_wise.results (the format's owner) with noisy predictions per draw."""
    rng = np.random.default_rng(seed)
    out = []
    for i, split in enumerate(draws(CONFIG, results.PROTOCOLS[protocol])):
        predictions = {m: float(max(0.6, size + rng.normal(0, 1.0))) for m, (size, micro) in models.items()
                       if micro in split.test}
        out.append({"draw": i, "train_micro_datasets": list(split.train), "test_micro_datasets": list(split.test),
                     "metrics": reported or scores(predictions, models), "predictions": predictions})
    cfg = get_config(CONFIG)
    return results.new_record(
        dataset={"source": "lora-wise", "config": CONFIG, "fingerprint": "sha256:" + "0" * 64,
                 "checkpoint_step": cfg.checkpoint_step, **dataset},
        method={"name": name, "class": "my_method.py:MyMethod", "params": {"k": 3}}, protocol=protocol, draws=out)


def write(tmp_path, record: dict, name: str = "results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(record, indent=1))
    return path


def test_a_record_is_rescored_on_every_draw_and_shows_both_numbers(tmp_path, synthetic_benchmark, models, capsys):
    record = make_record(models, reported={"mae": 0.0, "mape": 0.0, "accuracy": 1.0})  # claims to be perfect
    path = write(tmp_path, record)
    db = tmp_path / "lb.sqlite"
    code = main(["submit", str(path), "--dataset", str(synthetic_benchmark), "--db", str(db),
                 "--authors", "A. Author", "--link", "https://example.org/paper"])
    out, err = capsys.readouterr()
    assert code == 0, err
    (entry,) = SQLiteStore(db).entries()
    assert (entry.method, entry.config, entry.protocol, entry.authors) == ("my method", CONFIG, "paper", "A. Author")
    expected = [scores(d["predictions"], models) for d in record["draws"]]
    for draw, mine in zip(entry.draws, expected):  # recomputed, never the record's claims
        assert draw["metrics"] == pytest.approx(mine)
    assert entry.mae == pytest.approx(expected[0]["mae"]) and entry.mae > 0.3
    assert entry.metrics["confusion_matrix"]["labels"]  # the standard split keeps its details
    maes = [e["mae"] for e in expected]
    assert entry.summary()["mae"] == pytest.approx({"mean": np.mean(maes), "std": np.std(maes)})
    assert entry.source["method_class"] == "my_method.py:MyMethod" and entry.source["method_params"] == {"k": 3}
    assert entry.source["dataset"]["fingerprint"] == "sha256:" + "0" * 64
    assert f"standard split: MAE {expected[0]['mae']:.3f}" in out
    assert f"paper protocol: mean ± std of 10 draws: MAE {np.mean(maes):.3f} ± {np.std(maes):.3f}" in out

    code = main(["leaderboard", "show", "--db", str(db)])
    out, _ = capsys.readouterr()
    row = out.splitlines()[4]
    assert f"{expected[0]['mae']:.3f}" in row and f"{np.mean(maes):.3f} ± {np.std(maes):.3f}" in row

    # the same record again is a duplicate; a standard-protocol record of other predictions is another entry
    code = main(["submit", str(path), "--dataset", str(synthetic_benchmark), "--db", str(db)])
    assert code == 2 and "already on the leaderboard" in capsys.readouterr().err
    standard = write(tmp_path, make_record(models, protocol="standard", seed=5, name="standard only"), "std.json")
    assert main(["submit", str(standard), "--dataset", str(synthetic_benchmark), "--db", str(db)]) == 0
    capsys.readouterr()
    (_, second) = SQLiteStore(db).entries()
    assert second.protocol == "standard" and second.summary() is None and second.mean_text("mae") == "-"


def test_the_csv_and_the_record_of_the_same_standard_predictions(tmp_path, synthetic_benchmark, models):
    """A predictions file keeps working beside records; a standard record of the same predictions is a duplicate."""
    store = SQLiteStore(tmp_path / "lb.sqlite")
    record = make_record(models, protocol="standard", seed=2)
    predictions = record["draws"][0]["predictions"]
    csv = tmp_path / "p.csv"
    csv.write_text("model_id,prediction\n" + "".join(f"{m},{v!r}\n" for m, v in predictions.items()))
    first = submit(csv, method="as csv", config=CONFIG, dataset=synthetic_benchmark, store=store)
    assert first.entry.mae == pytest.approx(scores(predictions, models)["mae"])
    with pytest.raises(SubmissionError, match=f"already on the leaderboard as entry {first.entry.short_id}"):
        submit(write(tmp_path, record), dataset=synthetic_benchmark, store=store)
    paper = submit(write(tmp_path, make_record(models, seed=2), "paper.json"), dataset=synthetic_benchmark,
                   store=store)  # ten draws: other predictions, another entry
    assert len(ranked_entries(store, CONFIG, "test")) == 2 and paper.entry.summary() is not None


def _mutated(models, change) -> dict:
    record = make_record(models)
    change(record)
    return record


def _swap_first(draw):
    moved = draw["test_micro_datasets"].pop(0)
    draw["train_micro_datasets"].append(moved)


@pytest.mark.parametrize("case, change, message", [
    ("draws of another protocol",
     lambda r: [_swap_first(r["draws"][3])],
     r"draw 3 of the record has other train micro-datasets than draw 3 of the reference protocol for mini_low_r8"),
    ("a model missing from a draw",
     lambda r: r["draws"][2]["predictions"].pop(next(iter(r["draws"][2]["predictions"]))),
     r"1 model has no prediction among the \d+ of the test micro-datasets of draw 2 of mini_low_r8"),
    ("a model of another draw",
     lambda r: r["draws"][0]["predictions"].update({f"mini_low_r8/concept-{standard_split('mini_low_r8').train[0]:02d}/n1": 1.0}),
     r"1 model id is not in the test micro-datasets of draw 0 of mini_low_r8"),
    ("another checkpoint", lambda r: r["dataset"].update(checkpoint_step=50),
     r"evaluated with checkpoint_step 50, but the leaderboard scores mini_low_r8 with checkpoint_step"),
    ("another split seed", lambda r: r["dataset"].update(split_seed=7),
     r"evaluated with split_seed 7, .* split_seed 42"),
    ("a method name with a bidi override", lambda r: r["method"].update(name="good\u202eevil"),
     r"U\+202E"),
    ("a method name with a private-use character", lambda r: r["method"].update(name="x\ue000"),
     r"private-use character"),
])
def test_records_that_do_not_match_are_refused_with_nothing_stored(tmp_path, synthetic_benchmark, models, capsys,
                                                                   case, change, message):
    record = _mutated(models, change)
    db = tmp_path / "lb.sqlite"
    code = main(["submit", str(write(tmp_path, record)), "--dataset", str(synthetic_benchmark), "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.startswith("error: ") and "Traceback" not in err, case
    assert re.search(message, err), f"{case}: {err}"
    assert SQLiteStore(db).entries() == []


@pytest.mark.parametrize("change, message", [
    (lambda text: text.replace('"schema_version": 1', '"schema_version": 2'), "schema_version"),
    (lambda text: text.replace('"kind": "lora-wise-results"', '"kind": "something-else"'), "not a LoRA-WiSE results"),
    (lambda text: text.replace('"protocol": "paper"', '"protocol": "standard"'), "must list the 1 draw"),
    (lambda text: text.replace(', "k": 3', ', "k": NaN').replace('{"k": 3}', '{"k": NaN}'), "NaN is not valid JSON"),
])
def test_malformed_records_are_refused_by_the_format_owner(tmp_path, synthetic_benchmark, models, change, message):
    text = change(json.dumps(make_record(models)))
    store = SQLiteStore(tmp_path / "lb.sqlite")
    with pytest.raises(ResultsRecordError, match=message):
        submit(text.encode(), dataset=synthetic_benchmark, store=store, name="upload.json")
    assert store.entries() == []


def test_bounds_of_a_record_prediction(tmp_path, synthetic_benchmark, models):
    record = make_record(models)
    first = next(iter(record["draws"][0]["predictions"]))
    record["draws"][0]["predictions"][first] = 1.7e308
    with pytest.raises(ResultsRecordError, match="a dataset size is positive and at most"):
        submit(json.dumps(record).encode(), dataset=synthetic_benchmark, store=SQLiteStore(tmp_path / "lb.sqlite"))


def test_record_config_must_agree_with_the_option(tmp_path, synthetic_benchmark, models):
    path = write(tmp_path, make_record(models))
    store = SQLiteStore(tmp_path / "lb.sqlite")
    with pytest.raises(SubmissionError, match="the record's config is 'mini_low_r8' but the submission says"):
        submit(path, config="mini_medium_r8", dataset=synthetic_benchmark, store=store)
    with pytest.raises(SubmissionError, match="the record's split is 'test' but the submission says 'train'"):
        submit(path, split="train", dataset=synthetic_benchmark, store=store)
    with pytest.raises(SubmissionError, match="the record's method is 'my method' but the submission says 'other'"):
        submit(path, method="other", dataset=synthetic_benchmark, store=store)
    assert store.entries() == []
    same = submit(path, method="my method", config=CONFIG,
                  dataset=synthetic_benchmark, store=store)
    assert same.entry.method == "my method" and same.entry.config == CONFIG


def test_what_lora_wise_evaluate_writes_is_what_the_leaderboard_takes(tmp_path, synthetic_benchmark, capsys):
    """The researcher's loop end to end: evaluate a method into a record, submit it, see the same numbers."""
    import lora_wise

    path = tmp_path / "results.json"
    record = lora_wise.evaluate("frobenius-nn", synthetic_benchmark, CONFIG, protocol="paper", name="my Frobenius",
                                out=path)
    db = tmp_path / "lb.sqlite"
    assert main(["submit", str(path), "--dataset", str(synthetic_benchmark), "--db", str(db)]) == 0, \
        capsys.readouterr().err
    (entry,) = SQLiteStore(db).entries()
    assert entry.method == "my Frobenius" and entry.protocol == "paper"
    for mine, theirs in zip(entry.draws, record["draws"]):  # recomputed here, equal to the evaluation's
        assert mine["metrics"] == pytest.approx(theirs["metrics"])
        assert mine["predictions"] == pytest.approx(theirs["predictions"])
    for metric in results.METRICS:
        assert entry.summary()[metric] == pytest.approx(record["summary"][metric])
    assert entry.source["dataset"]["fingerprint"] == record["dataset"]["fingerprint"]
