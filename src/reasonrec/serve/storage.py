"""SQLite access that survives transient faults and notices lost files.

Two failure classes, handled differently:

  transient   "attempt to write a readonly database", "disk I/O error", "database is locked":
              the file is still the one we opened, something got in its way. The connection is
              closed (one opened while the file was read-only stays read-only for its whole life,
              so reusing it would never recover) and the operation is retried with exponential
              backoff within a time budget; past it, `StorageUnavailable`.
  lost        the path no longer names the file we opened (deleted, or replaced by another
              file: a different device/inode). An open SQLite connection keeps writing into the
              unlinked inode and every "successful" commit is gone at the next start, so nothing
              is retried: the database is marked lost and every later operation is refused with
              `StorageUnavailable` (HTTP 503) until a restart.

`Guarded` is a mixin for `reasonrec.sqlite.LocalDB` subclasses; `problems()` is what /healthz
reports.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from contextlib import suppress
from pathlib import Path

from reasonrec.errors import ReasonrecError

log = logging.getLogger("reasonrec.serve.storage")

class StorageUnavailable(ReasonrecError):
    """A database the service needs cannot be used right now (HTTP 503)."""

    def __init__(self, message: str, *, lost: bool = False):
        super().__init__(message)
        self.lost = lost


def identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def check_writable(path: Path, label: str):
    """A clear start-up error (naming the file) instead of sqlite3's bare 'unable to open'."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReasonrecError(f"{label} {path}: cannot create its directory {parent} ({err.strerror})") from None
    if not parent.is_dir():
        raise ReasonrecError(f"{label} {path}: {parent} is not a directory")
    # SQLite creates -wal/-shm files beside the database, so the directory must be writable too
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReasonrecError(f"{label} {path}: directory {parent} is not writable (SQLite needs to create "
                             f"its -wal and -shm files there)")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ReasonrecError(f"{label} {path}: the file is not readable and writable by this user")
    if path.exists() and not path.is_file():
        raise ReasonrecError(f"{label} {path}: not a regular file")


class Guarded:
    """Mixin over LocalDB: identity check + reopen and retry with backoff. Subclasses run their
    SQL through `self.guard(fn, budget)`, fn taking the connection."""

    label = "database"
    request_budget = 0.5        # seconds a request-path operation may spend retrying
    background_budget = 10.0    # the same for the worker, which has no client waiting

    def _init_guard(self):
        self._identity = identity(self.path)
        self.lost: str | None = None
        self.last_error: tuple[float, str] | None = None
        self._guard_lock = threading.Lock()

    def check_identity(self):
        if self.lost:
            raise StorageUnavailable(self.lost, lost=True)
        now = identity(self.path)
        if now != self._identity:
            what = "was deleted" if now is None else "was replaced by another file"
            with self._guard_lock:
                self.lost = (f"{self.label} {self.path} {what} while the server was running; writes are "
                             f"refused until it is restored and the server restarted")
            log.error(self.lost)
            raise StorageUnavailable(self.lost, lost=True)

    def guard(self, fn, budget: float | None = None):
        budget = self.request_budget if budget is None else budget
        deadline = time.monotonic() + budget
        delay = 0.02
        while True:
            self.check_identity()
            try:
                out = fn(self._conn())
            except sqlite3.OperationalError as err:
                self.last_error = (time.time(), f"{type(err).__name__}: {err}")
                self.close()
                if time.monotonic() + delay > deadline:
                    log.warning("%s %s: %s (gave up after %.1f s of retries)", self.label, self.path, err, budget)
                    raise StorageUnavailable(f"{self.label} {self.path}: {err}") from err
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            # a file deleted or replaced while `fn` ran took the write with it: never acknowledge that
            self.check_identity()
            if self.last_error is not None:
                log.info("%s %s: working again after %s", self.label, self.path, self.last_error[1])
                self.last_error = None
            return out

    def problems(self) -> list[str]:
        """What /healthz reports: lost, or failing since the last operation (retries may still
        succeed; the next success clears it)."""
        with suppress(StorageUnavailable):
            self.check_identity()
        if self.lost:
            return [self.lost]
        if self.last_error is not None:
            when = time.strftime("%H:%M:%S", time.gmtime(self.last_error[0]))
            return [f"{self.label} {self.path}: {self.last_error[1]} (last seen {when} UTC; retrying)"]
        return []


