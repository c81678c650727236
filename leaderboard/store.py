"""Where leaderboard entries live: an append-only SQLite file, or a Hub dataset repo.

``SQLiteStore`` (the default) keeps every entry as one row of one table in
``<cache>/leaderboard/leaderboard.sqlite`` (``--db`` or ``$LORA_WISE_LEADERBOARD_DB``
choose another file).  It is safe for many processes at once: WAL journal, a
busy timeout, every write in a ``BEGIN IMMEDIATE`` transaction, one connection
per operation.  Triggers refuse ``UPDATE`` and ``DELETE``: the file only grows.

``HubDatasetStore`` keeps each entry as ``entries/<config>/<id>.json`` in a Hub
dataset repo, so a public Space (whose disk is wiped on restart) keeps its
results; ``$LORA_WISE_LEADERBOARD_REPO`` (or ``--results-repo``) selects it.
It talks to the Hub only through ``huggingface_hub.HfApi`` (``create_repo``,
``upload_file``, ``list_repo_files``, ``hf_hub_download``).  Entries never
change once written, so each file is downloaded once per process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from lora_wise.cache import cache_dir
from lora_wise.errors import StoreError
from lora_wise.hub import check_repo_id, talking_to_hub

from .entries import Entry

DB_ENV = "LORA_WISE_LEADERBOARD_DB"
REPO_ENV = "LORA_WISE_LEADERBOARD_REPO"
#: How long a writer waits for another one to finish before giving up (ms).
BUSY_TIMEOUT_MS = 60_000
SCHEMA_VERSION = 1


@runtime_checkable
class Store(Protocol):
    """Append entries, read them back; nothing is ever changed or removed."""

    location: str

    def append(self, entry: Entry) -> Entry: ...

    def entries(self, config: str | None = None, split: str | None = None) -> list[Entry]: ...


def default_db_path() -> Path:
    """``$LORA_WISE_LEADERBOARD_DB`` or ``<cache>/leaderboard/leaderboard.sqlite``."""
    env = os.environ.get(DB_ENV)
    return Path(env).expanduser() if env else cache_dir("leaderboard") / "leaderboard.sqlite"


def open_store(db: str | os.PathLike | None = None, repo: str | None = None, api=None) -> "Store":
    """The store the user asked for: a Hub repo (``repo`` or ``$LORA_WISE_LEADERBOARD_REPO``), else SQLite."""
    if db is not None and repo is not None:
        raise StoreError("give either a SQLite file (--db) or a Hub results repo (--results-repo), not both")
    repo = repo if db is not None or repo is not None else os.environ.get(REPO_ENV) or None
    if repo:
        return HubDatasetStore(repo, api=api)
    return SQLiteStore(db if db is not None else default_db_path())


# --------------------------------------------------------------------------- SQLite

_COLUMNS = ("id", "time", "method", "authors", "link", "config", "split", "dataset", "reference",
            "mae", "mape", "accuracy", "metrics", "sha256", "n_models", "predictions")

#: One statement each: ``executescript`` would commit the ``BEGIN IMMEDIATE`` around them.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    time        TEXT NOT NULL,
    method      TEXT NOT NULL,
    authors     TEXT NOT NULL,
    link        TEXT NOT NULL,
    config      TEXT NOT NULL,
    split       TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    reference   INTEGER NOT NULL,
    mae         REAL NOT NULL,
    mape        REAL NOT NULL,
    accuracy    REAL NOT NULL,
    metrics     TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    n_models    INTEGER NOT NULL,
    predictions TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS entries_by_board ON entries (config, split, mae, mape, time)",
    """CREATE TRIGGER IF NOT EXISTS entries_append_only_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the leaderboard is append-only: entries cannot be changed'); END""",
    """CREATE TRIGGER IF NOT EXISTS entries_append_only_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the leaderboard is append-only: entries cannot be deleted'); END""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


class SQLiteStore:
    """Append-only entries in one SQLite file, safe for concurrent processes and threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        self._ready = False
        self._lock = threading.Lock()

    @contextmanager
    def _connect(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the leaderboard database {self.location} ({exc}); pass --db with a "
                             f"writable path or set ${DB_ENV}") from None
        try:
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            yield connection
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise StoreError(f"{self.location} is not a leaderboard database ({exc}); pass --db with "
                                 f"another path (the file is left untouched)") from None
            raise
        finally:
            connection.close()

    def _ensure_schema(self, connection: sqlite3.Connection) -> None:
        if self._ready:
            return
        with self._lock:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.location} was written by a newer lora-wise (schema {version}); "
                                 f"upgrade lora-wise to read it")
            if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            self._ready = True

    def append(self, entry: Entry) -> Entry:
        """Insert one entry in its own ``BEGIN IMMEDIATE`` transaction; refuses a duplicate id."""
        values = entry.to_dict()
        values["metrics"] = json.dumps(entry.metrics, sort_keys=True)
        values["predictions"] = json.dumps(entry.predictions)
        values["reference"] = int(entry.reference)
        values.update(mae=entry.mae, mape=entry.mape, accuracy=entry.accuracy)
        with self._connect() as connection:
            self._ensure_schema(connection)
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute(f"INSERT INTO entries ({', '.join(_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                                   [values[c] for c in _COLUMNS])
                connection.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                connection.execute("ROLLBACK")
                raise StoreError(f"entry {entry.id} is already stored in {self.location} ({exc}); entries "
                                 f"are never replaced -- submit again for a new entry") from None
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return entry

    def entries(self, config: str | None = None, split: str | None = None) -> list[Entry]:
        """Entries in the order they were stored, optionally of one config and split."""
        if not self.path.exists():
            return []
        where, params = [], []
        for column, value in (("config", config), ("split", split)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        query = (f"SELECT {', '.join(_COLUMNS)} FROM entries"
                 + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq")
        with self._connect() as connection:
            self._ensure_schema(connection)
            rows = connection.execute(query, params).fetchall()
        out = []
        for row in rows:
            data = dict(zip(_COLUMNS, row))
            data["metrics"] = json.loads(data["metrics"])
            data["predictions"] = json.loads(data["predictions"])
            data["reference"] = bool(data["reference"])
            for metric in ("mae", "mape", "accuracy"):
                data.pop(metric)
            out.append(Entry.from_dict(data))
        return out

    def __repr__(self) -> str:
        return f"SQLiteStore({self.location!r})"


# --------------------------------------------------------------------------- Hub dataset repo

class HubDatasetStore:
    """Entries as JSON files under ``entries/`` of a Hub dataset repo."""

    prefix = "entries"

    def __init__(self, repo_id: str, api=None, token: str | None = None, private: bool | None = None):
        repo_id = check_repo_id(repo_id, "results repo")
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        self.api = api
        self.repo_id = repo_id
        self.private = private
        self.location = f"hf://datasets/{repo_id}"
        self._created = False
        self._cache: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def path_of(self, entry: Entry) -> str:
        return f"{self.prefix}/{entry.config}/{entry.id}.json"

    def append(self, entry: Entry) -> Entry:
        """Upload the entry as a new file (one commit); an existing path is never overwritten."""
        path = self.path_of(entry)
        with talking_to_hub(f"store the entry in {self.location}"):
            if not self._created:
                self.api.create_repo(self.repo_id, repo_type="dataset", exist_ok=True, private=self.private)
                self._created = True
            if path in self._files():
                raise StoreError(f"entry {entry.id} is already stored in {self.location}; entries are never "
                                 f"replaced -- submit again for a new entry")
            self.api.upload_file(path_or_fileobj=entry.to_json().encode(), path_in_repo=path,
                                 repo_id=self.repo_id, repo_type="dataset",
                                 commit_message=f"Leaderboard: {entry.method} on {entry.config}/{entry.split}")
        with self._lock:
            self._cache[path] = entry
        return entry

    def _files(self) -> list[str]:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            files = self.api.list_repo_files(self.repo_id, repo_type="dataset")
        except RepositoryNotFoundError:
            return []
        return sorted(f for f in files if f.startswith(self.prefix + "/") and f.endswith(".json"))

    def entries(self, config: str | None = None, split: str | None = None) -> list[Entry]:
        """Every entry file of the repo (downloaded once each), oldest first."""
        with talking_to_hub(f"read the leaderboard from {self.location}"):
            files = self._files()
            if config is not None:
                files = [f for f in files if f.startswith(f"{self.prefix}/{config}/")]
            out = []
            for name in files:
                with self._lock:
                    entry = self._cache.get(name)
                if entry is None:
                    local = self.api.hf_hub_download(self.repo_id, name, repo_type="dataset",
                                                      cache_dir=str(cache_dir("leaderboard", "hub")))
                    entry = Entry.from_json(Path(local).read_text())
                    with self._lock:
                        self._cache[name] = entry
                out.append(entry)
        out = [e for e in out if (config is None or e.config == config) and (split is None or e.split == split)]
        return sorted(out, key=lambda e: e.time)

    def __repr__(self) -> str:
        return f"HubDatasetStore({self.repo_id!r})"
