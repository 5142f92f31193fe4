"""Durability: kill -9 the server while its worker fills explanations, then restart it.

Every row the store had before the kill is still there afterwards (same text, same write time),
the logged events survive (histories are replayed), and after the restart the queue drains to
completion without regenerating any finished row.

The LLM here is SlowFakeLLM, a FAKE with an artificial delay per batch (the point is durability
and control flow). Set REASONREC_SERVE_TEST_LLM to a backend spec (e.g. `embedded`) to run the
same test against a real model; it then takes minutes instead of seconds.
"""

from __future__ import annotations

import os
import sqlite3


from tests.test_serve_support import FAKE_SPEC, Server, bundle_ids, store_rows

REAL_LLM = os.environ.get("REASONREC_SERVE_TEST_LLM")
LLM = REAL_LLM or f"{FAKE_SPEC}?delay=0.15"
TOP_N = 6
DRAIN_TIMEOUT = 900 if REAL_LLM else 60


def _jobs(state_path):
    con = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True, timeout=30)
    try:
        return dict(con.execute("SELECT kind || ':' || status, COUNT(*) FROM jobs GROUP BY 1").fetchall())
    finally:
        con.close()


def test_kill_mid_generation_loses_nothing_and_resumes(bundle, tmp_path):
    users, items = bundle_ids(bundle)
    store = tmp_path / "store.sqlite"
    state = tmp_path / "store.serve.sqlite"
    args = ("--llm", LLM, "--top-n", str(TOP_N), "--batch-size", "2")
    posted = {}

    srv = Server(bundle, store, *args).start()
    try:
        for user, item in zip(users[:3], items[-3:]):
            r = srv.client.post("/v1/events", json={"user_id": user, "item_id": item, "rating": 4})
            assert r.status_code == 200, r.text
            posted[user] = r.json()["history"]
        # let the worker write some rows, but not all: 3 users x 6 pairs x 2 texts (+ profiles)
        srv.wait_for(lambda: len(store_rows(store)) >= 6, timeout=DRAIN_TIMEOUT / 2, what="first rows written")
        # On a loaded machine a user's refresh may not have been expanded into pairs yet: wait for
        # some user (the last ones are explained last) to have queued pairs.
        waiting = {}

        def some_user_waits() -> bool:
            for user in reversed(list(posted)):
                pending = srv.client.get(f"/v1/users/{user}").json()["pending_items"]
                if pending:
                    waiting[user] = pending
                    return True
            return False

        srv.wait_for(some_user_waits, timeout=DRAIN_TIMEOUT / 2, what="a user's top-N queued")
        assert srv.client.get("/healthz").json()["queue_depth"] > 0, "killed too late: nothing left in flight"
        # queued pairs are answered at once, flagged pending
        user, pending = next(iter(waiting.items()))
        got = srv.client.post("/v1/score", json={"user_id": user, "item_ids": pending}).json()["items"]
        assert any(x["reasons"] == "pending" for x in got) and all(x["reasons"] in ("pending", "ready") for x in got)
        before = store_rows(store)
        srv.kill()                                            # SIGKILL mid-way
    finally:
        srv.stop()

    after_kill = store_rows(store)
    assert set(before) <= set(after_kill), "rows the store had before the kill were lost"
    assert all(after_kill[k] == v for k, v in before.items()), "rows changed across the kill"
    jobs = _jobs(state)
    assert jobs.get("pair:pending", 0) > 0, jobs                # work left for the restart

    with Server(bundle, store, *args) as again:
        for user, history in posted.items():                  # the event log was replayed
            assert again.client.get(f"/v1/users/{user}").json()["history"] == history
        again.wait_for(lambda: again.client.get("/healthz").json()["queue_depth"] == 0, timeout=DRAIN_TIMEOUT,
                       what="the queue to drain after the restart")
        final = store_rows(store)
        generated = again.metric("reasonrec_worker_generated_total")
        # nothing finished before the kill was generated again: same rows, same write times, and
        # the worker's count equals exactly the rows that were missing
        assert all(final[k] == v for k, v in after_kill.items())
        assert generated == len(final) - len(after_kill) > 0
        jobs = _jobs(state)
        assert jobs.get("pair:done") == 3 * TOP_N and "pair:pending" not in jobs, jobs
        assert jobs.get("refresh:done") == 3, jobs
        for user in posted:
            info = again.client.get(f"/v1/users/{user}").json()
            assert info["explanations_ready"] == TOP_N and info["explanations_pending"] == 0, info
            got = again.client.post("/v1/score", json={"user_id": user, "item_ids": info["explained_items"]}).json()
            assert all(x["reasons"] == "ready" and x["reasons_source"] == "current" for x in got["items"])
        assert "Traceback" not in again.log()
