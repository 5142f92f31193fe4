"""The background worker: drains the job queue with an LLM backend into the explanation store.

One thread, one job kind at a time:
  refresh (user, history)  score every unseen item under the new history with a private copy of
                           the model, queue the top-N as pair jobs and finish the refresh, in one
                           transaction;
  pair (user, item, hist)  up to `batch_size` of them per step: render their prompts with the
                           Explainer (item profiles first, generated if missing), generate what
                           the store lacks (committed per batch by the Explainer), then in one
                           transaction record the served pairs and mark the jobs done, and finally
                           encode the texts and swap them into the in-memory index.
A job whose user's history moved on is `superseded`. Backend errors leave the job pending with
one more attempt (failed after `max_attempts`); failed jobs get a fresh set of attempts once they
have rested `retry_failed_after` seconds. Storage errors (store or state DB read-only, locked,
deleted) are not the job's fault: they consume no attempt, the jobs stay pending and the thread
backs off (doubling up to `max_backoff`) until the databases work again. Rows the store already
has are never sent again, so a restart after a kill re-runs only what was not written.
"""

from __future__ import annotations

import importlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import numpy as np
import pandas as pd

from reasonrec.errors import ReasonrecError
from reasonrec.explain.generate import ExplainConfig, Explainer
from reasonrec.serve.events import Job, StateDB
from reasonrec.serve.index import ServingIndex
from reasonrec.serve.storage import StorageUnavailable

log = logging.getLogger("reasonrec.serve.worker")


def resolve_llm(spec):
    """An LLM backend from a spec string (or an object, returned as is).

    none | "" -> no backend; `py:module:factory?key=value&...` -> factory(**kwargs) (for tests and
    custom backends, e.g. a fake with a delay); anything else -> `reasonrec.llm.get_backend(spec)`
    (embedded, gguf:..., openai:..., vllm:...)."""
    if spec is None or not isinstance(spec, str):
        return spec
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    if spec.startswith("py:"):
        target, _, query = spec[3:].partition("?")
        module, _, attr = target.rpartition(":")
        if not module:
            raise ReasonrecError(f"--llm {spec!r}: expected py:module:factory[?key=value&...]")
        kwargs = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            for conv in (int, float):
                try:
                    value = conv(value)
                    break
                except ValueError:
                    pass
            kwargs[key] = value
        return getattr(importlib.import_module(module), attr)(**kwargs)
    try:
        from reasonrec.llm import get_backend
    except ImportError as err:
        raise ReasonrecError(f"LLM backend {spec!r}: reasonrec.llm.get_backend is not available ({err})") from None
    return get_backend(spec)


def variant_for(templates, text_columns: list[str]) -> str:
    """The template variant whose tasks are the bundle's explanation columns (contrastive for
    positive + negative), so served explanations are the kind the model was trained on."""
    for name, tasks in templates.variants.items():
        if list(tasks) == list(text_columns):
            return name
    raise ReasonrecError(f"no '{templates.domain}' template variant writes {text_columns}; "
                         f"variants: {dict(templates.variants)}")


@dataclass
class WorkerStats:
    jobs_done: int = 0
    jobs_superseded: int = 0
    jobs_failed: int = 0
    jobs_retried: int = 0
    jobs_revived: int = 0     # failed jobs given a fresh set of attempts
    storage_errors: int = 0   # steps that stopped on a database error (jobs left pending)
    generated: int = 0        # rows written to the store (explanations and item profiles)
    failed: int = 0           # rows that failed clean-up or backend calls that errored
    refreshed_users: int = 0
    last_error: str | None = None
    listeners: list = field(default_factory=list, repr=False)

    def add(self, name: str, n: int = 1):
        if n:
            setattr(self, name, getattr(self, name) + n)
            for fn in self.listeners:
                fn(name, n)