def _open_error(label: str, path: Path, err: Exception) -> ReasonrecError:
    return ReasonrecError(f"{label} {path}: cannot open it as an SQLite database ({err})")


def open_db(cls, path: Path, label: str):
    """cls(path) with the start-up checks and errors that name the file."""
    check_writable(path, label)
    try:
        return cls(path)
    except sqlite3.DatabaseError as err:
        raise _open_error(label, path, err) from None


def _store_class():
    from reasonrec.explain.store import ExplanationStore

    class ServingStore(Guarded, ExplanationStore):
        """The explanation store as the service uses it: guarded reads and writes, and a small
        `serve_meta` table (its own id, the state DBs linked to it) for the start-up checks."""

        label = "explanation store"

        def __init__(self, path):
            super().__init__(path)
            self._conn().execute("CREATE TABLE IF NOT EXISTS serve_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._init_guard()

        def put_many(self, entries):
            entries = list(entries)
            return self.guard(lambda con: ExplanationStore.put_many(self, entries), self.background_budget)

        def get_many(self, keys, include_failed: bool = True):
            return self.guard(lambda con: ExplanationStore.get_many(self, keys, include_failed),
                              self.background_budget)

        def meta(self, key: str, default: str | None = None) -> str | None:
            return meta_get(self._conn(), "serve_meta", key, default)

        def set_meta(self, key: str, value: str):
            meta_set(self._conn(), "serve_meta", key, value)

    return ServingStore


def meta_get(con, table: str, key: str, default: str | None = None) -> str | None:
    row = con.execute(f"SELECT value FROM {table} WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def meta_set(con, table: str, key: str, value: str):
    con.execute(f"INSERT INTO {table} (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value))


def open_serving_files(store_path: Path, state_path: Path):
    """Open (or create) the explanation store and the state DB and check that they belong together.

    Each records the other's random id when the service first runs over them; a later start that
    finds the partner missing or replaced refuses with a clear error, because going on would
    silently serve an empty event log (histories back to the bundle's) or drop every explanation
    written for the current histories."""
    import uuid

    from reasonrec.serve.events import StateDB

    store_path, state_path = Path(store_path), Path(state_path)
    existed = {p: p.exists() for p in (store_path, state_path)}
    store = state = None
    try:
        store = open_db(_store_class(), store_path, "explanation store")
        state = open_db(StateDB, state_path, "state DB")
        store_id = store.meta("store_id")
        if store_id is None:
            store_id = uuid.uuid4().hex
            store.set_meta("store_id", store_id)
        state_id = state.meta("state_id")
        if state_id is None:
            state_id = uuid.uuid4().hex
            state.set_meta("state_id", state_id)
        state_key = f"state:{state_path.resolve()}"
        linked_state = store.meta(state_key)
        if linked_state is not None and linked_state != state_id:
            what = "is missing" if not existed[state_path] else "was replaced by another file"
            raise ReasonrecError(f"state DB {state_path} {what}: the explanation store {store_path} was served with "
                                 f"an earlier one (its event log and queue would be lost silently). Restore it, "
                                 f"or start with a new --state path to begin an empty event log")
        linked_store = state.meta("store_id")
        if linked_store is not None and linked_store != store_id:
            what = "is missing" if not existed[store_path] else "was replaced by another file"
            raise ReasonrecError(f"explanation store {store_path} {what}: the state DB {state_path} was served "
                                 f"with an earlier one (the explanations it lists would be gone). Restore it, or "
                                 f"start with a new --state path")
        store.set_meta(state_key, state_id)
        state.set_meta("store_id", store_id)
        return store, state
    except BaseException:
        for db in (store, state):
            if db is not None:
                db.close()
        # remove only what this call created, so the next start sees the same situation
        for path, was in existed.items():
            if not was:
                for suffix in ("", "-wal", "-shm"):
                    with suppress(OSError):
                        os.unlink(f"{path}{suffix}")
        raise
