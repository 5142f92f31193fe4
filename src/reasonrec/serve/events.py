"""The service's durable state: the event log, the explanation job queue and the served-pair index.

One SQLite file in WAL mode (separate from the explanation store, which stays a pure key -> text
cache). Three tables:

  events  every interaction posted to /v1/events, append-only; replayed at startup so the
          in-memory histories survive a restart;
  jobs    the queue. `refresh` jobs (one per event: "the user's history changed") are expanded by
          the worker into `pair` jobs (user, item, history) = "write the explanations of this
          candidate under this history". A job is `pending` until the worker marks it `done`,
          `superseded` (the user's history moved on before it ran) or `failed` (the backend kept
          erroring). There is no `running` state: a job is claimed by reading it and finished by
          one transaction, so a crash at any point leaves it pending and a restart picks it up;
          the explanation store makes the re-run free for the rows that were already written.
  pairs   (user, item, history signature) -> the store keys of its explanations: how the server
          finds, at startup, the explanations that were written for the users' current histories.

Every multi-row change is one transaction, so the queue never sees half an event. Access goes
through `storage.Guarded`: transient SQLite errors are retried on a fresh connection, and a file
deleted or replaced under the running server is refused (503) instead of written into the void.
A fourth table, `meta`, holds the ids that tie this file to its explanation store (see
`storage.open_serving_files`).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from reasonrec.serve.storage import Guarded, meta_get, meta_set
from reasonrec.sqlite import LocalDB


# a job that was superseded (the history moved on, then came back to the same items) is revived;
# done, pending and failed jobs are left as they are
_REVIVE = (" ON CONFLICT(kind, user_id, item_id, sig) DO UPDATE SET status='pending', attempts=0, "
           "updated=excluded.updated WHERE status='superseded'")


def history_sig(history: list[str]) -> str:
    """A short, stable id of a history (item ids, oldest first)."""
    return hashlib.sha1(json.dumps(list(history)).encode()).hexdigest()[:16]


@dataclass
class Job:
    id: int
    kind: str            # refresh | pair
    user_id: str
    item_id: str | None
    history: list[str]
    sig: str
    attempts: int


class StateDB(Guarded, LocalDB):
    label = "state DB"

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._write_lock = threading.Lock()   # one writer at a time inside this process
        con = self._conn()
        con.executescript("""
            CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
                rating REAL, label INTEGER, timestamp INTEGER NOT NULL, received REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS jobs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, user_id TEXT NOT NULL,
                item_id TEXT NOT NULL DEFAULT '', history TEXT NOT NULL, sig TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
                error TEXT, created REAL NOT NULL, updated REAL NOT NULL);
            CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique ON jobs(kind, user_id, item_id, sig);
            CREATE INDEX IF NOT EXISTS jobs_pending ON jobs(status, kind, id);
            CREATE TABLE IF NOT EXISTS pairs (
                user_id TEXT NOT NULL, item_id TEXT NOT NULL, sig TEXT NOT NULL, model_id TEXT NOT NULL,
                keys TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (user_id, sig, item_id));
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """)
        self._init_guard()

    def _tx(self, fn, budget: float | None = None):
        def attempt(con):
            con.execute("BEGIN IMMEDIATE")
            try:
                out = fn(con)
                con.execute("COMMIT")
                return out
            except BaseException:
                with suppress(sqlite3.Error):      # a failed COMMIT may have ended the transaction
                    con.execute("ROLLBACK")
                raise

        with self._write_lock:
            return self.guard(attempt, budget)

    def _read(self, sql: str, params=(), budget: float | None = None) -> list:
        return self.guard(lambda con: con.execute(sql, params).fetchall(), budget)

    def meta(self, key: str, default: str | None = None) -> str | None:
        return meta_get(self._conn(), "meta", key, default)

    def set_meta(self, key: str, value: str):
        meta_set(self._conn(), "meta", key, value)

    # --- events ----------------------------------------------------------------------------

    def append_event(self, user_id: str, item_id: str, rating, label, timestamp: int,
                     new_history: list[str]) -> int:
        """Log the event and queue the refresh of the user's explanations, atomically."""
        now = time.time()

        def write(con):
            cur = con.execute("INSERT INTO events (user_id, item_id, rating, label, timestamp, received) "
                              "VALUES (?,?,?,?,?,?)", (user_id, item_id, rating, label, timestamp, now))
            con.execute("INSERT INTO jobs (kind, user_id, item_id, history, sig, created, updated) "
                        "VALUES ('refresh', ?, '', ?, ?, ?, ?)" + _REVIVE,
                        (user_id, json.dumps(new_history), history_sig(new_history), now, now))
            return cur.lastrowid

        return self._tx(write)

    def events(self):
        """(user_id, item_id) of every logged event, in arrival order."""
        return self._read("SELECT user_id, item_id FROM events ORDER BY id")

    def events_after(self, last_id: int) -> list[tuple[int, str, str]]:
        """(id, user_id, item_id) of the events logged after `last_id`, in order."""
        return self._read("SELECT id, user_id, item_id FROM events WHERE id>? ORDER BY id", (last_id,))

    def pairs_after(self, last_rowid: int) -> list[tuple[int, str, str, str, dict]]:
        """(rowid, user, item, sig, {task: key}) of the served pairs written after `last_rowid`."""
        rows = self._read("SELECT rowid, user_id, item_id, sig, keys FROM pairs WHERE rowid>? ORDER BY rowid",
                          (last_rowid,), self.background_budget)
        return [(r, u, i, s, json.loads(k)) for r, u, i, s, k in rows]

    def pending_pairs_after(self, last_id: int) -> list[tuple[int, str, str, str]]:
        return self._read("SELECT id, user_id, item_id, sig FROM jobs WHERE id>? AND kind='pair' AND status='pending' "
                          "ORDER BY id", (last_id,), self.background_budget)

    def last_ids(self) -> tuple[int, int]:
        """(largest pair rowid, largest job id): where a Follower starts."""
        row = self._read("SELECT (SELECT IFNULL(MAX(rowid), 0) FROM pairs), (SELECT IFNULL(MAX(id), 0) FROM jobs)")
        return row[0][0], row[0][1]

    def event_count(self) -> int:
        return self._read("SELECT COUNT(*) FROM events")[0][0]

    # --- jobs ------------------------------------------------------------------------------

    def enqueue_pairs(self, user_id: str, history: list[str], item_ids: list[str], done_job: int | None = None) -> int:
        """Queue pair jobs (duplicates are ignored) and, in the same transaction, finish the
        refresh job that produced them."""
        now, sig, hist = time.time(), history_sig(history), json.dumps(list(history))

        def write(con):
            before = con.total_changes
            con.executemany("INSERT INTO jobs (kind, user_id, item_id, history, sig, created, updated) "
                            "VALUES ('pair', ?, ?, ?, ?, ?, ?)" + _REVIVE,
                            [(user_id, i, hist, sig, now, now) for i in item_ids])
            added = con.total_changes - before
            if done_job is not None:
                con.execute("UPDATE jobs SET status='done', updated=? WHERE id=?", (now, done_job))
            return added

        return self._tx(write, self.background_budget)

    def next_jobs(self, kind: str, limit: int) -> list[Job]:
        rows = self._read("SELECT id, kind, user_id, item_id, history, sig, attempts FROM jobs "
                          "WHERE status='pending' AND kind=? ORDER BY id LIMIT ?", (kind, limit),
                          self.background_budget)
        return [Job(r[0], r[1], r[2], r[3] or None, json.loads(r[4]), r[5], r[6]) for r in rows]

    def pending_pairs(self) -> list[tuple[str, str, str]]:
        return self._read("SELECT user_id, item_id, sig FROM jobs WHERE status='pending' AND kind='pair'",
                          budget=self.background_budget)

    def finish(self, done: list[int] = (), superseded: list[int] = (), retry: list[tuple[int, str]] = (),
               failed: list[tuple[int, str]] = (), pairs: list[tuple] = ()):
        """One transaction: pair rows written, jobs marked. `pairs`: (user, item, sig, model_id, keys)."""
        now = time.time()

        def write(con):
            if pairs:
                con.executemany("INSERT OR REPLACE INTO pairs (user_id, item_id, sig, model_id, keys, created) "
                                "VALUES (?,?,?,?,?,?)", [(*p[:4], json.dumps(p[4]), now) for p in pairs])
            con.executemany("UPDATE jobs SET status='done', updated=? WHERE id=?", [(now, j) for j in done])
            con.executemany("UPDATE jobs SET status='superseded', updated=? WHERE id=?",
                            [(now, j) for j in superseded])
            con.executemany("UPDATE jobs SET attempts=attempts+1, error=?, updated=? WHERE id=?",
                            [(e[:500], now, j) for j, e in retry])
            con.executemany("UPDATE jobs SET status='failed', attempts=attempts+1, error=?, updated=? WHERE id=?",
                            [(e[:500], now, j) for j, e in failed])

        self._tx(write, self.background_budget)

    def revive_failed(self, older_than: float, error: str = "backend error") -> list[tuple[str, str, str]]:
        """Give jobs that failed on `error` (a backend that kept failing) a fresh set of attempts
        once they have rested `older_than` seconds: the backend may be back. Returns the revived
        pair jobs' (user, item, sig)."""
        now = time.time()

        def write(con):
            return con.execute("UPDATE jobs SET status='pending', attempts=0, updated=? WHERE status='failed' "
                               "AND error=? AND updated<=? RETURNING kind, user_id, item_id, sig",
                               (now, error, now - older_than)).fetchall()

        rows = self._tx(write, self.background_budget)
        return [(u, i, s) for kind, u, i, s in rows if kind == "pair"]

    def depth(self) -> int:
        return self._read("SELECT COUNT(*) FROM jobs WHERE status='pending'")[0][0]

    def job_counts(self) -> dict[str, int]:
        return dict(self._read("SELECT kind || ':' || status, COUNT(*) FROM jobs GROUP BY kind, status"))

    # --- served pairs ----------------------------------------------------------------------

    def pairs_for(self, user_sigs: dict[str, str]) -> list[tuple[str, str, dict]]:
        """(user, item, {task: key}) of the pairs written for each user's given history."""
        out = []
        for user, item, sig, keys in self._read("SELECT user_id, item_id, sig, keys FROM pairs",
                                                budget=self.background_budget):
            if user_sigs.get(user) == sig:
                out.append((user, item, json.loads(keys)))
        return out
