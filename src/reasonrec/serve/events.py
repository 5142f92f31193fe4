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

Every multi-row change is one transaction, so the queue never sees half an event.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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


class StateDB(LocalDB):
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
        """)

    def _tx(self, fn):
        with self._write_lock:
            con = self._conn()
            con.execute("BEGIN IMMEDIATE")
            try:
                out = fn(con)
                con.execute("COMMIT")
                return out
            except BaseException:
                con.execute("ROLLBACK")
                raise

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
        return self._conn().execute("SELECT user_id, item_id FROM events ORDER BY id").fetchall()

    def event_count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0]

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

        return self._tx(write)

    def next_jobs(self, kind: str, limit: int) -> list[Job]:
        rows = self._conn().execute(
            "SELECT id, kind, user_id, item_id, history, sig, attempts FROM jobs "
            "WHERE status='pending' AND kind=? ORDER BY id LIMIT ?", (kind, limit)).fetchall()
        return [Job(r[0], r[1], r[2], r[3] or None, json.loads(r[4]), r[5], r[6]) for r in rows]

    def pending_pairs(self) -> list[tuple[str, str, str]]:
        return self._conn().execute("SELECT user_id, item_id, sig FROM jobs WHERE status='pending' "
                                    "AND kind='pair'").fetchall()

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

        self._tx(write)

    def depth(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM jobs WHERE status='pending'").fetchone()[0]

    def job_counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT kind || ':' || status, COUNT(*) FROM jobs GROUP BY kind, status")
        return dict(rows.fetchall())

    # --- served pairs ----------------------------------------------------------------------

    def pairs_for(self, user_sigs: dict[str, str]) -> list[tuple[str, str, dict]]:
        """(user, item, {task: key}) of the pairs written for each user's given history."""
        out = []
        cur = self._conn().execute("SELECT user_id, item_id, sig, keys FROM pairs")
        for user, item, sig, keys in cur:
            if user_sigs.get(user) == sig:
                out.append((user, item, json.loads(keys)))
        return out
