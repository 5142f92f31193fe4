"""Several server processes over the same files, and the explanation worker in a process of its own.

One Python process serves requests on one core, and an LLM worker thread inside it competes with
the request path for the interpreter. `serve_processes` runs instead:

  N web processes   each a full server (its own index, no worker) on the same port through
                    SO_REUSEPORT, so the kernel spreads connections over them; each follows the
                    others' writes through the state DB (`follow.Follower`);
  1 worker process  the job queue and the LLM (when there is one): it follows the events the web
                    processes log, writes explanations, and beats a heartbeat into the state DB
                    that the web processes' /healthz reads.

The parent only supervises: it checks the inputs once (so a bad bundle or store is one clear
error, not N), restarts a child that dies, and stops them all on SIGTERM/SIGINT. Children exit
when the parent is gone (even after kill -9), so nothing is left holding the port. SQLite's own
locking serialises the writers; every write goes through `storage.Guarded`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
from pathlib import Path

from reasonrec.errors import ReasonrecError

log = logging.getLogger("reasonrec.serve")

HEARTBEAT_EVERY = 5.0


def _exit_with_parent():
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="reasonrec-parent-watch", daemon=True).start()


def _web(bundle, host, port, store, log_level, limits, options, worker_elsewhere):
    import uvicorn

    from reasonrec.serve.app import create_app, uvicorn_options

    _exit_with_parent()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(bundle, store, None, follow=True, worker_elsewhere=worker_elsewhere, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    opts = uvicorn_options(app, host, port, log_level, **limits)
    uvicorn.Server(uvicorn.Config(**opts)).run(sockets=[sock])


def _worker(bundle, store, llm, log_level, options):
    import torch

    from reasonrec.explain.templates import load_templates
    from reasonrec.serve.app import _bundle_domain, default_state_path, load_bundle
    from reasonrec.serve.follow import Follower
    from reasonrec.serve.index import ServingIndex
    from reasonrec.serve.storage import open_serving_files
    from reasonrec.serve.worker import Worker, resolve_llm

    _exit_with_parent()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(options.get("torch_threads") or 1)
    bundle = Path(bundle)
    rec = load_bundle(bundle)
    store_db, state = open_serving_files(Path(store), Path(options.get("state_path") or default_state_path(store)))
    index = ServingIndex(rec, state, store_db, interaction_reasons=options.get("interaction_reasons", True))
    follower = Follower(index, state, store_db)
    backend = resolve_llm(llm)
    last_beat = [0.0]

    def before_step():
        follower.poll()
        if time.monotonic() - last_beat[0] > HEARTBEAT_EVERY:
            state.guard(lambda con: con.execute(
                "INSERT INTO meta (key, value) VALUES ('worker_heartbeat', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(time.time()),)))
            last_beat[0] = time.monotonic()

    worker = Worker(index, state, store_db, backend, load_templates(options.get("domain") or _bundle_domain(bundle)
                                                                   or "movie"),
                    top_n=options.get("top_n", 20), batch_size=options.get("batch_size", 8),
                    max_attempts=options.get("max_attempts", 3), profiles=options.get("profiles", True),
                    retry_failed_after=options.get("retry_failed_after", 300.0), before_step=before_step)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop(timeout=0))
    worker._loop()


def serve_processes(bundle, host: str, port: int, store: Path, llm, processes: int, log_level: str, limits: dict,
                    options: dict):
    from reasonrec.serve.app import _probe_bundle, default_state_path
    from reasonrec.serve.storage import open_serving_files

    if not hasattr(socket, "SO_REUSEPORT"):
        raise ReasonrecError("--processes needs SO_REUSEPORT (Linux, BSD, macOS)")
    _probe_bundle(Path(bundle))
    store_db, state = open_serving_files(Path(store), Path(options.get("state_path") or default_state_path(store)))
    store_db.close()
    state.close()
    config = json.loads((Path(bundle) / "bundle.json").read_text()).get("config", {})
    # a bundle that reads no texts has nothing to generate: no worker, as with one process
    with_worker = llm is not None and llm != "none" and config.get("explanations") == "text"
    web_options = {k: v for k, v in options.items()
                   if k not in ("top_n", "batch_size", "max_attempts", "profiles", "retry_failed_after", "domain")}
    ctx = mp.get_context("spawn")
    specs = [("web", _web, (str(bundle), host, port, str(store), log_level, limits, web_options, with_worker))
             for _ in range(processes)]
    if with_worker:
        specs.append(("worker", _worker, (str(bundle), str(store), llm, log_level, options)))
    children: list = [None] * len(specs)
    stopping, failed = threading.Event(), threading.Event()

    def stop(*_):
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = [0.0] * len(specs)
    try:
        while not stopping.is_set():
            for n, (role, target, args) in enumerate(specs):
                child = children[n]
                if child is not None and child.is_alive():
                    continue
                if child is not None:
                    quick = time.monotonic() - started[n] < 60
                    log.error("%s process %d exited with %s%s", role, child.pid, child.exitcode,
                              "; stopping (it failed at start-up)" if quick else "; restarting it")
                    if quick:
                        failed.set()
                        stopping.set()
                        break
                children[n] = ctx.Process(target=target, args=args, name=f"reasonrec-{role}-{n}", daemon=False)
                children[n].start()
                started[n] = time.monotonic()
            stopping.wait(0.5)
    finally:
        for child in children:
            if child is not None and child.is_alive():
                child.terminate()
        for child in children:
            if child is not None:
                child.join(10)
                if child.is_alive():
                    child.kill()
    if failed.is_set():
        raise ReasonrecError("a server process failed at start-up (its error is in the log above)")
