"""`reasonrec bench prepare`: the dump is made once, the prepare run is measured in a child process."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from reasonrec.bench.prepare_bench import timed_run
from reasonrec.cli import app


def test_bench_prepare_writes_results_and_reuses_the_dump(tmp_path):
    args = ["bench", "prepare", "--rows", "6000", "--users", "120", "--items", "400", "--out", str(tmp_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["rows"] == result["samples"] == 6000
    assert sum(result["split_sizes"].values()) == 6000
    assert result["wall_s"] > 0 and 0 < result["peak_rss_gib"] < 64
    assert "data prepare --dataset movielens" in result["command"]
    assert (tmp_path / "prepared" / "samples.parquet").is_file()
    ratings = next(tmp_path.glob("ml-synth-6000-*/ratings.csv"))
    made = ratings.stat().st_mtime_ns
    assert CliRunner().invoke(app, args).exit_code == 0
    assert ratings.stat().st_mtime_ns == made


def test_timed_run_reports_the_childs_own_peak_and_status():
    import sys

    big = [sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    status, wall, peak, _ = timed_run(big)
    assert status == 0 and wall > 0 and peak > 0.29
    status, _, small, err = timed_run([sys.executable, "-c", "import sys; sys.exit('boom')"])
    assert status == 1 and "boom" in err
    assert small < 0.2, "a later, smaller child must not inherit an earlier child's peak"
