"""`reasonrec bench throughput --engine ray` plumbing: what `explain` is asked to do in each mode, the
fresh profile-seeded stores, the counts and the text comparison. A fake `run` stands in for `explain`
(no Ray, no model); the timing itself is not asserted."""

from __future__ import annotations

import json
from pathlib import Path


from reasonrec.bench.throughput import run_engines
from reasonrec.data.prepare import PrepareConfig, load_prepared, prepare
from reasonrec.data.readers import read
from reasonrec.explain.generate import ExplainConfig, Explainer
from reasonrec.explain.store import ExplanationStore
from reasonrec.explain.templates import load_templates
from tests.fakes import FakeLLM


def _opt(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_both_modes_explain_the_same_samples_into_fresh_stores(tmp_path):
    data_dir = prepare(read("ml-100k"), PrepareConfig(max_users=10, last_n_per_user=10)).save(tmp_path / "data")
    data = load_prepared(data_dir)
    # a "committed cache": profiles and some explanations, as an exported store holds
    full = ExplanationStore(tmp_path / "full.sqlite")
    Explainer(FakeLLM(), full, load_templates("movie"), ExplainConfig(batch_size=8)).run(
        data.samples, data.items, progress=False)
    cache = tmp_path / "cache.parquet"
    full.export_parquet(cache)

    calls = []

    def fake_explain(args):
        calls.append(args)
        store = ExplanationStore(_opt(args, "--store"))
        assert store.count() == store.frame("WHERE task = 'profile'").shape[0] > 0, "seeded with profiles only"
        test = data.samples[data.samples["split"] == "test"].head(int(_opt(args, "--max-samples")))
        summaries = Explainer(FakeLLM(), store, load_templates("movie"),
                              ExplainConfig(batch_size=int(_opt(args, "--batch-size")))).run(
            test, data.items, progress=False)
        Path(_opt(args, "--summary-json")).write_text(json.dumps([s.as_dict() for s in summaries]))
        return 1.5 if "--engine" in args else 0.0

    res = run_engines(str(data_dir), samples=6, actors=2, profiles_cache=cache, llm="embedded",
                      workdir=tmp_path, run=fake_explain, verbose=False)

    workers, ray = calls
    assert _opt(workers, "--workers") == _opt(ray, "--workers") == "2" and "--engine" not in workers
    assert _opt(ray, "--engine") == "ray" and _opt(ray, "--threads") == "1"
    assert _opt(workers, "--store") != _opt(ray, "--store")
    assert _opt(workers, "--batch-size") == "3" and _opt(workers, "--split") == "test"
    assert res["workers2"]["explanations"] == res["ray"]["explanations"] == 12  # generated, nothing cached
    assert res["ray"]["startup_s"] == 1.5 and res["ratio"] > 0
    assert res["identical_texts"] == {"same": 12, "workers_rows": 12, "ray_rows": 12, "all": True}
    assert not list(tmp_path.glob("reasonrec-bench-engines-*")), "the temporary stores are removed"


def test_no_profiles_seeds_nothing(tmp_path):
    data_dir = prepare(read("ml-100k"), PrepareConfig(max_users=5, last_n_per_user=10)).save(tmp_path / "data")

    def fake_explain(args):
        assert "--no-profiles" in args and ExplanationStore(_opt(args, "--store")).count() == 0
        Path(_opt(args, "--summary-json")).write_text(json.dumps([]))

    res = run_engines(str(data_dir), samples=2, profiles_cache=None, run=fake_explain, workdir=tmp_path,
                      verbose=False)
    assert res["ratio"] is None and res["ray"]["startup_s"] == 0.0
