"""Storage faults against a REAL server (uvicorn subprocess) over REAL SQLite files: a database
made read-only for a few seconds (chattr +i, root only), deleted or replaced while serving, a
backend that is down for a while, and the start-up errors of damaged inputs.

What must hold: writes that cannot be made durable are refused with 503, never acknowledged and
lost; /healthz says "degraded" with the reason while it lasts; a transient fault heals without a
restart; a lost file is not silently re-created empty at the next start.

The LLM is SlowFakeLLM, a FAKE (the point is storage and control flow)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.test_serve_support import (FAKE_SPEC, ROOT, Server, bundle_ids, free_port, store_rows,
                                      subprocess_env)


def _chattr(flag: str, paths):
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@contextmanager
def immutable(*paths: Path):
    """The files refuse every write, even to connections already open (stronger than chmod, which
    root and open descriptors ignore). The -shm file is left alone: SQLite maps it in memory."""
    paths = [p for p in paths if p.exists()]
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make a file read-only under a running server")
    try:
        _chattr("+i", paths)
    except subprocess.CalledProcessError as err:
        pytest.skip(f"chattr +i not supported here: {err.stderr.decode(errors='replace').strip()}")
    try:
        yield
    finally:
        _chattr("-i", paths)


def wal(path: Path) -> Path:
    return Path(f"{path}-wal")


def unlink_db(path: Path):
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def jobs(state: Path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        return dict(con.execute("SELECT kind || ':' || status, COUNT(*) FROM jobs GROUP BY 1").fetchall())
    finally:
        con.close()


def event_ids(state: Path) -> set[int]:
    con = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0] for r in con.execute("SELECT id FROM events")}
    finally:
        con.close()


def health(srv: Server) -> dict:
    return srv.client.get("/healthz").json()


def degraded(srv: Server, needle: str):
    def check():
        h = health(srv)
        return h if h["status"] == "degraded" and any(needle in r for r in h["reasons"]) else None
    return check


def post_event(srv: Server, user: str, item: str) -> httpx.Response:
    return srv.client.post("/v1/events", json={"user_id": user, "item_id": item})


def test_read_only_store_heals_without_restart(bundle, tmp_path):
    users, items = bundle_ids(bundle)
    store = tmp_path / "store.sqlite"
    state = tmp_path / "store.serve.sqlite"
    with Server(bundle, store, "--llm", f"{FAKE_SPEC}?delay=0.2", "--top-n", "4", "--batch-size", "2") as srv:
        for user, item in zip(users[:2], items[-2:]):
            assert post_event(srv, user, item).status_code == 200
        srv.wait_for(lambda: len(store_rows(store)) >= 2, timeout=60, what="the worker's first rows")
        with immutable(store, wal(store)):
            started = time.monotonic()
            # the state DB is fine: events are still taken while the store is read-only
            r = post_event(srv, users[2], items[-3])
            assert r.status_code == 200, r.text
            h = srv.wait_for(degraded(srv, "explanation store"), timeout=10, what="degraded health")
            assert any(str(store) in reason for reason in h["reasons"]), h
            time.sleep(max(0.0, 6.0 - (time.monotonic() - started)))      # the 6 s window
        srv.wait_for(lambda: health(srv)["status"] == "ok" and health(srv)["queue_depth"] == 0, timeout=90,
                     what="recovery and a drained queue")
        counts = jobs(state)
        assert counts.get("pair:done") == 3 * 4 and "pair:failed" not in counts, counts
        for user in users[:3]:
            info = srv.client.get(f"/v1/users/{user}").json()
            assert info["explanations_ready"] == 4 and info["explanations_pending"] == 0, info
        assert "Traceback" not in srv.log()


def test_read_only_state_db_refuses_events_with_503_and_loses_no_acknowledged_one(bundle, tmp_path):
    users, items = bundle_ids(bundle)
    store = tmp_path / "store.sqlite"
    state = tmp_path / "store.serve.sqlite"
    acked: set[int] = set()
    srv = Server(bundle, store, "--llm", f"{FAKE_SPEC}?delay=0", "--top-n", "2").start()
    try:
        r = post_event(srv, users[0], items[0])
        assert r.status_code == 200
        acked.add(r.json()["event_id"])
        before = srv.client.get(f"/v1/users/{users[1]}").json()["history"]
        with immutable(state, wal(state)):
            r = post_event(srv, users[1], items[1])
            assert r.status_code == 503, r.text
            assert "state DB" in r.json()["error"] and r.headers.get("retry-after")
            # refused means not applied either: the history did not move
            assert srv.client.get(f"/v1/users/{users[1]}").json()["history"] == before
            srv.wait_for(degraded(srv, "state DB"), timeout=10, what="degraded health")
            # reads are served from memory meanwhile
            assert srv.client.post("/v1/score", json={"user_id": users[0], "item_ids": items[:3]}).status_code == 200
        r = post_event(srv, users[1], items[1])                  # healed, same process
        assert r.status_code == 200, r.text
        acked.add(r.json()["event_id"])
        srv.wait_for(lambda: health(srv)["status"] == "ok", timeout=60, what="ok health after the window")
        srv.kill()
    finally:
        srv.stop()
    assert event_ids(state) == acked
    with Server(bundle, store, "--llm", "none") as again:
        assert again.client.get(f"/v1/users/{users[1]}").json()["history"][-1] == items[1]


def test_deleted_state_db_refuses_writes_and_is_not_recreated_silently(bundle, tmp_path):
    users, items = bundle_ids(bundle)
    store = tmp_path / "store.sqlite"
    state = tmp_path / "store.serve.sqlite"
    with Server(bundle, store, "--llm", "none") as srv:
        assert post_event(srv, users[0], items[0]).status_code == 200
        unlink_db(state)
        r = post_event(srv, users[0], items[1])
        assert r.status_code == 503 and "was deleted" in r.json()["error"], r.text
        h = srv.wait_for(degraded(srv, "state DB"), timeout=5, what="degraded health")
        assert any("deleted" in reason for reason in h["reasons"]), h
        assert srv.client.post("/v1/score", json={"user_id": users[0], "item_ids": items[:2]}).status_code == 200
    with pytest.raises(RuntimeError) as err:
        Server(bundle, store, "--llm", "none").start()
    message = str(err.value)
    assert f"state DB {state} is missing" in message and "--state" in message and "Traceback" not in message
    assert not state.exists(), "a refused start leaves no empty state DB behind"
    # the way forward the message names: a new state DB
    with Server(bundle, store, "--llm", "none", "--state", str(tmp_path / "fresh.sqlite")) as srv:
        assert health(srv)["status"] == "ok"


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_lost_store_stops_the_worker_from_finishing_jobs(bundle, tmp_path, how):
    users, items = bundle_ids(bundle)
    store = tmp_path / "store.sqlite"
    state = tmp_path / "store.serve.sqlite"
    with Server(bundle, store, "--llm", f"{FAKE_SPEC}?delay=0.3", "--top-n", "6", "--batch-size", "1") as srv:
        for user, item in zip(users[:2], items[-2:]):
            assert post_event(srv, user, item).status_code == 200
        srv.wait_for(lambda: len(store_rows(store)) >= 2, timeout=60, what="the worker's first rows")
        unlink_db(store)
        if how == "replaced":
            con = sqlite3.connect(store)
            con.execute("CREATE TABLE other (x)")
            con.close()
        srv.wait_for(degraded(srv, f"was {how}"), timeout=15, what="degraded health")
        done = jobs(state).get("pair:done", 0)
        time.sleep(2.0)                             # several batch times: nothing more ends "done"
        after = jobs(state)
        assert after.get("pair:done", 0) == done and after.get("pair:pending", 0) > 0, after
        assert "pair:failed" not in after, "a lost store is not the jobs' fault"
    with pytest.raises(RuntimeError) as err:
        Server(bundle, store, "--llm", "none").start()
    word = "is missing" if how == "deleted" else "was replaced"
    assert f"explanation store {store} {word}" in str(err.value)


def test_failed_jobs_are_retried_once_the_backend_is_back(bundle, tmp_path):
    users, items = bundle_ids(bundle)
    store = tmp_path / "store.sqlite"
    state = tmp_path / "store.serve.sqlite"
    # down for 4 s: each job's 3 attempts (1 s and 2 s apart) fail, then they rest 1 s and run again
    with Server(bundle, store, "--llm", f"{FAKE_SPEC}?delay=0&fail_for=4", "--top-n", "2", "--batch-size", "2",
                "--retry-failed-after", "1") as srv:
        assert post_event(srv, users[0], items[-1]).status_code == 200
        srv.wait_for(lambda: jobs(state).get("pair:done") == 2, timeout=60, what="the failed pairs done at last")
        assert srv.metric('reasonrec_worker_jobs_total{outcome="revived"}') >= 1
        assert srv.metric('reasonrec_worker_jobs_total{outcome="failed"}') >= 1
        info = srv.client.get(f"/v1/users/{users[0]}").json()
        assert info["explanations_ready"] == 2 and info["explanations_pending"] == 0


# --- start-up errors ----------------------------------------------------------------------------

def cli_serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reasonrec.cli", "serve", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env())


def damaged_copy(bundle: Path, tmp_path: Path, damage) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    damage(copy)
    return copy


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "items.parquet").unlink(), "missing items.parquet"),
    (lambda b: (b / "user_history.json").unlink(), "missing user_history.json"),
    (lambda b: (b / "model.pt").write_bytes(b""), "empty file(s) model.pt"),
    (lambda b: (b / "model.pt").write_bytes(b"not a torch file"), "model.pt is damaged"),
    (lambda b: (b / "features.json").write_text("{"), "features.json is damaged"),
], ids=["no-items", "no-history", "empty-model", "garbage-model", "bad-json"])
def test_damaged_bundle_is_a_one_line_error(bundle, tmp_path, damage, message):
    copy = damaged_copy(bundle, tmp_path, damage)
    out = cli_serve("--bundle", str(copy), "--store", str(tmp_path / "s.sqlite"), "--port", str(free_port()))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and str(copy) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3, out.stderr


def test_unwritable_store_directory_is_named(bundle, tmp_path):
    where = tmp_path / "ro"
    where.mkdir()
    with immutable(where):
        out = cli_serve("--bundle", str(bundle), "--store", str(where / "s.sqlite"), "--port", str(free_port()))
    assert out.returncode == 2, out.stderr
    assert f"directory {where} is not writable" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_cli_serve_takes_a_state_path(bundle, tmp_path):
    port = free_port()
    state = tmp_path / "elsewhere" / "state.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "reasonrec.cli", "serve", "--bundle", str(bundle), "--store",
                             str(tmp_path / "s.sqlite"), "--state", str(state), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=subprocess_env())
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/events", json={"user_id": "u-new", "item_id": bundle_ids(bundle)[1][0]})
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.wait(15)
    assert event_ids(state) == {r.json()["event_id"]}
    assert not (tmp_path / "s.serve.sqlite").exists()
