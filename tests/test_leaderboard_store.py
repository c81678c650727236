"""Leaderboard stores: append-only SQLite under parallel writers, and the Hub-dataset store through HfApi."""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import sqlite3
from pathlib import Path

import pytest

from lora_wise.errors import HubConnectionError, RepoIdError, SubmissionError, TextPolicyError
from lora_wise.leaderboard.entries import Entry
from lora_wise.leaderboard.store import (HubDatasetStore, SQLiteStore, StoreError, default_db_path, open_store,
                                         ranked_entries, withdraw)
from lora_wise.leaderboard.scoring import submit
from lora_wise.data import labels
# Imported here so the forked writers inherit it: it pulls `evaluate` (and transformers), seconds each.
import lora_wise.metrics.dataset_size_recovery  # noqa: F401,E402

CONFIG = "mini_low_r8"


def make_entry(method="m", mae=1.0, config=CONFIG, predictions=None, **kwargs) -> Entry:
    """An entry whose predictions differ with its method (so two methods are never duplicates)."""
    return Entry(method=method, config=config, split="test", dataset="somewhere",
                 metrics={"mae": mae, "mape": 0.1 * mae, "accuracy": 0.5,
                          "per_size": {1: {"mae": mae, "count": 2}}},
                 predictions=predictions or {"a/x/n1": 1.0, "a/x/n2": 2.5, f"a/{method}/n3": 3.0}, **kwargs)


