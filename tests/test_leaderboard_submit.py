"""``lora-wise submit`` end to end on a synthetic LoRA-WiSE folder: scores, storage, rank, every error path."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest

from lora_wise.leaderboard.baselines import REFERENCE_METHODS, add_baselines
from lora_wise.leaderboard.store import SQLiteStore
from lora_wise.leaderboard.entries import predictions_sha256
from lora_wise.leaderboard.submission import MAX_BYTES, SubmissionError, read_submission
from lora_wise.leaderboard.scoring import submit
from lora_wise.cli import main
from lora_wise.data import labels
from lora_wise.splits import draws, standard_split

CONFIG = "mini_low_r8"


@pytest.fixture(scope="module")
def truth(synthetic_benchmark):
    found = labels(synthetic_benchmark, CONFIG, "test")
    return dict(zip(found.model_ids, found.dataset_sizes.tolist()))


def guesses(truth: dict, seed: int = 0, spread: float = 1.5) -> dict:
    """Deterministic imperfect predictions: the true size plus noise, kept positive."""
    rng = np.random.default_rng(seed)
    return {m: float(max(0.5, size + rng.normal(0, spread))) for m, size in truth.items()}


def write_csv(path, predictions: dict, header="model_id,prediction"):
    path.write_text(header + "\n" + "".join(f"{m},{v!r}\n" for m, v in predictions.items()))
    return path


def run_cli(*argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_submit_scores_against_an_independent_computation(tmp_path, synthetic_benchmark, truth):
    store = SQLiteStore(tmp_path / "lb.sqlite")
    predictions = guesses(truth)
    result = submit(write_csv(tmp_path / "p.csv", predictions), method="noisy", config=CONFIG,
                    dataset=synthetic_benchmark, store=store)
    ids = list(truth)
    p = np.array([predictions[m] for m in ids])
    t = np.array([truth[m] for m in ids], dtype=float)
    entry = result.entry
    assert entry.mae == pytest.approx(np.mean(np.abs(p - t)))
    assert entry.mape == pytest.approx(np.mean(np.abs(p - t) / t))  # fractions, as evaluate's metrics
    assert entry.accuracy == pytest.approx(np.mean(np.round(p) == t))
    sizes = sorted(set(truth.values()))
    labels = sorted(set(sizes) | {int(x) for x in np.round(p)})  # true or predicted, as rounded
    expected = np.zeros((len(labels), len(labels)), dtype=int)
    for pred, size in zip(p, t):
        expected[labels.index(size), labels.index(int(np.round(pred)))] += 1
    assert entry.metrics["confusion_matrix"] == {"labels": labels, "matrix": expected.tolist()}
    assert {int(k) for k in entry.metrics["per_size"]} == set(sizes)
    assert (entry.n_models, entry.config, entry.split, entry.method) == (len(truth), CONFIG, "test", "noisy")
    assert (result.rank, result.total) == (1, 1)

    (stored,) = store.entries()
    assert stored == entry  # round trip through SQLite: every field, predictions and metrics included
    assert stored.verify()

    from lora_wise import leaderboard

    assert leaderboard.submit is submit  # the library call behind the CLI, at the package's top level


def test_rank_by_mae_then_mape_then_time(tmp_path, synthetic_benchmark, truth):
    store = SQLiteStore(tmp_path / "lb.sqlite")
    csv = lambda name, preds: write_csv(tmp_path / name, preds)  # noqa: E731
    first = next(iter(truth))
    rough = submit(csv("rough.csv", guesses(truth, spread=3.0)), method="rough", config=CONFIG,
                   dataset=synthetic_benchmark, store=store)
    above = submit(csv("above.csv", {**truth, first: truth[first] + 0.25}), method="above", config=CONFIG,
                   dataset=synthetic_benchmark, store=store)
    below = submit(csv("below.csv", {**truth, first: truth[first] - 0.25}), method="below", config=CONFIG,
                   dataset=synthetic_benchmark, store=store)
    assert (rough.rank, rough.total) == (1, 1)
    assert (above.rank, above.total) == (1, 2) and above.entry.accuracy == 1.0
    assert (below.entry.mae, below.entry.mape) == (above.entry.mae, above.entry.mape)
    assert (below.rank, below.total) == (2, 3)  # same MAE and MAPE: the earlier entry ranks first
    exact = submit(csv("exact.csv", truth), method="exact", config=CONFIG, dataset=synthetic_benchmark, store=store)
    assert (exact.rank, exact.entry.mae, exact.entry.accuracy) == (1, 0.0, 1.0)


def test_jsonl_shuffled_and_reformatted_predictions_hash_the_same(tmp_path, synthetic_benchmark, truth):
    store = SQLiteStore(tmp_path / "lb.sqlite")
    predictions = guesses(truth, seed=3)
    first = submit(write_csv(tmp_path / "a.csv", predictions), method="m", config=CONFIG,
                   dataset=synthetic_benchmark, store=store)
    items = list(predictions.items())
    random.Random(0).shuffle(items)
    lines = [json.dumps({"model_id": m, "prediction": v, "method": "m2", "config": CONFIG}) for m, v in items]
    (tmp_path / "b.jsonl").write_text("\n".join(lines))
    parsed = read_submission(tmp_path / "b.jsonl")
    assert parsed.metadata == {"method": "m2", "config": CONFIG}
    assert predictions_sha256(parsed.predictions) == first.entry.sha256
    # the same predictions for the same config, whatever the format and order: a duplicate, nothing stored
    with pytest.raises(SubmissionError, match=rf"already on the leaderboard as entry {first.entry.short_id} \('m'"):
        submit(tmp_path / "b.jsonl", dataset=synthetic_benchmark, store=store)  # metadata from the file
    assert store.entries() == [first.entry]


def test_cli_submit_and_show(tmp_path, synthetic_benchmark, truth, capsys, monkeypatch):
    db = tmp_path / "cli.sqlite"
    pred = write_csv(tmp_path / "p.csv", guesses(truth))
    monkeypatch.setenv("LORA_WISE_DATASET", str(synthetic_benchmark))  # --dataset from the environment
    code, out, err = run_cli("submit", pred, "--config", CONFIG, "--method", "cli-method", "--authors", "me",
                             "--link", "https://example.org", "--db", db, capsys=capsys)
    assert code == 0, err
    assert "rank 1 of 1 on mini_low_r8/test" in out and "cli-method" in out
    code, out, err = run_cli("submit", pred, "--config", CONFIG, "--method", "again", "--db", db, capsys=capsys)
    assert code == 2 and out == "" and "already on the leaderboard" in err and "\n" not in err.strip()
    worse = write_csv(tmp_path / "worse.csv", guesses(truth, seed=1, spread=3.0))
    code, out, _ = run_cli("submit", worse, "--config", CONFIG, "--method", "second", "--db", db, "--json",
                           capsys=capsys)
    shown = json.loads(out)
    assert code == 0 and shown["rank"] == 2 and shown["total"] == 2 and "confusion_matrix" in shown["metrics"]
    assert shown["protocol"] == "standard" and shown["summary"] is None and shown["withdrawn"] is None
    code, out, _ = run_cli("leaderboard", "show", "--db", db, capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "mini_low_r8 (test split)"
    assert lines[1].startswith("standard: the standard split (ranked); paper: the paper protocol: mean ± std of 10")
    assert "MAE (standard)" in lines[2] and "accuracy (standard)" in lines[2] and "MAE (paper)" in lines[2]
    assert [line.split()[1] for line in lines[4:6]] == ["cli-method", "second"]  # lower MAE first
    code, out, _ = run_cli("leaderboard", "show", "--db", db, "--json", "--config", CONFIG, capsys=capsys)
    assert [e["method"] for e in json.loads(out)] == ["cli-method", "second"]
    monkeypatch.setenv("LORA_WISE_LEADERBOARD_DB", str(db))  # --db from the environment
    code, out, _ = run_cli("leaderboard", "show", capsys=capsys)
    assert "cli-method" in out


def _bad_cases(tmp_path, truth):
    ids = list(truth)
    good = {m: float(s) for m, s in truth.items()}
    cases = {
        "missing ids": (write_csv(tmp_path / "missing.csv", {m: good[m] for m in ids[5:]}), [],
                        rf"5 models have no prediction among the {len(standard_split('mini_low_r8').test) * 6} of the test split of mini_low_r8"),
        "unknown ids": (write_csv(tmp_path / "unknown.csv", {**good, "mini_low_r8/concept-99/n1": 1.0}), [],
                        r"1 model id is not in the test split of mini_low_r8 .*'mini_low_r8/concept-99/n1'"),
        "train ids on test": (write_csv(tmp_path / "train.csv", {f"mini_low_r8/concept-{standard_split('mini_low_r8').train[0]:02d}/n1": 1.0}), [],
                              r"not in the test split.*check --config and --split"),
        "duplicate ids": (tmp_path / "dup.csv", [], r"1 model id appears more than once"),
        "non-numeric": (tmp_path / "text.csv", [], r"1 prediction is not a number \(line 2: 'many'\)"),
        "nan": (tmp_path / "nan.csv", [], "NaN or infinite"),
        "infinite": (tmp_path / "inf.csv", [], "NaN or infinite"),
        "non-positive": (tmp_path / "zero.csv", [], "zero or negative"),
        "unknown config": (write_csv(tmp_path / "ok1.csv", good), ["--config", "mini_lwo_r8"],
                           r"unknown config 'mini_lwo_r8'\. Did you mean mini_low_r8"),
        "config not built": (write_csv(tmp_path / "ok2.csv", good), ["--config", "low_8"],
                             r"has no config 'low_r8'; it has mini_low_r8, mini_medium_r8"),
        "unknown split": (write_csv(tmp_path / "ok3.csv", good), ["--split", "validation"],
                          r"unknown split 'validation': LoRA-WiSE configs have train and test"),
        "empty": (tmp_path / "empty.csv", [], "is empty"),
        "oversized": (tmp_path / "huge.csv", [], "over the limit of 52,428,800 bytes"),
        "not csv/jsonl": (tmp_path / "weights.csv", [], "binary data, not a CSV or JSONL"),
        "header only": (tmp_path / "header.csv", [], "no predictions"),
        "wrong header": (write_csv(tmp_path / "hdr.csv", good, header="id,size"), [], "no 'model_id'"),
        "no method": (write_csv(tmp_path / "ok4.csv", good), ["--method", ""], "no method name"),
        "file disagrees": (tmp_path / "meta.csv", [], r"the file's 'config' column says 'mini_medium_r8'"),
        "bad link": (write_csv(tmp_path / "ok5.csv", good), ["--link", "example.org"], "not a web address"),
        "no dataset": (write_csv(tmp_path / "ok6.csv", good), ["--dataset", tmp_path / "nowhere"],
                       r"no LoRA-WiSE dataset at .*nowhere"),
    }
    first = ids[0]
    lines = "".join(f"{m},{v}\n" for m, v in good.items())
    (tmp_path / "dup.csv").write_text(f"model_id,prediction\n{lines}{first},2\n")
    for name, value in (("text", "many"), ("nan", "nan"), ("inf", "inf"), ("zero", "0")):
        (tmp_path / f"{name}.csv").write_text(f"model_id,prediction\n{first},{value}\n"
                                              + "".join(f"{m},{v}\n" for m, v in list(good.items())[1:]))
    (tmp_path / "empty.csv").write_bytes(b"")
    with (tmp_path / "huge.csv").open("wb") as f:
        f.write(b"model_id,prediction\n")
        f.truncate(MAX_BYTES + 1)
    (tmp_path / "weights.csv").write_bytes(b"\x00\x00\x00\x00\x00\x00\x00\x08{\"__metadata__\":{}}")
    (tmp_path / "header.csv").write_text("model_id,prediction\n")
    (tmp_path / "meta.csv").write_text("model_id,prediction,config\n"
                                       + "".join(f"{m},{v},mini_medium_r8\n" for m, v in good.items()))
    return cases


def test_every_bad_submission_is_an_error_with_nothing_stored(tmp_path, synthetic_benchmark, truth, capsys):
    db = tmp_path / "bad.sqlite"
    store = SQLiteStore(db)
    for name, (path, extra, message) in _bad_cases(tmp_path, truth).items():
        argv = ["submit", path, "--config", CONFIG, "--method", "bad", "--dataset", synthetic_benchmark,
                "--db", db] + extra
        code, out, err = run_cli(*argv, capsys=capsys)
        assert code == 2, name
        assert err.startswith("error: ") and "Traceback" not in err, name
        assert re.search(message, err, re.S), f"{name}: {err}"
        assert out == ""
        assert store.entries() == [], name
    # the library raises the same errors as SubmissionError (a ValueError)
    with pytest.raises(SubmissionError, match="no method name"):
        submit(tmp_path / "ok4.csv", config=CONFIG, dataset=synthetic_benchmark, store=store)
    assert not db.exists() or store.entries() == []


def test_a_baseline_predicting_exactly_like_the_other_is_skipped_not_refused(tmp_path, synthetic_benchmark):
    from lora_wise.data import feature_table
    from lora_wise.protocol import run_protocol

    store = SQLiteStore(tmp_path / "lb.sqlite")
    result = run_protocol(feature_table(synthetic_benchmark, CONFIG), CONFIG, "dsire", protocol="paper")
    first, second = REFERENCE_METHODS
    added = add_baselines(synthetic_benchmark, configs=[CONFIG], store=store,
                          results={CONFIG: {first: result, second: result}})  # both predict alike
    assert [r.entry.method for r in added] == [REFERENCE_METHODS[first]]
    assert [e.method for e in store.entries()] == [REFERENCE_METHODS[first]]


def test_reference_baselines_carry_the_standard_split_and_the_paper_protocol(tmp_path, synthetic_benchmark, truth,
                                                                            capsys):
    store = SQLiteStore(tmp_path / "lb.sqlite")
    added = add_baselines(synthetic_benchmark, configs=[CONFIG], store=store)
    assert sorted(r.entry.method for r in added) == sorted(REFERENCE_METHODS.values())
    everything = {}
    for split in ("train", "test"):
        found = labels(synthetic_benchmark, CONFIG, split)
        everything.update(zip(found.model_ids, zip(found.dataset_sizes.tolist(), found.micro_dataset_indices.tolist())))
    for result in added:
        entry = result.entry
        assert entry.reference and entry.split == "test" and set(entry.predictions) == set(truth)
        p = np.array([entry.predictions[m] for m in truth])
        t = np.array(list(truth.values()), dtype=float)
        assert entry.mae == pytest.approx(np.mean(np.abs(p - t)))
        assert set(np.unique(p)) <= set(t)  # nearest-neighbour baselines predict sizes seen in training
        assert entry.protocol == "paper" and len(entry.draws) == 10
        maes = []
        for draw, split in zip(entry.draws, draws(CONFIG, 10)):  # each draw's test models, scored independently
            assert set(draw["predictions"]) == {m for m, (_, micro) in everything.items() if micro in split.test}
            errors = [abs(v - everything[m][0]) for m, v in draw["predictions"].items()]
            maes.append(np.mean(errors))
            assert draw["metrics"]["mae"] == pytest.approx(maes[-1])
        assert entry.summary()["mae"] == pytest.approx({"mean": np.mean(maes), "std": np.std(maes)})
    code, out, _ = run_cli("leaderboard", "add-baselines", synthetic_benchmark, "--config", CONFIG,
                           "--db", store.path, capsys=capsys)  # again, from the CLI: nothing new
    assert code == 0 and "added 0 reference entries (all were already stored)" in out
    assert len(store.entries()) == 2


def test_cli_submit_takes_config_and_split_from_the_file(tmp_path, synthetic_benchmark, capsys):
    train = labels(synthetic_benchmark, CONFIG, "train")
    rows = "".join(f"{m},{s},train,{CONFIG},from-file\n" for m, s in zip(train.model_ids, train.dataset_sizes))
    pred = tmp_path / "train.csv"
    pred.write_text("model_id,prediction,split,config,method\n" + rows)
    db = tmp_path / "meta.sqlite"
    code, out, err = run_cli("submit", pred, "--config", CONFIG, "--dataset", synthetic_benchmark, "--db", db,
                             capsys=capsys)
    assert code == 0, err
    (entry,) = SQLiteStore(db).entries(CONFIG, "train")
    assert (entry.method, entry.split, entry.mae, entry.accuracy) == ("from-file", "train", 0.0, 1.0)
    code, _, err = run_cli("submit", pred, "--config", CONFIG, "--split", "test", "--dataset", synthetic_benchmark,
                           "--db", db, capsys=capsys)
    assert code == 2 and "split" in err and len(SQLiteStore(db).entries(CONFIG, "train")) == 1