class Worker:
    def __init__(self, index: ServingIndex, state: StateDB, store, backend, templates, top_n: int = 20,
                 batch_size: int = 8, max_attempts: int = 3, profiles: bool = True, idle_wait: float = 1.0,
                 retry_failed_after: float | None = 300.0, max_backoff: float = 10.0, before_step=None):
        self.index, self.state, self.store, self.backend = index, state, store, backend
        self.top_n, self.batch_size, self.max_attempts, self.idle_wait = top_n, batch_size, max_attempts, idle_wait
        self.retry_failed_after, self.max_backoff = retry_failed_after, max_backoff
        self._next_revive = 0.0
        self.before_step = before_step              # e.g. catch up with other processes' writes
        self.failing_since: float | None = None     # first of the consecutive failed steps
        variant = variant_for(templates, index.text_columns)
        self.explainer = Explainer(backend, store, templates,
                                   ExplainConfig(variant=variant, profiles=profiles, batch_size=batch_size))
        self.model = index.worker_model()
        self.stats = WorkerStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    # --- thread ----------------------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._loop, name="reasonrec-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0):
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify(self):
        self._wake.set()

    def _loop(self):
        failures = 0
        while not self._stop.is_set():
            try:
                busy = self.step()
                failures, self.failing_since = 0, None
            except Exception as err:      # never let the thread die; the jobs stay pending
                if isinstance(err, (StorageUnavailable, sqlite3.Error)):
                    log.warning("worker paused by a storage error: %s", err)
                    self.stats.add("storage_errors")
                else:
                    log.exception("worker step failed")
                self.stats.last_error = f"{type(err).__name__}: {err}"
                failures += 1
                self.failing_since = self.failing_since or time.time()
                # back off without waking on notify(): events keep arriving while the disk is away
                self._stop.wait(min(self.idle_wait * 2 ** (failures - 1), self.max_backoff))
                continue
            if not busy:
                self._wake.wait(self.idle_wait)
                self._wake.clear()

    def drain(self, max_seconds: float | None = None) -> bool:
        """Run steps in this thread until the queue is empty (precompute, tests). True if drained."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        while self.step():
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    # --- one step --------------------------------------------------------------------------

    def step(self) -> bool:
        if self.before_step is not None:
            self.before_step()
        refresh = self.state.next_jobs("refresh", 1)
        if refresh:
            self._refresh(refresh[0])
            return True
        pairs = self.state.next_jobs("pair", self.batch_size)
        if pairs:
            self._pairs(pairs)
            return True
        return self._revive()

    def _revive(self) -> bool:
        if self.retry_failed_after is None or time.monotonic() < self._next_revive:
            return False
        self._next_revive = time.monotonic() + min(max(self.retry_failed_after, 1.0), 60.0)
        revived = self.state.revive_failed(self.retry_failed_after)
        for user, item, sig in revived:
            self.index.mark_pending(user, sig, [item])
        self.stats.add("jobs_revived", len(revived))
        return bool(revived)

    def _refresh(self, job: Job):
        idx = self.index
        if idx.sig.get(job.user_id) != job.sig:
            self.state.finish(superseded=[job.id])
            self.stats.add("jobs_superseded")
            return
        rows = idx.default_pool(job.user_id)
        items: list[str] = []
        if len(rows):
            scored = idx.score_rows(job.user_id, rows, None, attention=False, model=self.model)
            n = min(self.top_n, len(rows))
            top = np.argpartition(-scored.scores, n - 1)[:n]
            top = top[np.argsort(-scored.scores[top], kind="stable")]
            items = [idx.catalog_ids[r] for r in rows[top]]
        self.state.enqueue_pairs(job.user_id, job.history, items, done_job=job.id)
        idx.mark_pending(job.user_id, job.sig, items)
        self.stats.add("refreshed_users")
        self.stats.add("jobs_done")

    def _pairs(self, jobs: list[Job]):
        idx = self.index
        live, superseded, failed = [], [], []
        for j in jobs:
            if idx.sig.get(j.user_id) != j.sig:
                superseded.append(j.id)
            elif not idx.in_catalog(j.item_id) or any(not idx.in_catalog(h) for h in j.history):
                failed.append((j.id, "item outside the catalog"))
            else:
                live.append(j)
        found_by_job: dict[int, dict] = {}
        retry: list[tuple[int, str]] = []
        if live:
            try:
                found_by_job, missing, bad = self._generate(live)
            except (StorageUnavailable, sqlite3.Error):
                raise                     # not the jobs' fault: they stay pending, the loop backs off
            except Exception as err:
                log.exception("explanation batch failed")
                self.stats.last_error = f"{type(err).__name__}: {err}"
                missing, bad = {j.id for j in live}, set()
                found_by_job = {}
            for j in live:
                if j.id in bad:
                    failed.append((j.id, "explanation failed clean-up"))
                elif j.id in missing:
                    (failed if j.attempts + 1 >= self.max_attempts else retry).append((j.id, "backend error"))
        done = [j for j in live if j.id in found_by_job]
        pair_rows = [(j.user_id, j.item_id, j.sig, self.model_id, found_by_job[j.id]["keys"]) for j in done]
        self.state.finish(done=[j.id for j in done], superseded=superseded, retry=retry, failed=failed,
                          pairs=pair_rows)
        self.stats.add("jobs_done", len(done))
        self.stats.add("jobs_superseded", len(superseded))
        self.stats.add("jobs_failed", len(failed))
        self.stats.add("jobs_retried", len(retry))
        by_user: dict[tuple, dict] = {}
        for j in done:
            by_user.setdefault((j.user_id, j.sig), {})[j.item_id] = found_by_job[j.id]["texts"]
        for (user, sig), found in by_user.items():
            idx.add_current(user, sig, found)
        failed_ids = {f[0] for f in failed}
        for j in live:
            if j.id in failed_ids:
                idx.unmark_pending(j.user_id, j.sig, [j.item_id])
        if retry and not done:
            self._stop.wait(min(2.0 ** max(j.attempts for j in live), 30.0))   # backend down: back off

    def _generate(self, jobs: list[Job]):
        idx = self.index
        ex = self.explainer
        samples = pd.DataFrame({"sample_id": [j.id for j in jobs], "item_id": [j.item_id for j in jobs],
                                "history": [list(j.history) for j in jobs]})
        needed = set(samples["item_id"]) | {i for h in samples["history"] for i in h}
        items = idx.items_frame[idx.items_frame["item_id"].isin(needed)]
        texts, profile_summary = ex.item_texts(items, progress=False)
        sjobs = ex.sample_jobs(samples, texts)
        summary = ex._execute(sjobs, "serve", progress=False)
        for s in (profile_summary, summary):
            if s is not None:
                self.stats.add("generated", s.generated)
                self.stats.add("failed", s.failed + s.errors)
        entries = self.store.get_many([j.key for j in sjobs])
        keys: dict[int, dict] = {}
        for sj in sjobs:
            keys.setdefault(sj.sample_ids[0], {})[sj.task] = sj.key
        found, missing, bad = {}, set(), set()
        for job_id, ks in keys.items():
            got = {t: entries.get(k) for t, k in ks.items()}
            if any(e is None for e in got.values()):
                missing.add(job_id)
            elif any(e.status == "failed" for e in got.values()):
                bad.add(job_id)
            else:
                found[job_id] = {"keys": ks, "texts": {t: e.text for t, e in got.items()}}
        return found, missing, bad
