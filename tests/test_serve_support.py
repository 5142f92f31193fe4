"""Shared pieces of the serving tests (no tests here): a small fitted bundle, a server subprocess,
and SlowFakeLLM.

SlowFakeLLM is a FAKE backend (tests/fakes.FakeLLM plus an artificial delay per batch); it
stands in for a model only where the point is durability and control flow. The kill test can
run against a real backend instead: set REASONREC_SERVE_TEST_LLM to a spec (e.g. `embedded`).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from reasonrec.llm.base import Generation
from tests.fakes import FakeLLM

ROOT = Path(__file__).resolve().parents[1]
FAKE_SPEC = "py:tests.test_serve_support:SlowFakeLLM"


class SlowFakeLLM(FakeLLM):
    """FAKE LLM: FakeLLM's deterministic strings, `delay` seconds per generate call; for the first
    `fail_for` seconds after it is made, every generation is a backend error (a backend that is
    down, then comes back)."""

    def __init__(self, delay: float = 0.0, model_id: str = "fake-llm", fail_for: float = 0.0):
        super().__init__(model_id=model_id)
        self.delay = delay
        self.fail_until = time.monotonic() + fail_for

    def generate(self, prompts, params):
        if self.delay:
            time.sleep(self.delay)
        if time.monotonic() < self.fail_until:
            return [Generation("", finish_reason="error", error="fake outage") for _ in prompts]
        return super().generate(prompts, params)


def build_bundle(base: Path) -> Path:
    """A small fitted LR-Recsys bundle (ML-100K slice, synthetic explanations), built once per
    session under `base` and reused by every serving test module."""
    out = base / "serve-bundle"
    if (out / "bundle.json").is_file():
        return out
    import torch

    from reasonrec.data.prepare import PrepareConfig, prepare
    from reasonrec.data.readers import read
    from reasonrec.estimator import LRRecsys
    from tests.test_lr_recsys import synthetic_explanations

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = prepare(read("ml-100k"), PrepareConfig(max_users=40, last_n_per_user=15))
        expl = synthetic_explanations(data.samples)
        rec = LRRecsys(epochs=2, encoder_options={"epochs": 2, "min_count": 1}).fit(data, expl)
        tmp = base / "serve-bundle.tmp"
        rec.save(tmp)
        tmp.rename(out)
    finally:
        torch.set_num_threads(threads)
    return out


def bundle_ids(bundle: Path) -> tuple[list[str], list[str]]:
    spec = json.loads((bundle / "features.json").read_text())
    return sorted(spec["users"]), sorted(spec["items"])


def subprocess_env() -> dict[str, str]:
    """This checkout's src/ first: the venv may hold an editable install of another checkout, and
    a server subprocess must run the code under test. ROOT makes `tests.` importable (fake LLMs)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m reasonrec.serve` in a subprocess on 127.0.0.1 (a real uvicorn server)."""

    def __init__(self, bundle: Path, store: Path, *args: str, log: Path | None = None, env: dict | None = None):
        self.bundle, self.store, self.args, self.env = bundle, store, args, env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log or store.with_suffix(f".{self.port}.log")
        self.proc: subprocess.Popen | None = None
        self.client: httpx.Client | None = None

    def start(self, timeout: float = 90.0) -> "Server":
        cmd = [sys.executable, "-m", "reasonrec.serve", "--bundle", str(self.bundle), "--store", str(self.store),
               "--port", str(self.port), "--log-level", "warning", *self.args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**subprocess_env(), **self.env})
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.client.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not healthy after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self):
        """SIGKILL: no shutdown handlers, no flushing: what a crash looks like."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close()

    def _close(self):
        if self.client is not None:
            self.client.close()
            self.client = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def metric(self, name: str) -> float:
        """Sum of a Prometheus sample family (all label sets)."""
        total = 0.0
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, value = line.rsplit(" ", 1)
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{what} not reached in {timeout} s\n{self.log()}")


def store_rows(path: Path) -> dict[str, tuple]:
    """key -> (text, created) of every row of an explanation store, read directly."""
    if not path.exists():
        return {}
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {k: (t, c) for k, t, c in con.execute("SELECT key, text, created FROM generations")}
    except sqlite3.OperationalError:      # table not created yet
        return {}
    finally:
        con.close()
