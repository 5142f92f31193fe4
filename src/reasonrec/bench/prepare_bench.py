"""`reasonrec bench prepare`: wall time and peak memory of `data prepare` on an ML-20M-size dump.

The synthetic dump is written (or reused) first and is not timed. The timed part is a fresh
`reasonrec data prepare` process, so the figures include interpreter start-up and imports, like a
user's run; the peak RSS is that process's own (see `_MEASURE`).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from reasonrec.data.synth import write_movielens
from reasonrec.errors import ReasonrecError


# Run by a fresh, small interpreter: Linux carries the parent's peak into a child's ru_maxrss
# (across fork and exec), so a child of this process (which may have just written a 20M-row
# dump) would report at least this process's peak, not its own.
_MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - started
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
print(json.dumps({"status": status, "wall_s": wall, "peak_kib": kib}))
"""


def timed_run(command: list[str]) -> tuple[int, float, float, str]:
    """(exit status, wall seconds, peak RSS GiB, stderr tail) of one child process."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise ReasonrecError(f"could not measure {command[:3]}: {done.stderr[-2000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return measured["status"], measured["wall_s"], measured["peak_kib"] / 2**20, done.stderr[-2000:]


def run_prepare_bench(out: Path, *, rows: int, users: int, items: int, seed: int = 0,
                      extra_args: list[str] | None = None) -> dict:
    data = out / f"ml-synth-{rows}-{users}-{items}-s{seed}"
    started = time.perf_counter()
    write_movielens(data, rows=rows, users=users, items=items, seed=seed)
    generate_s = time.perf_counter() - started
    prepared = out / "prepared"
    command = [sys.executable, "-m", "reasonrec.cli", "data", "prepare", "--dataset", "movielens",
               "--path", str(data), "--out", str(prepared), *(extra_args or [])]
    status, wall, peak, stderr = timed_run(command)
    if status:
        raise ReasonrecError(f"data prepare failed ({status}): {stderr}")
    card = json.loads((prepared / "card.json").read_text())
    result = {
        "rows": rows, "users": users, "items": items, "seed": seed,
        "wall_s": round(wall, 2), "peak_rss_gib": round(peak, 3),
        "prepare_seconds_in_process": card.get("prepare_seconds"),
        "samples": card["interactions"], "split_sizes": card["split_sizes"],
        "generate_s_untimed": round(generate_s, 2),
        "command": " ".join(command[1:]),
        "cpus": os.cpu_count(), "python": platform.python_version(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    return result
