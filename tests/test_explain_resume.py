"""Kill a real `reasonrec explain` run mid-way; the rerun loses and regenerates nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read


def _rows(store):
    if not store.exists():
        return {}
    try:
        con = sqlite3.connect(store, timeout=30)
        rows = dict(con.execute("SELECT key, created FROM generations"))
        con.close()
        return rows
    except sqlite3.OperationalError:  # table not created yet
        return {}


@pytest.mark.slow
def test_kill_mid_run_then_resume(tmp_path):
    data = tmp_path / "data"
    prepare(read("ml-100k"), PrepareConfig(max_users=3, last_n_per_user=4)).save(data)
    store = tmp_path / "store.sqlite"
    cmd = [sys.executable, "-m", "reasonrec.cli", "explain", "--dataset", str(data), "--no-profiles",
           "--batch-size", "1", "--store", str(store)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(_rows(store)) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # no clean-up handlers run: what is committed is all there is
    proc.wait()
    before = _rows(store)
    assert 4 <= len(before) < 24, "the run should have been killed between its first and last batch"

    summary = tmp_path / "summary.json"
    done = subprocess.run(cmd + ["--summary-json", str(summary)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _rows(store)
    assert len(after) == 24                                   # 12 samples x (positive, negative)
    assert all(after[k] == t for k, t in before.items())      # same rows, same write time: not regenerated
    stats = json.loads(summary.read_text())[-1]
    assert stats["cached"] == len(before) and stats["generated"] == 24 - len(before)


@pytest.mark.slow
def test_workers_split_a_run_and_add_up(tmp_path):
    data = tmp_path / "data"
    prepare(read("ml-100k"), PrepareConfig(max_users=3, last_n_per_user=4)).save(data)
    store = tmp_path / "store.sqlite"
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "reasonrec.cli", "explain", "--dataset", str(data), "--no-profiles",
           "--batch-size", "2", "--max-samples", "6", "--store", str(store), "--workers", "2",
           "--summary-json", str(summary)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(_rows(store)) == 12                            # 6 samples x (positive, negative), each once
    (stats,) = json.loads(summary.read_text())
    assert stats["requested"] == 12 and stats["generated"] == 12 and stats["cached"] == 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    (stats,) = json.loads(summary.read_text())
    assert stats["cached"] == 12 and stats["generated"] == 0
