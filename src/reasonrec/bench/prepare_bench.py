"""`reasonrec bench prepare`: wall time and peak memory of `data prepare` on an ML-20M-size dump.

The synthetic dump is written (or reused) first and is not timed. The timed part is a fresh
`reasonrec data prepare` process, so the figures include interpreter start-up and imports, like a
user's run; the peak RSS is that process's own, from wait4's resource usage for its pid (not
RUSAGE_CHILDREN, which keeps the largest of every child this process ever waited for).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reasonrec.data.synth import write_movielens
from reasonrec.errors import ReasonrecError


def timed_run(command: list[str]) -> tuple[int, float, float, str]:
    """(exit status, wall seconds, peak RSS GiB, stderr tail) of one child process."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace")
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return proc.returncode, wall, usage.ru_maxrss * unit / 2**30, tail


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
