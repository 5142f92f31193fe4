"""`reasonrec bench serve`: request latency and throughput of the service on loopback.

Starts the server (`python -m reasonrec.serve`) in a subprocess on 127.0.0.1, waits for /healthz,
then for each endpoint and concurrency level runs that many client *processes* (so client and
server never share an interpreter or its GIL), each a keep-alive `http.client` loop sending
`/v1/score` with `candidates` item ids, or `/v1/recommend` with k=10 over the default pool (every
item the model knows that the user has not seen), until the level's request budget or time
budget is spent. Per level it
reports p50/p99/max client-side latency, the server-side time (the `server-timing` header: time
inside the app, without the network and client), throughput and errors, and the highest
throughput whose p99 stays under the target (10 ms).

`run_issue_bench` is the acceptance run of issue #17 in one go: both endpoints at concurrency
1, 8, 32 with one server process and with two, /v1/score at concurrency 1 while the explanation
worker generates (BusyLLM: a stand-in that burns real CPU in torch per prompt, fed by a stream of
events), and a pass/fail line per target.

Only 127.0.0.1 is used. On a small shared machine the clients compete with the server for CPU;
the server-side column shows how much of the latency is the service itself.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> dict:
    import http.client

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was healthy")
        try:
            con = http.client.HTTPConnection(HOST, port, timeout=2)
            con.request("GET", "/healthz")
            resp = con.getresponse()
            body = resp.read()
            con.close()
            if resp.status == 200:
                return json.loads(body)
            last = f"status {resp.status}"
        except OSError as err:
            last = repr(err)
        time.sleep(0.2)
    raise TimeoutError(f"server on port {port} not healthy after {timeout:.0f} s ({last})")


def start_server(bundle: str | Path, store: str | Path, port: int, *extra: str, log_file=None,
                 env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "reasonrec.serve", "--bundle", str(bundle), "--store", str(store),
           "--host", HOST, "--port", str(port), "--log-level", "warning", *extra]
    return subprocess.Popen(cmd, stdout=log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT if log_file else None,
                            env={**os.environ, **(env or {})})


ENDPOINTS = ("score", "recommend")


def _bodies(bundle: Path, candidates: int, n: int, seed: int, endpoint: str = "score") -> list[bytes]:
    spec = json.loads((bundle / "features.json").read_text())
    users, items = sorted(spec["users"]), sorted(spec["items"])
    rng = random.Random(seed)
    if endpoint == "recommend":
        return [json.dumps({"user_id": rng.choice(users), "k": 10}).encode() for _ in range(n)]
    k = min(candidates, len(items))
    return [json.dumps({"user_id": rng.choice(users), "item_ids": rng.sample(items, k)}).encode() for _ in range(n)]


def _client(port: int, path: str, bodies: list[bytes], counter, budget: int, deadline_holder, go, ready, out):
    """One client process: keep-alive loop until the shared request budget or the deadline is spent."""
    import http.client

    con = http.client.HTTPConnection(HOST, port, timeout=30)
    con.connect()
    con.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"content-type": "application/json"}
    lat, server, errors = [], [], 0
    ready.release()
    go.wait()
    deadline = deadline_holder.value
    i = os.getpid()
    while True:
        with counter.get_lock():
            if counter.value >= budget:
                break
            counter.value += 1
        if time.monotonic() > deadline:
            break
        body = bodies[i % len(bodies)]
        i += 7
        t0 = time.perf_counter()
        try:
            con.request("POST", path, body, headers)
            resp = con.getresponse()
            resp.read()
            took = time.perf_counter() - t0
            if resp.status != 200:
                errors += 1
                continue
            lat.append(took)
            st = resp.getheader("server-timing", "")
            if "dur=" in st:
                server.append(float(st.split("dur=")[1]) / 1000)
        except (OSError, http.client.HTTPException):
            errors += 1
            con.close()
            con = http.client.HTTPConnection(HOST, port, timeout=30)
    con.close()
    out.put((lat, server, errors, time.monotonic()))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def run_level(port: int, bodies: list[bytes], concurrency: int, max_requests: int, max_seconds: float,
              endpoint: str = "score") -> dict:
    ctx = mp.get_context("spawn")
    counter = ctx.Value("l", 0)
    deadline = ctx.Value("d", 0.0)
    go, ready, out = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
    path = f"/v1/{endpoint}"
    procs = [ctx.Process(target=_client, args=(port, path, bodies, counter, max_requests, deadline, go, ready, out),
                         daemon=True) for _ in range(concurrency)]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise RuntimeError("a client process did not start")
    started = time.monotonic()
    deadline.value = started + max_seconds
    go.set()
    lat, server, errors, ends = [], [], 0, []
    for _ in procs:
        l_, s_, e_, end = out.get(timeout=max_seconds + 120)
        lat += l_
        server += s_
        errors += e_
        ends.append(end)
    for p in procs:
        p.join(10)
    wall = max(ends) - started
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    return {"endpoint": path, "concurrency": concurrency, "requests": len(lat), "errors": errors, "seconds": round(wall, 2),
            "throughput_rps": round(len(lat) / wall, 1) if wall > 0 else 0.0,
            "p50_ms": ms(_pct(lat, 50)), "p90_ms": ms(_pct(lat, 90)), "p99_ms": ms(_pct(lat, 99)),
            "max_ms": ms(max(lat) if lat else None),
            "server_p50_ms": ms(_pct(server, 50)), "server_p99_ms": ms(_pct(server, 99))}


class BusyLLM:
    """NOT a model: a load generator for the worker phase of the bench. Each prompt costs
    `seconds` of real CPU (torch matrix products, as a small model's decoding would) and gets a
    fixed sentence that passes the explanation clean-up."""

    def __init__(self, seconds: float = 0.02, model_id: str = "busy-bench-llm"):
        from reasonrec.llm.base import Capabilities

        self.seconds, self.model_id = seconds, model_id
        self.capabilities = Capabilities(batching=True, prefix_sharing=False, logprobs=False)

    def generate(self, prompts, params):
        import torch

        from reasonrec.llm.base import Generation

        a = torch.randn(256, 256)
        end = time.perf_counter() + self.seconds * len(prompts)
        while time.perf_counter() < end:
            a = torch.tanh(a @ a)
        return [Generation(" the consumer likes what this item offers and it fits.", tokens=12) for _ in prompts]

    def generate_groups(self, groups, params):
        from reasonrec.llm.base import generate_flat

        return generate_flat(self, groups, params)


def _feed_events(port: int, bundle: Path, stop, every: float = 0.3, seed: int = 1) -> None:
    """Post an event every `every` seconds, so the worker always has refreshes to explain."""
    import http.client

    spec = json.loads((bundle / "features.json").read_text())
    users, items = sorted(spec["users"]), sorted(spec["items"])
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            con = http.client.HTTPConnection(HOST, port, timeout=10)
            body = json.dumps({"user_id": rng.choice(users), "item_id": rng.choice(items)})
            con.request("POST", "/v1/events", body, {"content-type": "application/json"})
            con.getresponse().read()
            con.close()
        except OSError:
            pass
        stop.wait(every)


def _metric(port: int, name: str) -> float:
    import http.client

    con = http.client.HTTPConnection(HOST, port, timeout=10)
    con.request("GET", "/metrics")
    text = con.getresponse().read().decode()
    con.close()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def run_issue_bench(bundle: str | Path, *, levels=(1, 8, 32), max_requests: int = 2000, max_seconds: float = 10.0,
                    candidates: int = 100, busy_seconds: float = 0.02, out: str | Path | None = None,
                    echo=print) -> dict:
    """Issue #17's targets in one run (see the module docstring); returns the rows and checks."""

    bundle = Path(bundle)
    results: dict = {"bundle": str(bundle), "cpus": os.cpu_count(), "runs": {}}
    for procs in (1, 2):
        echo(f"--- {procs} server process{'es' if procs > 1 else ''}")
        results["runs"][procs] = run_serve_bench(bundle, levels=levels, max_requests=max_requests,
                                                 max_seconds=max_seconds, candidates=candidates,
                                                 server_args=("--processes", str(procs)), echo=echo)
    results["score_while_generating"] = {}
    for procs in (1, 2):
        where = "a thread of the server" if procs == 1 else "its own process, beside 2 web processes"
        echo(f"--- /v1/score at concurrency 1 while the worker generates in {where} (BusyLLM, events every 0.3 s)")
        busy = _score_while_generating(bundle, procs, busy_seconds, candidates, max_requests, max_seconds)
        echo(f"/v1/score c=1, worker in {where} ({busy['worker_rows_generated_meanwhile']:.0f} rows generated "
             f"meanwhile): p50 {busy['p50_ms']} ms, p99 {busy['p99_ms']} ms, errors {busy['errors']}")
        results["score_while_generating"][procs] = busy
    busy = results["score_while_generating"][2]

    def row(procs, endpoint, c):
        return next((r for r in results["runs"][procs]["levels"] if r["endpoint"] == endpoint
                     and r["concurrency"] == c), None)

    top = max(levels)
    single = max(r["throughput_rps"] for r in results["runs"][1]["levels"] if r["endpoint"] == "/v1/score")
    double = max(r["throughput_rps"] for r in results["runs"][2]["levels"] if r["endpoint"] == "/v1/score")
    c8 = 8 if 8 in levels else top
    rec8_procs = max((1, 2), key=lambda p: (row(p, "/v1/recommend", c8) or {}).get("throughput_rps", 0))
    rec8, rec1 = row(rec8_procs, "/v1/recommend", c8), row(1, "/v1/recommend", 1)
    errors = sum(r["errors"] for run in results["runs"].values() for r in run["levels"]) + sum(
        b["errors"] for b in results["score_while_generating"].values())
    checks = {
        "score p99 < 5 ms at c=1 while the worker (own process) generates": (busy["p99_ms"], busy["p99_ms"] is not None
                                                                             and busy["p99_ms"] < 5),
        "score throughput, 2 processes >= 1.5x one": (round(double / single, 2) if single else None,
                                                      bool(single) and double >= 1.5 * single),
        f"recommend >= 500 req/s at c={c8} (best of 1 and 2 processes: {rec8_procs})":
            (rec8 and rec8["throughput_rps"], bool(rec8) and rec8["throughput_rps"] >= 500),
        "recommend p99 < 10 ms at c=1": (rec1 and rec1["p99_ms"], bool(rec1) and rec1["p99_ms"] < 10),
        "0 errors": (errors, errors == 0),
    }
    results["checks"] = {k: {"value": v, "pass": ok} for k, (v, ok) in checks.items()}
    results["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    for name, (value, ok) in checks.items():
        echo(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    echo(f"(load average at the end: {results['load_avg']} on {results['cpus']} CPUs)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
    return results


def _score_while_generating(bundle: Path, procs: int, busy_seconds: float, candidates: int, max_requests: int,
                            max_seconds: float) -> dict:
    import threading

    spec = f"py:reasonrec.bench.serve_load:BusyLLM?seconds={busy_seconds}"
    tmp = tempfile.TemporaryDirectory(prefix="reasonrec-serve-bench-")
    port = free_port()
    with open(Path(tmp.name) / "server.log", "wb") as log_file:
        proc = start_server(bundle, Path(tmp.name) / "store.sqlite", port, "--llm", spec, "--top-n", "20",
                            "--processes", str(procs), log_file=log_file)
        stop = threading.Event()
        try:
            wait_healthy(port, proc)
            feeder = threading.Thread(target=_feed_events, args=(port, bundle, stop), daemon=True)
            feeder.start()
            time.sleep(3.0)                                          # the worker is busy by now
            before = _worker_rows(port, procs, tmp.name)
            bodies = _bodies(bundle, candidates, 256, 0, "score")
            busy = run_level(port, bodies, 1, max_requests, max_seconds, "score")
            busy["worker_rows_generated_meanwhile"] = _worker_rows(port, procs, tmp.name) - before
        finally:
            stop.set()
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    tmp.cleanup()
    return busy


def _worker_rows(port: int, procs: int, tmp: str) -> float:
    """Rows in the store: the worker's progress, whichever process it runs in."""
    import sqlite3

    if procs == 1:
        return _metric(port, "reasonrec_worker_generated_total")
    con = sqlite3.connect(f"file:{Path(tmp) / 'store.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return float(con.execute("SELECT COUNT(*) FROM generations").fetchone()[0])
    finally:
        con.close()


def run_serve_bench(bundle: str | Path, *, store: str | Path | None = None, levels=(1, 8, 32),
                    max_requests: int = 2000, max_seconds: float = 20.0, candidates: int = 100,
                    target_p99_ms: float = 10.0, warmup: int = 200, server_args: tuple = (), seed: int = 0,
                    endpoints: tuple = ENDPOINTS, out: str | Path | None = None, echo=print) -> dict:
    """Run the load test; returns (and optionally writes as JSON) the per-level table."""
    bundle = Path(bundle)
    if not (bundle / "bundle.json").is_file():
        raise FileNotFoundError(f"{bundle}: not a model bundle (no bundle.json)")
    tmp = tempfile.TemporaryDirectory(prefix="reasonrec-serve-bench-")
    store = Path(store) if store else Path(tmp.name) / "explanations.sqlite"
    port = free_port()
    log_path = Path(tmp.name) / "server.log"
    with open(log_path, "wb") as log_file:
        proc = start_server(bundle, store, port, *server_args, log_file=log_file)
        try:
            health = wait_healthy(port, proc)
            rows = []
            for endpoint in endpoints:
                bodies = _bodies(bundle, candidates, 256, seed, endpoint)
                run_level(port, bodies, 1, warmup, 30.0, endpoint)            # warm-up, not reported
                for c in levels:
                    row = run_level(port, bodies, c, max_requests, max_seconds, endpoint)
                    rows.append(row)
                    echo(f"{row['endpoint']:<14} concurrency {c:>3}: {row['requests']:>5} req in {row['seconds']:>5.1f} s = "
                         f"{row['throughput_rps']:>7.1f} req/s; p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms "
                         f"(server p50 {row['server_p50_ms']}, p99 {row['server_p99_ms']}); errors {row['errors']}")
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    best_under = {}
    for endpoint in {r["endpoint"] for r in rows}:
        ok = [r for r in rows if r["endpoint"] == endpoint and r["p99_ms"] is not None
              and r["p99_ms"] < target_p99_ms and r["errors"] == 0]
        best = max(ok, key=lambda r: r["throughput_rps"]) if ok else None
        best_under[endpoint] = ({"concurrency": best["concurrency"], "throughput_rps": best["throughput_rps"],
                                 "p99_ms": best["p99_ms"]} if best else None)
    result = {"bundle": str(bundle), "candidates": candidates, "levels": rows,
              "errors": sum(r["errors"] for r in rows), "target_p99_ms": target_p99_ms,
              "best_under_target": best_under,
              "server": health, "cpus": os.cpu_count(),
              "load_avg": [round(x, 2) for x in os.getloadavg()], "server_args": list(server_args)}
    echo(table(result))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    tmp.cleanup()
    return result


def table(result: dict) -> str:
    lines = [f"/v1/score: {result['candidates']} candidates per request; /v1/recommend: k=10 over the default "
             f"pool; loopback, {result['cpus']} CPUs",
             "| endpoint | concurrency | requests | req/s | p50 ms | p99 ms | max ms | server p50 ms | server p99 ms "
             "| errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["levels"]:
        lines.append(f"| {r.get('endpoint', '/v1/score')} | {r['concurrency']} | {r['requests']} | "
                     f"{r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} | {r['server_p50_ms']} | "
                     f"{r['server_p99_ms']} | {r['errors']} |")
    for endpoint, best in sorted(result["best_under_target"].items()):
        lines.append(f"{endpoint}: highest throughput with p99 < {result['target_p99_ms']:g} ms: "
                     + (f"{best['throughput_rps']} req/s at concurrency {best['concurrency']} (p99 {best['p99_ms']} ms)"
                        if best else "none of the levels"))
    return "\n".join(lines)


def build_bench_bundle(out: str | Path, max_users: int | None = 300, last_n_per_user: int | None = 50,
                       epochs: int = 5, seed: int = 0) -> Path:
    """A bundle to load-test when none is at hand: MovieLens-100K (embedded) with *synthetic*
    label-dependent explanation texts (no LLM; the bench measures serving, not reasons)."""
    import numpy as np
    import pandas as pd

    from reasonrec.data.prepare import PrepareConfig, prepare
    from reasonrec.data.readers import read
    from reasonrec.estimator import LRRecsys

    data = prepare(read("ml-100k"), PrepareConfig(max_users=max_users, last_n_per_user=last_n_per_user, seed=seed))
    words = ["comedy", "drama", "action", "family", "romance", "thriller", "funny", "dark", "long", "classic"]
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    for label in data.samples["label"]:
        a, b = (words[:5], words[5:]) if label else (words[5:], words[:5])
        pos.append("the consumer likes " + " ".join(rng.choice(a, 3)))
        neg.append("the consumer dislikes " + " ".join(rng.choice(b, 3)))
    expl = pd.DataFrame({"sample_id": data.samples["sample_id"], "positive": pos, "negative": neg})
    rec = LRRecsys(epochs=epochs, encoder_options={"epochs": epochs, "min_count": 1}).fit(data, expl)
    return rec.save(out)


def main(argv: list[str] | None = None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m reasonrec.bench.serve_load")
    p.add_argument("--bundle", help="model bundle [default: build a synthetic one under --work]")
    p.add_argument("--work", default="artifacts/bench/serve", help="where a built bundle and results go")
    p.add_argument("--levels", default="1,8,32")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS), help="score, recommend or both")
    p.add_argument("--max-requests", type=int, default=2000)
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--server-arg", action="append", default=[], help="extra server flag (repeatable)")
    p.add_argument("--issue", action="store_true", help="issue #17's acceptance run (1 and 2 processes, "
                                                        "worker phase, pass/fail per target)")
    a = p.parse_args(argv)
    bundle = Path(a.bundle) if a.bundle else Path(a.work) / "bundle"
    if not (bundle / "bundle.json").is_file():
        print(f"building a synthetic-explanation bundle at {bundle} ...")
        build_bench_bundle(bundle)
    if a.issue:
        run_issue_bench(bundle, levels=tuple(int(x) for x in a.levels.split(",")), max_requests=a.max_requests,
                        max_seconds=a.max_seconds, candidates=a.candidates, out=Path(a.work) / "issue17.json")
        return
    run_serve_bench(bundle, levels=tuple(int(x) for x in a.levels.split(",")), max_requests=a.max_requests,
                    max_seconds=a.max_seconds, candidates=a.candidates, server_args=tuple(a.server_arg),
                    endpoints=tuple(a.endpoints.split(",")), out=Path(a.work) / "serve_load.json")


if __name__ == "__main__":
    main()
