"""Several server processes over the same files (`--processes 2`), with the explanation worker in
its own process: a REAL server (uvicorn subprocesses on one port) and the FAKE LLM.

Every process must answer the same: an event posted to one is in every process's history, the
explanations the worker process writes are served by all, nothing acknowledged is lost, and the
children go away with the parent."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import httpx

from tests.test_serve_support import FAKE_SPEC, Server, bundle_ids

TOP_N = 3


def fresh(srv: Server) -> httpx.Client:
    """A new connection per request: the kernel picks the process anew each time."""
    return httpx.Client(base_url=srv.url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def children_of(pid: int) -> list[int]:
    """The server processes the parent spawned (not multiprocessing's resource tracker)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) != pid:
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"spawn_main" in f.read():
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_processes_share_events_and_explanations(bundle, tmp_path):
    users, items = bundle_ids(bundle)
    store = tmp_path / "store.sqlite"
    srv = Server(bundle, store, "--processes", "2", "--llm", f"{FAKE_SPEC}?delay=0", "--top-n", str(TOP_N),
                 "--batch-size", "3").start()
    try:
        pids = children_of(srv.proc.pid)
        assert len(pids) == 3, pids                          # two web processes and the worker
        acked = {}
        with fresh(srv) as c:
            # both web processes answer before any event is posted (the second may still be loading)
            srv.wait_for(lambda: len({c.get("/healthz").json()["pid"] for _ in range(12)}) == 2, timeout=60,
                         what="both web processes listening")
            for user, item in zip(users[:4], items[-4:]):
                r = c.post("/v1/events", json={"user_id": user, "item_id": item})
                assert r.status_code == 200, r.text
                acked[user] = (r.json()["event_id"], r.json()["history"])

            def everywhere():
                answered = set()
                for _ in range(12):
                    answered.add(c.get("/healthz").json()["pid"])
                    for user, (_, history) in acked.items():
                        if c.get(f"/v1/users/{user}").json()["history"] != history:
                            return False
                return len(answered) == 2

            srv.wait_for(everywhere, timeout=30, what="every process to see every event")

            def explained():
                for _ in range(8):
                    for user in acked:
                        info = c.get(f"/v1/users/{user}").json()
                        if info["explanations_ready"] != TOP_N or info["explanations_pending"]:
                            return False
                return True

            srv.wait_for(explained, timeout=60, what="the worker process's explanations in every process")
            h = c.get("/healthz").json()
            assert h["worker"] == "separate" and h["status"] == "ok", h
            for user in acked:
                info = c.get(f"/v1/users/{user}").json()
                got = c.post("/v1/score", json={"user_id": user, "item_ids": info["explained_items"]}).json()
                assert all(x["reasons"] == "ready" and x["reasons_source"] == "current" for x in got["items"])
        srv.proc.send_signal(signal.SIGKILL)                 # the parent dies without cleaning up
        srv.proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") and
                                                  open(f"/proc/{p}/stat").read().split()[2] != "Z" for p in pids):
            time.sleep(0.2)
        assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"
                       for p in pids), "children outlived the parent"
    finally:
        srv.stop()
    con = sqlite3.connect(f"file:{tmp_path / 'store.serve.sqlite'}?mode=ro", uri=True)
    try:
        ids = {r[0] for r in con.execute("SELECT id FROM events")}
        jobs = dict(con.execute("SELECT kind || ':' || status, COUNT(*) FROM jobs GROUP BY 1").fetchall())
    finally:
        con.close()
    assert ids == {e for e, _ in acked.values()}
    assert jobs.get("pair:done") == 4 * TOP_N and "pair:superseded" not in jobs, jobs