def test_sqlite_round_trip_and_append_only(tmp_path):
    store = SQLiteStore(tmp_path / "sub" / "lb.sqlite")
    assert store.entries() == []
    first, second = make_entry("first", 2.0), make_entry("second", 1.0, reference=True, authors="A", link="https://x")
    store.append(first)
    store.append(second)
    assert store.entries() == [first, second]
    assert store.entries(CONFIG, "test") == [first, second] and store.entries("mini_medium_r8") == []
    assert all(e.verify() for e in store.entries())

    with pytest.raises(StoreError, match="already stored"):
        store.append(first)
    raw = sqlite3.connect(store.path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("UPDATE entries SET mae = 0")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM entries")
    raw.close()
    assert store.entries() == [first, second]


def test_withdrawal_is_appended_and_takes_the_entry_out_of_the_ranking(tmp_path):
    store = SQLiteStore(tmp_path / "lb.sqlite")
    first, second = store.append(make_entry("first", 2.0)), store.append(make_entry("second", 1.0))
    assert [e.id for e in ranked_entries(store, CONFIG, "test")] == [first.id, second.id]
    entry, withdrawal = withdraw(store, second.short_id, "wrong predictions file")
    assert entry == second and withdrawal.entry_id == second.id and withdrawal.reason == "wrong predictions file"
    assert store.entries() == [first, second]  # nothing removed: the history keeps it
    assert store.withdrawals() == [withdrawal] and store.withdrawals("mini_medium_r8") == []
    assert ranked_entries(store, CONFIG, "test") == [first]
    with pytest.raises(SubmissionError, match=r"already withdrawn on .* UTC; nothing to do"):
        withdraw(store, second.id, "again")
    with pytest.raises(SubmissionError, match="no entry 'ffffffff' on the leaderboard"):
        withdraw(store, "ffffffff", "why")
    with pytest.raises(SubmissionError, match="is not an entry id"):
        withdraw(store, "abc", "why")
    with pytest.raises(TextPolicyError, match="the reason contains a control character"):
        withdraw(store, first.id, "bad\x1b[2J")
    with pytest.raises(TextPolicyError, match="the reason is empty"):
        withdraw(store, first.id, "  ")
    assert store.withdrawals() == [withdrawal]  # the refused ones wrote nothing
    raw = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("DELETE FROM withdrawals")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw.execute("UPDATE withdrawals SET reason = 'x'")
    raw.close()
    # the same predictions again: refused while the entry is ranked, accepted once it is withdrawn
    with pytest.raises(SubmissionError, match=rf"already on the leaderboard as entry {first.short_id}.*withdraw"):
        store.append(make_entry("first again", 2.0, predictions=first.predictions))
    again = store.append(make_entry("second again", 1.0, predictions=second.predictions))
    assert ranked_entries(store, CONFIG, "test") == [first, again]


def test_stores_refuse_text_outside_the_policy_and_non_finite_numbers(tmp_path):
    stores = [SQLiteStore(tmp_path / "lb.sqlite"), HubDatasetStore("someone/results", api=FakeHfApi(tmp_path / "hub"))]
    for store in stores:  # whoever calls append, the store checks the entry itself
        with pytest.raises(TextPolicyError, match="U\\+202E"):
            store.append(make_entry("evil \u202e name"))
        with pytest.raises(TextPolicyError, match="U\\+0020 SPACE"):
            store.append(make_entry("m", link='https://x.org/) <img src="http://127.0.0.1:9/t.png">'))
        with pytest.raises(ValueError, match="predictions outside"):
            store.append(make_entry("m", predictions={"a/x/n1": 1.7e308}))
        with pytest.raises(ValueError, match="not JSON compliant"):  # not even an entry: metrics are finite
            store.append(Entry(method="m", config=CONFIG, split="test", dataset="d", predictions={"a": 1.0},
                               metrics={"mae": math.inf, "mape": 0.0, "accuracy": 0.0}))
        assert store.entries() == []


def test_a_schema_1_database_is_read_and_extended(tmp_path):
    """A file written before withdrawals and fractions: read with MAPE and accuracy as fractions, then grown."""
    path = tmp_path / "old.sqlite"
    raw = sqlite3.connect(path)
    columns = ("id", "time", "method", "authors", "link", "config", "split", "dataset", "reference", "mae", "mape",
               "accuracy", "metrics", "sha256", "n_models", "predictions")
    raw.execute(f"CREATE TABLE entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, {', '.join(columns)})")
    raw.execute("PRAGMA user_version = 1")
    old = make_entry("old", 2.0)
    values = {**old.to_dict(), "reference": 0, "mae": 2.0, "mape": 12.5, "accuracy": 75.0,
              "metrics": json.dumps({"mae": 2.0, "mape": 12.5, "accuracy": 75.0,
                                     "per_size": {"1": {"mae": 2.0, "mape": 12.5, "accuracy": 75.0, "count": 2}}}),
              "predictions": json.dumps(old.predictions)}
    raw.execute(f"INSERT INTO entries ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [values[c] for c in columns])
    raw.commit()
    raw.close()
    store = SQLiteStore(path)
    (read,) = store.entries()
    assert (read.id, read.mae, read.mape, read.accuracy) == (old.id, 2.0, 0.125, 0.75)
    assert read.metrics["per_size"]["1"]["accuracy"] == 0.75 and read.verify()
    with pytest.raises(SubmissionError, match="already on the leaderboard"):  # its key computed on the fly
        store.append(make_entry("copy", predictions=old.predictions))
    withdraw(store, old.id, "superseded")
    store.append(make_entry("copy", predictions=old.predictions))
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
    assert [e.method for e in ranked_entries(store)] == ["copy"]


def test_tampered_predictions_are_detected(tmp_path):
    store = SQLiteStore(tmp_path / "lb.sqlite")
    store.append(make_entry())
    raw = sqlite3.connect(store.path)
    raw.execute("DROP TRIGGER entries_append_only_update")  # someone bypassing the store
    raw.execute("UPDATE entries SET predictions = '{\"a/x/n1\": 1.0, \"a/x/n2\": 9.0}'")
    raw.commit()
    raw.close()
    assert not store.entries()[0].verify()


def test_not_a_database_is_a_clear_error_and_left_alone(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("these are my notes, not a database " * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="is not a leaderboard database.*--db"):
        SQLiteStore(path).entries()
    with pytest.raises(StoreError, match="is not a leaderboard database"):
        SQLiteStore(path).append(make_entry())
    assert path.read_bytes() == before


def test_default_path_and_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("LORA_WISE_LEADERBOARD_DB", raising=False)
    monkeypatch.delenv("LORA_WISE_LEADERBOARD_REPO", raising=False)
    monkeypatch.setenv("LORA_WISE_CACHE", str(tmp_path / "cache"))
    assert default_db_path() == tmp_path / "cache" / "leaderboard" / "leaderboard.sqlite"
    assert isinstance(open_store(), SQLiteStore) and open_store().path == default_db_path()
    monkeypatch.setenv("LORA_WISE_LEADERBOARD_DB", str(tmp_path / "env.sqlite"))
    assert open_store().path == tmp_path / "env.sqlite"
    assert open_store(db=tmp_path / "arg.sqlite").path == tmp_path / "arg.sqlite"
    monkeypatch.setenv("LORA_WISE_LEADERBOARD_REPO", "someone/results")
    hub = open_store(api=FakeHfApi(tmp_path / "hub"))
    assert isinstance(hub, HubDatasetStore) and hub.repo_id == "someone/results"
    assert isinstance(open_store(db=tmp_path / "arg.sqlite"), SQLiteStore)  # an explicit --db wins
    with pytest.raises(StoreError, match="not both"):
        open_store(db=tmp_path / "x.sqlite", repo="a/b")
    with pytest.raises(RepoIdError, match="not a Hub repo id"):
        open_store(repo="no-slash", api=FakeHfApi(tmp_path / "hub"))


# --------------------------------------------------------------------------- parallel writers

WRITERS, SUBMISSIONS_EACH = 4, 8


def _writer(worker: int, db: str, dataset: str, folder: str, barrier, results) -> None:
    """One process: wait for the others, then submit its own files and a file every writer submits."""
    store = SQLiteStore(db)
    barrier.wait(timeout=120)
    for i in range(SUBMISSIONS_EACH):
        try:
            result = submit(f"{folder}/w{worker}-{i}.csv", method=f"writer{worker}-{i}", config=CONFIG,
                            dataset=dataset, store=store)
        except Exception as exc:  # reported to the test, which fails at once instead of waiting
            results.put(("error", f"writer {worker}: {type(exc).__name__}: {exc}", 0))
            return
        results.put((result.entry.id, result.rank, result.total))
    try:
        shared = submit(f"{folder}/shared.csv", method=f"shared by writer {worker}", config=CONFIG, dataset=dataset,
                        store=store)
        results.put(("shared", shared.entry.id, 0))
    except SubmissionError as exc:
        results.put(("duplicate", str(exc), 0))


def test_parallel_writers_lose_nothing_and_store_a_duplicate_once(tmp_path, synthetic_benchmark):
    found = labels(synthetic_benchmark, CONFIG, "test")  # warms the datasets cache the writers share
    pairs = list(zip(found.model_ids, found.dataset_sizes.tolist()))

    def write(name: str, first: float) -> None:  # each file differs in its first prediction
        (tmp_path / name).write_text("model_id,prediction\n" + f"{pairs[0][0]},{first}\n"
                                     + "".join(f"{m},{max(1, s - 1)}\n" for m, s in pairs[1:]))

    for w in range(WRITERS):
        for i in range(SUBMISSIONS_EACH):
            write(f"w{w}-{i}.csv", 1 + 0.01 * (w * SUBMISSIONS_EACH + i))
    write("shared.csv", 7.5)
    db = tmp_path / "parallel.sqlite"
    # fork: the writers start with the libraries already imported, so they really overlap
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    workers = [context.Process(target=_writer, args=(w, str(db), str(synthetic_benchmark), str(tmp_path), barrier,
                                                      results))
               for w in range(WRITERS)]
    for p in workers:
        p.start()
    reported, shared = [], []
    while len(reported) + len(shared) < WRITERS * (SUBMISSIONS_EACH + 1):
        got = results.get(timeout=180)
        assert got[0] != "error", got[1]
        (shared if got[0] in ("shared", "duplicate") else reported).append(got)
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    entries = SQLiteStore(db).entries()
    total = WRITERS * SUBMISSIONS_EACH + 1
    assert len(entries) == total
    assert [kind for kind, *_ in shared].count("shared") == 1  # one writer stored it, the others were refused
    assert all("already on the leaderboard" in text for kind, text, _ in shared if kind == "duplicate")
    assert sorted(e.id for e in entries) == sorted([r[0] for r in reported] + [t for k, t, _ in shared if k == "shared"])
    assert {e.method for e in entries if not e.method.startswith("shared")} == \
        {f"writer{w}-{i}" for w in range(WRITERS) for i in range(SUBMISSIONS_EACH)}
    assert all(e.verify() for e in entries)
    assert len({e.sha256 for e in entries}) == total  # every file its own fingerprint
    assert all(1 <= rank <= seen <= total for _, rank, seen in reported)
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert raw.execute("SELECT COUNT(DISTINCT seq) FROM entries").fetchone()[0] == total
    raw.close()


# --------------------------------------------------------------------------- Hub dataset store

class FakeHfApi:
    """The ``HfApi`` boundary: a dataset repo kept as files in a folder (no network)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.calls: list[str] = []
        self.fail_uploads = False

    def _repo(self, repo_id: str, repo_type: str) -> Path:
        assert repo_type == "dataset"
        return self.root / repo_id

    def create_repo(self, repo_id, *, repo_type=None, exist_ok=False, private=None, **kwargs):
        self.calls.append("create_repo")
        path = self._repo(repo_id, repo_type)
        if path.exists() and not exist_ok:
            raise FileExistsError(repo_id)
        path.mkdir(parents=True, exist_ok=True)
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, repo_type=None, commit_message=None, **kwargs):
        self.calls.append("upload_file")
        if self.fail_uploads:
            raise ConnectionError("the Hub is unreachable")
        repo = self._repo(repo_id, repo_type)
        if not repo.is_dir():
            raise self._not_found(repo_id)
        target = repo / path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path_or_fileobj)
        assert commit_message

    def list_repo_files(self, repo_id, *, repo_type=None, **kwargs):
        self.calls.append("list_repo_files")
        repo = self._repo(repo_id, repo_type)
        if not repo.is_dir():
            raise self._not_found(repo_id)
        return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, cache_dir=None, **kwargs):
        self.calls.append("hf_hub_download")
        local = Path(cache_dir) / "fake" / repo_id / filename
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._repo(repo_id, repo_type) / filename, local)
        return str(local)

    @staticmethod
    def _not_found(repo_id):
        """The error the real client raises for a missing repo (built on its own HTTP library)."""
        import importlib

        import huggingface_hub.errors as hub_errors

        http = importlib.import_module(hub_errors.Response.__module__.partition(".")[0])
        url = f"https://huggingface.co/api/datasets/{repo_id}"
        response = hub_errors.Response(404, request=http.Request("GET", url))
        return hub_errors.RepositoryNotFoundError(f"{repo_id} not found", response=response)


def test_hub_store_round_trip_through_submit(tmp_path, synthetic_benchmark):
    api = FakeHfApi(tmp_path / "hub")
    store = HubDatasetStore("lora-wise/leaderboard-results", api=api)
    assert store.entries() == []  # the repo does not exist yet: an empty leaderboard
    found = labels(synthetic_benchmark, CONFIG, "test")
    pred = tmp_path / "p.csv"
    pred.write_text("model_id,prediction\n" + "".join(f"{m},{s}\n" for m, s in zip(found.model_ids, found.dataset_sizes)))
    worse = tmp_path / "w.csv"
    worse.write_text("model_id,prediction\n" + "".join(f"{m},{s + 1}\n" for m, s in zip(found.model_ids, found.dataset_sizes)))
    r1 = submit(worse, method="off by one", config=CONFIG, dataset=synthetic_benchmark, store=store)
    r2 = submit(pred, method="exact", config=CONFIG, dataset=synthetic_benchmark, store=store)
    assert (r1.rank, r2.rank, r2.total) == (1, 1, 2)
    files = sorted(p.relative_to(api.root / "lora-wise/leaderboard-results").as_posix()
                   for p in (api.root / "lora-wise/leaderboard-results").rglob("*.json"))
    assert files == sorted(f"entries/{CONFIG}/{r.entry.id}.json" for r in (r1, r2))
    assert r2.store == "hf://datasets/lora-wise/leaderboard-results"

    fresh = HubDatasetStore("lora-wise/leaderboard-results", api=api)  # another process, e.g. a restarted Space
    assert fresh.entries() == [r1.entry, r2.entry]
    assert fresh.entries(CONFIG, "test") == [r1.entry, r2.entry] and fresh.entries("mini_medium_r8") == []
    downloads = api.calls.count("hf_hub_download")
    fresh.entries()
    assert api.calls.count("hf_hub_download") == downloads  # immutable entries are downloaded once

    with pytest.raises(SubmissionError, match="already on the leaderboard"):  # the same predictions again
        submit(pred, method="exact twice", config=CONFIG, dataset=synthetic_benchmark, store=fresh)
    _, withdrawal = withdraw(fresh, r2.entry.short_id, "withdrawn by its author")
    assert (api.root / "lora-wise/leaderboard-results" / f"withdrawals/{CONFIG}/{r2.entry.id}.json").is_file()
    restarted = HubDatasetStore("lora-wise/leaderboard-results", api=api)
    assert restarted.withdrawals() == [withdrawal]
    assert restarted.entries() == [r1.entry, r2.entry]  # the history keeps it
    assert ranked_entries(restarted, CONFIG, "test") == [r1.entry]
    with pytest.raises(SubmissionError, match="already withdrawn"):
        withdraw(restarted, r2.entry.id, "again")
    r3 = submit(pred, method="exact, resubmitted", config=CONFIG, dataset=synthetic_benchmark, store=restarted)
    assert (r3.rank, r3.total) == (1, 2)


def test_hub_store_failure_is_a_clear_error(tmp_path):
    api = FakeHfApi(tmp_path / "hub")
    api.fail_uploads = True
    store = HubDatasetStore("someone/results", api=api)
    with pytest.raises(HubConnectionError, match=r"could not reach the Hugging Face Hub to store the entry in "
                                                 r"hf://datasets/someone/results \(ConnectionError: the Hub is unreachable\)"):
        store.append(make_entry())
    assert store.entries() == []
