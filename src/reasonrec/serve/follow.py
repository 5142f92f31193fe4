"""Keeping one process's in-memory index in step with the others, through the state DB.

With several server processes over the same files (`multi.py`), each holds its own index. What
another process changed reaches this one by tailing three append-mostly tables:

  events  new interactions, applied strictly in id order (histories, and so history
          signatures, must come out the same in every process, or their jobs would supersede
          each other). A process posting an event catches up to it under the same lock, so its
          own event is applied in order too;
  pairs   explanations the worker process wrote: texts read from the store, encoded and made
          live (the index drops them if the user's history has moved on);
  jobs    pair jobs queued by the worker's refreshes, so candidates show as `pending`.

A thread polls every `interval` seconds; the worker process polls before each step.
"""

from __future__ import annotations

import logging
import threading

from reasonrec.serve.storage import StorageUnavailable

log = logging.getLogger("reasonrec.serve")


class Follower:
    def __init__(self, index, state, store, interval: float = 0.2):
        self.index, self.state, self.store, self.interval = index, state, store, interval
        self.lock = threading.Lock()
        self.last_event = index.last_event_id
        self.last_pair, self.last_job = state.last_ids()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def catch_up_events(self):
        """Apply every event logged after the last one seen. Call with `lock` held."""
        for event_id, user, item in self.state.events_after(self.last_event):
            self.index.apply_event(user, item)
            self.last_event = event_id

    def post_event(self, user: str, item: str, rating, label, ts: int) -> tuple[int, list[str]]:
        """Log an event from this process: catch up first so its history is the one every process
        will compute, then append and apply it, all under the lock."""
        with self.lock:
            self.catch_up_events()
            history = self.index.next_history(user, item)
            event_id = self.state.append_event(user, item, rating, label, ts, history)
            try:
                self.catch_up_events()
            except StorageUnavailable as err:   # the event is committed: answer 200; the follower applies it
                log.warning("event %s stored; applying it is left to the follower: %s", event_id, err)
            return event_id, history

    def poll(self):
        with self.lock:
            self.catch_up_events()
        idx = self.index
        for job_id, user, item, sig in self.state.pending_pairs_after(self.last_job):
            idx.mark_pending(user, sig, [item])
            self.last_job = job_id
        pairs = self.state.pairs_after(self.last_pair)
        if pairs and idx.uses_text:
            entries = self.store.get_many([k for *_, keys in pairs for k in keys.values()], include_failed=False)
            by_user: dict[tuple, dict] = {}
            for _, user, item, sig, keys in pairs:
                texts = {t: entries[k].text for t, k in keys.items() if k in entries}
                if all(texts.get(c) for c in idx.text_columns):
                    by_user.setdefault((user, sig), {})[item] = texts
            for (user, sig), found in by_user.items():
                idx.add_current(user, sig, found)
        if pairs:
            self.last_pair = pairs[-1][0]

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="reasonrec-follower", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                self.poll()
                self.last_error = None
            except Exception as err:      # storage trouble included: keep following once the DB is back
                if self.last_error is None:
                    log.warning("following the state DB failed: %s", err)
                self.last_error = f"{type(err).__name__}: {err}"
