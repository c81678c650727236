"""Where leaderboard entries live: an append-only SQLite file, or a Hub dataset repo.

Both stores keep two kinds of records, and never change or remove either:

* **entries** (``Entry``): one per accepted submission;
* **withdrawals** (``Withdrawal``): one per withdrawn entry, with its reason and time.  A
  withdrawn entry leaves the ranking and stays in the history.

Every write checks the record first (``Entry.check``: the character policy of
``lora_wise.text``, predictions that are dataset sizes, finite metrics), and an entry whose
``duplicate_key`` (config, split, every draw's predictions) matches an entry that is not
withdrawn is refused.

``SQLiteStore`` (the default) keeps them in ``<cache>/leaderboard/leaderboard.sqlite``
(``--db`` or ``$LORA_WISE_LEADERBOARD_DB`` choose another file).  It is safe for many
processes at once: WAL journal, a busy timeout, every write -- the duplicate check
included -- in one ``BEGIN IMMEDIATE`` transaction, one connection per operation.
Triggers refuse ``UPDATE`` and ``DELETE`` on both tables: the file only grows.

``HubDatasetStore`` keeps each entry as ``entries/<config>/<id>.json`` and each withdrawal
as ``withdrawals/<config>/<entry id>.json`` in a Hub dataset repo, so a public Space (whose
disk is wiped on restart) keeps its results; ``$LORA_WISE_LEADERBOARD_REPO`` (or
``--results-repo``) selects it.  It talks to the Hub only through ``huggingface_hub.HfApi``
(``create_repo``, ``upload_file``, ``list_repo_files``, ``hf_hub_download``).  Records never
change once written, so each file is downloaded once per process.  Its duplicate check reads
the repo before the upload (a Space runs one submission at a time).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from lora_wise import jsonio
from lora_wise.cache import cache_dir
from lora_wise.errors import StoreError, SubmissionError
from lora_wise.hub import check_repo_id, repo_files, talking_to_hub
from lora_wise.text import check_text

from .entries import Entry, Withdrawal, active, format_metric

DB_ENV = "LORA_WISE_LEADERBOARD_DB"
REPO_ENV = "LORA_WISE_LEADERBOARD_REPO"
#: How long a writer waits for another one to finish before giving up (ms).
BUSY_TIMEOUT_MS = 60_000
#: 1: entries only; 2: withdrawals, the protocol and details (draws, source) of results records.
SCHEMA_VERSION = 2


@runtime_checkable
class Store(Protocol):
    """Append entries and withdrawals, read them back; nothing is ever changed or removed."""

    location: str

    def append(self, entry: Entry) -> Entry: ...

    def entries(self, config: str | None = None, split: str | None = None) -> list[Entry]: ...

    def append_withdrawal(self, withdrawal: Withdrawal) -> Withdrawal: ...

    def withdrawals(self, config: str | None = None) -> list[Withdrawal]: ...


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


def ranked_entries(store: Store, config: str | None = None, split: str | None = None) -> list[Entry]:
    """The entries of ``store`` that are not withdrawn (what is ranked)."""
    return active(store.entries(config, split), store.withdrawals(config))


def duplicate_error(entry: Entry, existing: Entry) -> SubmissionError:
    return SubmissionError(
        f"the same predictions for {entry.config}/{entry.split} are already on the leaderboard as entry "
        f"{existing.short_id} ({existing.method!r}, {existing.date} UTC, MAE {format_metric('mae', existing.mae)}); "
        f"a method is entered once -- withdraw that entry first (`lora-wise leaderboard withdraw "
        f"{existing.short_id} --reason ...`) to enter it again")


def find_entry(entries: list[Entry], given: str) -> Entry:
    """The entry whose id is ``given`` or starts with it (at least 8 characters, as ``show`` prints them)."""
    key = (given or "").strip().lower()
    if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
        raise SubmissionError(f"{given!r} is not an entry id; give the id `lora-wise leaderboard show` prints "
                              f"(8 or more hexadecimal characters)")
    found = [e for e in entries if e.id.startswith(key)]
    if not found:
        raise SubmissionError(f"no entry {given!r} on the leaderboard; `lora-wise leaderboard show --all` lists "
                              f"every entry with its id")
    if len(found) > 1:
        raise SubmissionError(f"{len(found)} entries start with {given!r}; give more of the id")
    return found[0]


# --------------------------------------------------------------------------- SQLite

_COLUMNS = ("id", "time", "method", "authors", "link", "config", "split", "dataset", "reference",
            "mae", "mape", "accuracy", "metrics", "sha256", "n_models", "predictions",
            "protocol", "details", "duplicate_key")
#: Entry fields kept together as JSON in the ``details`` column (schema 2).
_DETAILS = ("draws", "source", "format")
_WITHDRAWAL_COLUMNS = ("id", "entry_id", "config", "time", "reason")

_APPEND_ONLY = """CREATE TRIGGER IF NOT EXISTS {table}_append_only_{action} BEFORE {verb} ON {table}
    BEGIN SELECT RAISE(ABORT, 'the leaderboard is append-only: {noun} cannot be {past}'); END"""

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
    _APPEND_ONLY.format(table="entries", action="update", verb="UPDATE", noun="entries", past="changed"),
    _APPEND_ONLY.format(table="entries", action="delete", verb="DELETE", noun="entries", past="deleted"),
    """CREATE TABLE IF NOT EXISTS withdrawals (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    entry_id    TEXT NOT NULL UNIQUE REFERENCES entries (id),
    config      TEXT NOT NULL,
    time        TEXT NOT NULL,
    reason      TEXT NOT NULL)""",
    _APPEND_ONLY.format(table="withdrawals", action="update", verb="UPDATE", noun="withdrawals", past="changed"),
    _APPEND_ONLY.format(table="withdrawals", action="delete", verb="DELETE", noun="withdrawals", past="deleted"),
)
#: Columns schema 2 adds to a schema-1 ``entries`` table (ALTER TABLE ADD COLUMN keeps every row).
_ADDED_COLUMNS = {"protocol": "TEXT NOT NULL DEFAULT 'standard'", "details": "TEXT NOT NULL DEFAULT '{}'",
                  "duplicate_key": "TEXT NOT NULL DEFAULT ''"}


class SQLiteStore:
    """Append-only entries and withdrawals in one SQLite file, safe for concurrent processes and threads."""

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

    @contextmanager
    def _transaction(self, connection: sqlite3.Connection):
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

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
            with self._transaction(connection):
                for statement in _SCHEMA:
                    connection.execute(statement)
                present = {row[1] for row in connection.execute("PRAGMA table_info(entries)")}
                for column, declaration in _ADDED_COLUMNS.items():
                    if column not in present:
                        connection.execute(f"ALTER TABLE entries ADD COLUMN {column} {declaration}")
                connection.execute("CREATE INDEX IF NOT EXISTS entries_by_key ON entries (config, split, duplicate_key)")
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._ready = True

    @staticmethod
    def _entry(row: tuple) -> Entry:
        data = dict(zip(_COLUMNS, row))
        data["metrics"] = jsonio.loads(data["metrics"])
        data["predictions"] = jsonio.loads(data["predictions"])
        data["reference"] = bool(data["reference"])
        data.update(jsonio.loads(data.pop("details")))
        for column in ("mae", "mape", "accuracy", "duplicate_key"):
            data.pop(column)
        return Entry.from_dict(data)

    def append(self, entry: Entry) -> Entry:
        """Insert one entry in its own ``BEGIN IMMEDIATE`` transaction; refuses a duplicate id or duplicate
        predictions (an entry of the same config, split and predictions that is not withdrawn)."""
        entry.check()
        values = entry.to_dict()
        values["metrics"] = jsonio.dumps(entry.metrics, sort_keys=True)
        values["predictions"] = jsonio.dumps(entry.predictions)
        values["reference"] = int(entry.reference)
        values["details"] = jsonio.dumps({k: values[k] for k in _DETAILS}, sort_keys=True)
        values["duplicate_key"] = key = entry.duplicate_key()
        values.update(mae=entry.mae, mape=entry.mape, accuracy=entry.accuracy)
        with self._connect() as connection:
            self._ensure_schema(connection)
            with self._transaction(connection):
                if connection.execute("SELECT 1 FROM entries WHERE id = ?", (entry.id,)).fetchone():
                    raise StoreError(f"entry {entry.id} is already stored in {self.location}; entries are never "
                                     f"replaced -- submit again for a new entry")
                # Rows stored before schema 2 have no key yet: compared by computing theirs.
                rows = connection.execute(
                    f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE config = ? AND split = ? "
                    f"AND duplicate_key IN (?, '') AND id NOT IN (SELECT entry_id FROM withdrawals) "
                    f"ORDER BY seq", (entry.config, entry.split, key)).fetchall()
                same = next((e for e in map(self._entry, rows) if e.duplicate_key() == key), None)
                if same is not None:
                    raise duplicate_error(entry, same)
                connection.execute(f"INSERT INTO entries ({', '.join(_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                                   [values[c] for c in _COLUMNS])
        return entry

    def entries(self, config: str | None = None, split: str | None = None) -> list[Entry]:
        """Every entry, withdrawn ones included, in the order they were stored; optionally of one config and split."""
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
        return [self._entry(row) for row in rows]

    def append_withdrawal(self, withdrawal: Withdrawal) -> Withdrawal:
        """Insert one withdrawal; refuses one for an entry that is not stored or already withdrawn."""
        withdrawal.check()
        with self._connect() as connection:
            self._ensure_schema(connection)
            with self._transaction(connection):
                if connection.execute("SELECT 1 FROM entries WHERE id = ?", (withdrawal.entry_id,)).fetchone() is None:
                    raise SubmissionError(f"no entry {withdrawal.entry_id} in {self.location} to withdraw")
                earlier = connection.execute("SELECT time FROM withdrawals WHERE entry_id = ?",
                                             (withdrawal.entry_id,)).fetchone()
                if earlier is not None:
                    raise SubmissionError(f"entry {withdrawal.entry_id[:8]} was already withdrawn on "
                                          f"{earlier[0][:16].replace('T', ' ')} UTC; nothing to do")
                values = withdrawal.to_dict()
                connection.execute(f"INSERT INTO withdrawals ({', '.join(_WITHDRAWAL_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' for _ in _WITHDRAWAL_COLUMNS)})",
                                   [values[c] for c in _WITHDRAWAL_COLUMNS])
        return withdrawal

    def withdrawals(self, config: str | None = None) -> list[Withdrawal]:
        """Every withdrawal, oldest first (optionally of one config)."""
        if not self.path.exists():
            return []
        query = f"SELECT {', '.join(_WITHDRAWAL_COLUMNS)} FROM withdrawals"
        params: tuple = ()
        if config is not None:
            query, params = query + " WHERE config = ?", (config,)
        with self._connect() as connection:
            self._ensure_schema(connection)
            rows = connection.execute(query + " ORDER BY seq", params).fetchall()
        return [Withdrawal(**dict(zip(_WITHDRAWAL_COLUMNS, row))) for row in rows]

    def __repr__(self) -> str:
        return f"SQLiteStore({self.location!r})"


# --------------------------------------------------------------------------- Hub dataset repo

class HubDatasetStore:
    """Entries and withdrawals as JSON files under ``entries/`` and ``withdrawals/`` of a Hub dataset repo."""

    prefix = "entries"
    withdrawals_prefix = "withdrawals"

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
        self._cache: dict[str, Entry | Withdrawal] = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # one check-then-upload at a time in this process

    def path_of(self, entry: Entry) -> str:
        return f"{self.prefix}/{entry.config}/{entry.id}.json"

    def withdrawal_path(self, withdrawal: Withdrawal) -> str:
        return f"{self.withdrawals_prefix}/{withdrawal.config}/{withdrawal.entry_id}.json"

    def _upload(self, path: str, data: str, message: str) -> None:
        if not self._created:
            self.api.create_repo(self.repo_id, repo_type="dataset", exist_ok=True, private=self.private)
            self._created = True
        self.api.upload_file(path_or_fileobj=data.encode(), path_in_repo=path, repo_id=self.repo_id,
                             repo_type="dataset", commit_message=message)

    def append(self, entry: Entry) -> Entry:
        """Upload the entry as a new file (one commit); an existing path or duplicate predictions are refused."""
        entry.check()
        path = self.path_of(entry)
        with self._writing, talking_to_hub(f"store the entry in {self.location}"):
            if path in self._files():
                raise StoreError(f"entry {entry.id} is already stored in {self.location}; entries are never "
                                 f"replaced -- submit again for a new entry")
            key = entry.duplicate_key()
            same = next((e for e in ranked_entries(self, entry.config, entry.split) if e.duplicate_key() == key), None)
            if same is not None:
                raise duplicate_error(entry, same)
            self._upload(path, entry.to_json(), f"Leaderboard: {entry.method} on {entry.config}/{entry.split}")
        with self._lock:
            self._cache[path] = entry
        return entry

    def append_withdrawal(self, withdrawal: Withdrawal) -> Withdrawal:
        """Upload the withdrawal as a new file; refused for an unknown or already withdrawn entry."""
        withdrawal.check()
        path = self.withdrawal_path(withdrawal)
        with self._writing, talking_to_hub(f"store the withdrawal in {self.location}"):
            if not any(e.id == withdrawal.entry_id for e in self.entries(withdrawal.config or None)):
                raise SubmissionError(f"no entry {withdrawal.entry_id} in {self.location} to withdraw")
            earlier = next((w for w in self.withdrawals() if w.entry_id == withdrawal.entry_id), None)
            if earlier is not None:
                raise SubmissionError(f"entry {withdrawal.entry_id[:8]} was already withdrawn on {earlier.date} UTC; "
                                      f"nothing to do")
            self._upload(path, withdrawal.to_json(), f"Leaderboard: withdraw entry {withdrawal.entry_id[:8]}")
        with self._lock:
            self._cache[path] = withdrawal
        return withdrawal

    def _files(self, prefix: str | None = None) -> list[str]:
        prefix = prefix or self.prefix
        files = repo_files(self.api, self.repo_id, repo_type="dataset")
        return sorted(f for f in files if f.startswith(prefix + "/") and f.endswith(".json"))

    def _read(self, names: list[str], parse) -> list:
        out = []
        for name in names:
            with self._lock:
                record = self._cache.get(name)
            if record is None:
                local = self.api.hf_hub_download(self.repo_id, name, repo_type="dataset",
                                                  cache_dir=str(cache_dir("leaderboard", "hub")))
                record = parse(Path(local).read_text())
                with self._lock:
                    self._cache[name] = record
            out.append(record)
        return out

    def entries(self, config: str | None = None, split: str | None = None) -> list[Entry]:
        """Every entry file of the repo (downloaded once each), withdrawn ones included, oldest first."""
        with talking_to_hub(f"read the leaderboard from {self.location}"):
            files = self._files()
            if config is not None:
                files = [f for f in files if f.startswith(f"{self.prefix}/{config}/")]
            out = self._read(files, Entry.from_json)
        out = [e for e in out if (config is None or e.config == config) and (split is None or e.split == split)]
        return sorted(out, key=lambda e: e.time)

    def withdrawals(self, config: str | None = None) -> list[Withdrawal]:
        """Every withdrawal file of the repo, oldest first (optionally of one config)."""
        with talking_to_hub(f"read the withdrawals from {self.location}"):
            files = self._files(self.withdrawals_prefix)
            if config is not None:
                files = [f for f in files if f.startswith(f"{self.withdrawals_prefix}/{config}/")]
            out = self._read(files, Withdrawal.from_json)
        return sorted(out, key=lambda w: w.time)

    def __repr__(self) -> str:
        return f"HubDatasetStore({self.repo_id!r})"


def withdraw(store: Store, entry_id: str, reason: str) -> tuple[Entry, Withdrawal]:
    """Append a withdrawal of the entry ``entry_id`` (or the unique entry it starts) with ``reason``.

    The reason follows the character policy; the entry stays stored and leaves the ranking.
    Raises ``TextPolicyError`` or ``SubmissionError`` (an unknown, ambiguous or already withdrawn
    id) and writes nothing then.
    """
    reason = check_text(reason, "reason", required=True)
    entry = find_entry(store.entries(), entry_id)
    return entry, store.append_withdrawal(Withdrawal(entry_id=entry.id, reason=reason, config=entry.config))

