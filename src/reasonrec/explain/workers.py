"""One `reasonrec explain` run split over worker processes that share the store.

On a small CPU, N single-threaded processes on disjoint shards of the samples beat one process
with N threads: the batched forward passes are full of small operations whose OpenMP barriers
leave cores waiting. Measured on this 2-core box (bench slice, SmolLM2-135M): one process with 2
threads made 1.75-2.0 explanations/s; two single-threaded shards made 1.65 + 1.65 = 3.3/s.

The parent makes the item profiles first (every shard needs them, so none is made twice), then
starts the workers (`--shard i/N --threads T`), waits, and adds up their summaries. Stopping the
parent stops the workers; what they committed stays in the store, and a rerun resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reasonrec.errors import ReasonrecError
from reasonrec.explain.generate import RunSummary

_SUMMED = ("requested", "cached", "generated", "repaired", "failed", "errors", "new_tokens", "prompt_tokens")


def run_workers(args: list[str], workers: int, threads: int | None = None) -> list[RunSummary]:
    """Run `reasonrec explain *args` as `workers` shard processes; their summaries, added per stage
    (seconds: the parent's wall time). `args` must not hold --shard, --threads or --summary-json."""
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reasonrec-workers-") as tmp:
        procs = []
        for i in range(workers):
            cmd = [sys.executable, "-m", "reasonrec.cli", "explain", *args, "--shard", f"{i}/{workers}",
                   "--threads", str(threads), "--summary-json", str(Path(tmp) / f"{i}.json")]
            procs.append(subprocess.Popen(cmd))
        try:
            codes = [p.wait() for p in procs]
        except BaseException:  # Ctrl-C or SIGTERM: stop the workers; their committed batches stay
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            raise
        failed = [i for i, c in enumerate(codes) if c != 0]
        if failed:
            raise ReasonrecError(f"explain workers {failed} of {workers} exited with codes "
                                 f"{[codes[i] for i in failed]}; what they finished is in the store, rerun to resume")
        parts = [json.loads((Path(tmp) / f"{i}.json").read_text()) for i in range(workers)]
    seconds = time.perf_counter() - started
    out: dict[str, RunSummary] = {}
    for part in parts:
        for d in part:
            s = out.setdefault(d["stage"], RunSummary(d["stage"], seconds=seconds))
            for k in _SUMMED:
                setattr(s, k, getattr(s, k) + d[k])
    return list(out.values())
