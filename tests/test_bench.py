"""The benchmark harness: the smoke spec end to end on FakeLLM explanations (never a real LLM),
run caching, reruns of a changed experiment, the report, DeLong, slices and insights."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from reasonrec.bench import stats
from reasonrec.bench.insights import item_keywords, top_items
from reasonrec.bench.plan import apply_train_fraction, choose_point
from reasonrec.bench.render import build_report
from reasonrec.bench.run import BenchRunner
from reasonrec.bench.spec import load_spec
from reasonrec.bench.texts import MissingExplanations
from reasonrec.data.prepare import user_subset
from reasonrec.errors import ReasonrecError
from reasonrec.explain.generate import ExplainConfig, Explainer
from reasonrec.explain.store import ExplanationStore
from reasonrec.explain.templates import load_templates
from tests.fakes import FakeLLM

SMOKE = Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "smoke.yaml"
MOODS = ["cheerful", "gloomy", "tense", "gentle", "noisy", "quiet", "clever", "silly", "grand", "small"]


def _reply(prompt) -> str:
    """Deterministic texts that mention the candidate's genres (so item keywords exist) and, for
    the direct task, a rating."""
    text = prompt.canonical()
    h = int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)
    if prompt.prefix.startswith("Rating"):
        return f" {h % 5 + 1}"
    # the candidate's genres: from its metadata line (profile prompts, prompts without profiles) or
    # from its fake profile, which repeats them ("... is they enjoy <genres> stories ...")
    found = re.findall(r"recommended movie: [^\n]*?(?:genres: |enjoy )([A-Za-z', |-]+?)(?: stories|\\n|\"|$)", text)
    found = found or re.findall(r"genres: ([A-Za-z', |-]+)", text)
    cand = found[-1].replace("|", " ").replace(",", " ").lower().strip() if found else "unknown"
    return f" they enjoy {cand} stories with {MOODS[h % len(MOODS)]} moments."


def _spec(tmp: Path, **overrides):
    base = {"dataset": {"dir": str(tmp / "data" / "smoke"),
                        "prepare": {"dataset": "ml-100k", "max_users": 60, "last_n_per_user": 20}},
            "store": str(tmp / "store.sqlite"), "results": str(tmp / "results"), "report": str(tmp / "reports")}
    base.update(overrides)
    if "experiments" in overrides and "claims" not in overrides:
        # the smoke claims name the smoke experiments: a spec without some of them has none
        smoke_ids = {e["id"] for e in yaml.safe_load(SMOKE.read_text())["experiments"]}
        if not smoke_ids <= {e["id"] for e in overrides["experiments"]}:
            base["claims"] = []
    return load_spec(SMOKE, base)


def _runner(spec, tmp: Path, log: list | None = None, **kw):
    return BenchRunner(spec, backend_factory=lambda llm: FakeLLM(model_id=f"fake:{llm}"),
                       echo=(log.append if log is not None else lambda *_: None),
                       encoder_cache=tmp / "encoders", **kw)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    spec = _spec(tmp)
    runner = _runner(spec, tmp)
    data = runner.dataset()                       # prepared from the spec's `prepare` block
    store = ExplanationStore(spec.store)
    templates = load_templates("movie")
    llm = FakeLLM(model_id="fake:embedded", reply=_reply)
    Explainer(llm, store, templates, ExplainConfig(variant="contrastive")).run(data.samples, data.items, progress=False)
    sub = runner.slice(spec.subslice_users)
    Explainer(llm, store, templates, ExplainConfig(variant="direct")).run(sub.samples, sub.items, progress=False)
    log: list[str] = []
    counts = _runner(spec, tmp, log).run()
    # the experiments as the latest run saw them (a test that edits one stores the edit here)
    experiments = yaml.safe_load(SMOKE.read_text())["experiments"]
    return {"tmp": tmp, "spec": spec, "counts": counts, "log": log, "data": data, "experiments": experiments}


def test_smoke_spec_runs_every_experiment(bench):
    spec, counts = bench["spec"], bench["counts"]
    assert counts["failed"] == 0 and counts["skipped"] == 0, bench["log"]
    table = pd.read_csv(spec.results_dir / "results.csv")
    assert len(table) == 15 == counts["ran"]             # 6 experiments x 2 tasks + 3 classification-only
    assert set(table["id"]) == {e.id for e in spec.experiments}
    cls = table[table["task"] == "classification"]
    reg = table[table["task"] == "regression"]
    assert cls["test_auc"].between(0, 1).all() and cls["valid_auc"].notna().all()
    assert reg["test_rmse"].between(0, 4).all() and np.allclose(reg["test_rmse_norm"], reg["test_rmse"] / 4)
    row = table[(table["id"] == "lr-recsys") & (table["task"] == "classification")].iloc[0]
    assert row["slice"] == "all" and row["model_id"] == "fake:embedded" and row["coverage"] == 1.0
    assert row["fit_seconds"] > 0 and row["best_epoch"] >= 1 and row["seconds_per_epoch"] > 0
    z = np.load(spec.results_dir / row["predictions"])
    n_test = int((bench["data"].samples["split"] == "test").sum())
    assert z["pred"].shape == (n_test,) and z["attention"].shape == (n_test, 6)
    assert np.allclose(z["attention"].sum(1), 1, atol=1e-4)
    assert list(z["attention_names"]) == ["pos", "neg", "user", "item", "seq", "context"]
    assert "attention" not in np.load(spec.results_dir / table[table["id"] == "ncf"]["predictions"].iloc[0])
    # the probe: recorded for text readers only, the same for both tasks (it ignores the run)
    probe = table.set_index(["id", "task"])["probe_auc"]
    assert probe["lr-recsys", "classification"] == probe["lr-recsys", "regression"]
    assert np.isnan(probe["ncf", "classification"]) and np.isnan(probe["lr-recsys-none", "classification"])
    assert np.isnan(probe["llm-direct-sub", "classification"])
    # controls: oracle texts (q=0.9) carry the label, shuffled ones do not
    oracle = table[table["id"] == "lr-recsys-oracle-q90"].iloc[0]
    shuffled = table[table["id"] == "lr-recsys-shuffled"].iloc[0]
    assert oracle["control"] == "oracle" and oracle["q"] == 0.9 and oracle["model_id"] == "oracle"
    assert oracle["probe_auc"] > 0.85 and abs(shuffled["probe_auc"] - 0.5) < 0.1
    assert oracle["probe_lift"] > 0.1 and abs(shuffled["probe_lift"]) < 0.05   # beyond the ids, and nothing
    assert shuffled["control"] == "shuffled" and shuffled["model_id"] == "fake:embedded"
    assert bool(shuffled["encoder_cached"])      # the real texts' encoder: a permutation keeps each split's texts
    assert oracle["test_auc"] > table.set_index(["id", "task"])["test_auc"]["lr-recsys-none", "classification"] + 0.1
    sub = table[table["id"] == "lr-recsys-sub"].iloc[0]
    assert sub["slice"] == "u30" and sub["n_users"] == 30 and sub["n_test"] < n_test
    direct = table[table["id"] == "llm-direct-sub"]
    assert direct["fit_seconds"].eq(0).all() and direct["test_logloss"].isna().all()
    half = table[(table["id"] == "lr-recsys-50pct")].iloc[0]
    assert half["n_train"] == round(row["n_train"] * 0.5) and half["n_test"] == row["n_test"]
    assert (spec.results_dir / "insights.json").is_file()
    assert any("cached" not in line and "auc" in line for line in bench["log"])   # progress per run


def test_second_run_is_fully_cached(bench, monkeypatch):
    from reasonrec.estimator import Recommender

    def no_training(*a, **k):
        raise AssertionError("a cached run must not train")

    # a run stored before the probe's lift existed gets it back without a refit
    stored = next(p for p in (bench["spec"].results_dir / "runs").rglob("*.json")
                  if "probe_lift" in json.loads(p.read_text()))
    record = json.loads(stored.read_text())
    lift = record.pop("probe_lift")
    stored.write_text(json.dumps(record))
    monkeypatch.setattr(Recommender, "fit", no_training)
    counts = _runner(bench["spec"], bench["tmp"]).run()
    assert counts["ran"] == 0 and counts["cached"] == 15 and counts["failed"] == 0
    assert json.loads(stored.read_text())["probe_lift"] == lift


def test_changing_one_experiment_reruns_only_it(bench):
    spec0 = bench["spec"]
    experiments = bench["experiments"]
    for e in experiments:
        if e["id"] == "ncf":
            e["train"] = {"epochs": 2}
    spec = _spec(bench["tmp"], experiments=experiments)
    before = pd.read_csv(spec0.results_dir / "results.csv")
    counts = _runner(spec, bench["tmp"]).run()
    assert counts["ran"] == 2 and counts["cached"] == 13
    after = pd.read_csv(spec.results_dir / "results.csv")
    assert len(after) == 15
    changed = set(after["hash"]) - set(before["hash"])
    assert set(after[after["hash"].isin(changed)]["id"]) == {"ncf"}
    assert len(list((spec.results_dir / "runs" / "ncf").glob("*.json"))) == 2   # superseded runs removed
    # label changes are display-only: nothing reruns
    relabelled = [{**e, "label": e["id"].upper()} for e in experiments]
    assert _runner(_spec(bench["tmp"], experiments=relabelled), bench["tmp"]).run()["ran"] == 0


def test_missing_explanations_skip_with_the_command(bench):
    experiments = bench["experiments"] + [{"id": "aspects-sub", "tag": "aspects", "variant": "aspects",
                                            "users": "subslice"}]
    spec = _spec(bench["tmp"], experiments=experiments)
    log: list[str] = []
    counts = _runner(spec, bench["tmp"], log).run(only=["aspects-sub"])
    assert counts["skipped"] == 2 and counts["ran"] == 0 and counts["failed"] == 0
    msg = next(line for line in log if line.startswith("skip aspects-sub"))
    assert "reasonrec explain --dataset" in msg and "smoke-u30" in msg and "--variant aspects" in msg
    assert (Path(spec.dataset_dir.parent) / "smoke-u30" / "samples.parquet").is_file()
    status = json.loads((spec.results_dir / "status.json").read_text())
    assert status["aspects-sub"]["state"] == "skipped"
    with pytest.raises(MissingExplanations):
        _runner(spec, bench["tmp"], strict=True).run(only=["aspects-sub"])
    with pytest.raises(ReasonrecError):
        _runner(spec, bench["tmp"]).run(only=["no-such-experiment"])


def test_report_regenerates_from_results(bench):
    spec = bench["spec"]
    report = build_report(spec.results_dir, spec.report_dir)
    text = report.read_text()
    for section in ("## Claims", "## Table 2", "## Table 3", "## Table 4", "## Table 5", "## Table 6",
                    "## Figure 6", "## Figures 7 and 10", "## Section 5.5.3", "## Slices", "## Appendix",
                    "## Informativeness"):
        assert section in text, section
    assert "% Improved" in text and "DeLong" in text and "seeds: 1 (0)" in text
    figs = {p.name for p in (spec.report_dir / "figures").glob("*.png")}
    assert figs == {"figure6_regression.png", "figure6_classification.png", "figure7_attention.png",
                    "figure10_attention_shares.png", "informativeness.png"}
    claims = text.split("## Claims")[1].split("\n## ")[0]
    verdicts = re.findall(r"\| \*\*(holds|does not hold|inconclusive)\*\* \|", claims)
    assert len(verdicts) == len(spec.claims) == 13       # one row per (expanded) claim entry of the spec
    assert "Explanations beat free learnable vectors" in claims and "direct rating prediction" in claims
    assert "LR-Recsys beats the best baseline on AUC (Table 2)" in claims           # for_each filled in
    oracle = next(line for line in claims.splitlines() if "Oracle explanations" in line)
    assert "**holds**" in oracle and "gain +" in oracle
    attention = next(line for line in claims.splitlines() if "uniform share" in line)
    assert "uniform 2/6" in attention and "**inconclusive**" in attention     # one seed: no t over seeds
    assert "Welch" in next(line for line in claims.splitlines() if "Fig. 7b" in line)
    info = text.split("## Informativeness")[1].split("\n## ")[0]
    assert "oracle q=0.9" in info and "shuffled" in info and "generated" in info
    assert "not run" in text or "Not in the table yet" in text or "aspects" not in text
    # the CLI wraps the same function
    from typer.testing import CliRunner

    from reasonrec.cli import app

    out = CliRunner().invoke(app, ["bench", "report", "--spec", "smoke", "--results", str(spec.results_root),
                                   "--out", str(spec.report_root)])
    assert out.exit_code == 0, out.output
    assert "REPORT.md" in out.output


# --- statistics ---------------------------------------------------------------------------------------

def _brute_force(y, scores):
    """DeLong's structural components straight from the O(m n) definition."""
    y = np.asarray(y).astype(bool)
    aucs, v10s, v01s = [], [], []
    for s in scores:
        pos, neg = np.asarray(s)[y], np.asarray(s)[~y]
        psi = np.array([[1.0 if a > b else 0.5 if a == b else 0.0 for b in neg] for a in pos])
        aucs.append(psi.mean())
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    v10, v01 = np.array(v10s), np.array(v01s)
    cov = np.cov(v10) / v10.shape[1] + np.cov(v01) / v01.shape[1]
    return np.array(aucs), np.atleast_2d(cov)


def test_delong_hand_checked_case():
    # positives 0.9, 0.6; negatives 0.7, 0.2: pairs won 1, 1, 0, 1 -> AUC 3/4.
    # V10 = (1, 1/2), V01 = (1/2, 1): var = 0.125/2 + 0.125/2 = 0.125
    auc, var = stats.auc_variance([1, 1, 0, 0], [0.9, 0.6, 0.7, 0.2])
    assert auc == pytest.approx(0.75) and var == pytest.approx(0.125)


def test_delong_matches_the_definition_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    a = np.round(rng.random(40) + 0.3 * y, 1)            # rounding makes ties
    b = np.round(rng.random(40) + 0.1 * y, 1)
    aucs, cov = stats.delong_covariance(y, [a, b])
    ref_aucs, ref_cov = _brute_force(y, [a, b])
    np.testing.assert_allclose(aucs, ref_aucs)
    np.testing.assert_allclose(cov, ref_cov)
    from sklearn.metrics import roc_auc_score

    assert aucs[0] == pytest.approx(roc_auc_score(y, a))
    res = stats.delong_test(y, a, b)
    var = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
    z = (ref_aucs[0] - ref_aucs[1]) / np.sqrt(var)
    from scipy.stats import norm

    assert res["z"] == pytest.approx(z) and res["p"] == pytest.approx(2 * norm.sf(abs(z)))


def test_delong_identical_predictions_and_clear_winner():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = rng.random(200)
    assert stats.delong_test(y, p, p)["p"] == 1.0
    good = y + rng.normal(0, 0.3, 200)
    res = stats.delong_test(y, good, p)
    assert res["diff"] > 0.3 and res["p"] < 1e-6


def test_seed_comparisons_and_verdicts():
    same = stats.compare_seeds([0.7, 0.71, 0.72], [0.7, 0.71, 0.72])
    assert same["p"] == 1.0 and same["diff"] == 0
    one = stats.compare_seeds([0.70, 0.71, 0.72, 0.71], [0.65])
    assert one["test"] == "one-sample t" and one["diff"] == pytest.approx(0.06) and one["p"] < 0.01
    assert stats.sign(0.01, 0.01, True) == 1 and stats.sign(0.01, 0.01, False) == -1 and stats.sign(0.01, 0.2, True) == 0
    assert stats.verdict_better([1, 1]) == "holds"
    assert stats.verdict_better([1, 0]) == "inconclusive"
    assert stats.verdict_better([1, -1]) == "does not hold"
    assert stats.verdict_same([0, 0]) == "holds" and stats.verdict_not_worse([0, 1]) == "holds"
    assert stats.pct_improvement(0.75, 0.70, True) == pytest.approx(7.142857, rel=1e-5)
    assert stats.pct_improvement(0.9, 1.0, False) == pytest.approx(10.0)
    fit = stats.ols(np.arange(50), 2 * np.arange(50) + np.random.default_rng(0).normal(0, 1, 50))
    assert fit["slope"] == pytest.approx(2, abs=0.05) and fit["p"] < 1e-10


# --- slices -------------------------------------------------------------------------------------------

def test_train_fraction_keeps_valid_and_test(bench):
    s = bench["data"].samples
    half = apply_train_fraction(s, 0.25, seed=3)
    for split in ("valid", "test"):
        pd.testing.assert_frame_equal(half[half.split == split].reset_index(drop=True),
                                      s[s.split == split].reset_index(drop=True))
    n_train = int((s.split == "train").sum())
    assert int((half.split == "train").sum()) == round(0.25 * n_train)
    assert set(half.sample_id) <= set(s.sample_id)
    again = apply_train_fraction(s, 0.25, seed=3)
    assert again.sample_id.tolist() == half.sample_id.tolist()
    assert apply_train_fraction(s, 0.25, seed=4).sample_id.tolist() != half.sample_id.tolist()
    assert apply_train_fraction(s, 1.0, seed=3) is s


def test_user_subset_is_deterministic_and_nested():
    users = [str(u) for u in range(500)]
    a = user_subset(users, 150)
    assert a == user_subset(list(reversed(users)), 150) == user_subset(users * 2, 150)
    assert len(a) == 150 and set(a) < set(user_subset(users, 200))
    assert user_subset(users, 150, seed=1) != a


def test_same_subslice_for_every_experiment(bench):
    spec = bench["spec"]
    runner = _runner(spec, bench["tmp"])
    ids = [set(runner.slice(e.users).samples.user_id) for e in spec.experiments if e.users is not None]
    assert len(ids) == 2 and ids[0] == ids[1] and len(ids[0]) == spec.subslice_users


def test_spec_validation(tmp_path):
    with pytest.raises(ReasonrecError, match="unknown key"):
        _spec(tmp_path, experiments=[{"id": "x", "modle": "ncf"}])
    with pytest.raises(ReasonrecError, match="tag"):
        _spec(tmp_path, experiments=[{"id": "x", "tag": "best"}])
    with pytest.raises(ReasonrecError, match="train_fraction"):
        _spec(tmp_path, experiments=[{"id": "x", "train_fraction": 1.5}])
    spec = _spec(tmp_path, experiments=[{"id": "z", "model": "din"}, {"id": "s", "users": "subslice"}])
    z, s = spec.experiments
    assert z.explanations == "none" and z.tasks == ["classification", "regression"]
    # every model gets the same inputs by default: LR-Recsys reads the side features too
    assert z.config("classification").side_features and s.config("classification").side_features
    assert s.explanations == "text" and s.users == 30 and s.train["epochs"] == 3


# --- tuning -------------------------------------------------------------------------------------------

TUNE = {"lr": [0.0005, 0.05], "embed_dim": [4, 16]}       # far-apart lrs: the valid AUCs differ
TUNED = [{"id": "ncf", "label": "NCF", "tag": "baseline", "model": "ncf", "explanations": "none"},
         {"id": "ncf-text", "label": "NCF + explanations", "tag": "ncf_backbone", "model": "ncf",
          "explanations": "text"}]


def _tuned_spec(tmp: Path, **overrides):
    return _spec(tmp, **{"name": "tune", "seeds": [0, 1, 2], "tune_seeds": 2, "tasks": ["classification"],
                         "tune": TUNE, "experiments": TUNED, **overrides})


@pytest.fixture(scope="module")
def tuned(bench):
    """The smoke data and texts, two NCF experiments (with and without texts) tuned on a 2 x 2 grid."""
    spec = _tuned_spec(bench["tmp"])
    log: list[str] = []
    counts = _runner(spec, bench["tmp"], log).run()
    return {"spec": spec, "counts": counts, "log": log, "grid": pd.read_csv(spec.results_dir / "grid.csv"),
            "results": pd.read_csv(spec.results_dir / "results.csv")}


def _grid_of(grid: pd.DataFrame, exp_id: str) -> pd.DataFrame:
    return grid[grid["id"] == exp_id].sort_values("grid_index").reset_index(drop=True)


def test_choose_point_reads_validation_metrics_only():
    cls = [{"valid_auc": 0.70, "test_auc": 0.95}, {"valid_auc": 0.75, "test_auc": 0.55},
           {"valid_auc": 0.75, "test_auc": 0.99}]
    one = [[m] for m in cls]                                     # one seed per point
    assert choose_point("classification", one)[0] == 1          # best valid AUC; the tie goes to the first
    reg = [[{"valid_rmse": 1.0, "test_rmse": 0.5}], [{"valid_rmse": 0.9, "test_rmse": 2.0}]]
    assert choose_point("regression", reg)[0] == 1               # lowest valid RMSE
    assert choose_point("classification", [[{"valid_auc": float("nan")}], [cls[0]]])[0] == 1
    best, note = choose_point("classification", [[cls[0]], [None]])  # an unfinished grid: no choice yet
    assert best is None and "1 of 2" in note
    # the mean over seeds decides: one lucky seed (0.90) does not beat a point better on average
    lucky = [[{"valid_auc": 0.90}, {"valid_auc": 0.60}, {"valid_auc": 0.60}],
             [{"valid_auc": 0.72}, {"valid_auc": 0.71}, {"valid_auc": 0.73}]]
    best, note = choose_point("classification", lucky)
    assert best == 1 and "3 seeds" in note


def test_tuning_chooses_the_best_validation_point(tuned):
    spec, grid, results = tuned["spec"], tuned["grid"], tuned["results"]
    assert tuned["counts"]["failed"] == 0 and tuned["counts"]["skipped"] == 0, tuned["log"]
    # per experiment: 4 grid points x 2 tuning seeds, then seed 2 at the winner
    assert tuned["counts"]["ran"] == 2 * (4 * 2 + 1), tuned["log"]
    for exp in spec.experiments:
        g = _grid_of(grid, exp.id)
        for seed in (0, 1):
            assert g[g["seed"] == seed]["tuned"].map(json.loads).tolist() == exp.grid()
        assert set(g["seed"]) == {0, 1}
        assert g["valid_auc"].nunique() > 1                           # the choice is not a coin toss
        means = g.groupby("grid_index")["valid_auc"].mean()
        expected = g[g["grid_index"] == int(means.idxmax())]["tuned"].iloc[0]     # first maximum of the mean
        assert set(g.loc[g["chosen"], "tuned"]) == {expected} and g["chosen"].sum() == 2
        final = results[results["id"] == exp.id]
        assert final["seed"].tolist() == [0, 1, 2] and (final["tuned"] == expected).all()
        point = json.loads(expected)
        assert (final["lr"] == point["lr"]).all() and (final["embed_dim"] == point["embed_dim"]).all()
        assert (final["seconds_per_epoch"] > 0).all()
        # seeds 0 and 1 of the final runs are the chosen grid runs themselves, not second trainings
        chosen = g[g["chosen"]].set_index("seed")["hash"]
        assert final.set_index("seed")["hash"].loc[[0, 1]].tolist() == chosen.loc[[0, 1]].tolist()


def test_tuning_ignores_test_labels(tuned, bench):
    """Flipping every test label changes the test AUCs but neither the valid AUCs nor the choice."""
    tmp = bench["tmp"]
    flipped = tmp / "data" / "smoke-flipped"
    shutil.copytree(bench["spec"].dataset_dir, flipped, dirs_exist_ok=True)
    samples = pd.read_parquet(flipped / "samples.parquet")
    test = samples["split"] == "test"
    samples.loc[test, "label"] = 1 - samples.loc[test, "label"]
    samples.to_parquet(flipped / "samples.parquet", index=False)
    spec = _tuned_spec(tmp, dataset={"dir": str(flipped)}, results=str(tmp / "results-flipped"))
    counts = _runner(spec, tmp).run(only=["ncf"], seeds=[0])
    assert counts["ran"] == 8 and counts["failed"] == 0           # the grid only: seeds 0 and 1 tune
    a = _grid_of(tuned["grid"], "ncf")
    b = _grid_of(pd.read_csv(spec.results_dir / "grid.csv"), "ncf")
    np.testing.assert_allclose(b["valid_auc"], a["valid_auc"])
    np.testing.assert_allclose(b["test_auc"], 1 - a["test_auc"], atol=1e-6)
    assert b.loc[b["chosen"], "tuned"].tolist() == a.loc[a["chosen"], "tuned"].tolist()


def test_tuning_runs_are_cached(tuned, bench, monkeypatch):
    from reasonrec.estimator import Recommender

    def no_training(*a, **k):
        raise AssertionError("a cached run must not train")

    monkeypatch.setattr(Recommender, "fit", no_training)
    counts = _runner(tuned["spec"], bench["tmp"]).run()
    assert counts["ran"] == 0 and counts["cached"] == 18 and counts["failed"] == 0
    pd.testing.assert_frame_equal(pd.read_csv(tuned["spec"].results_dir / "results.csv"), tuned["results"])


def test_growing_the_grid_runs_only_the_new_points(tuned, bench):
    tmp = bench["tmp"]
    shutil.copytree(tuned["spec"].results_dir, tmp / "results-wider" / "tune")   # leave the fixture's alone
    wider = _tuned_spec(tmp, tune={**TUNE, "embed_dim": [4, 16, 32]}, results=str(tmp / "results-wider"))
    counts = _runner(wider, tmp).run(only=["ncf"])
    grid = _grid_of(pd.read_csv(wider.results_dir / "grid.csv"), "ncf")
    moved = grid.loc[grid["chosen"], "embed_dim"].iloc[0] == 32   # a new point won: seed 2 runs there
    assert counts["cached"] == 8 + (0 if moved else 1) and counts["ran"] == 4 + (1 if moved else 0)
    assert len(grid) == 12


def test_plan_counts_tuning_runs(tuned, bench, tmp_path):
    from typer.testing import CliRunner

    from reasonrec.cli import app

    raw = yaml.safe_load(SMOKE.read_text())
    spec = tuned["spec"]
    raw.update({"name": "tune", "seeds": [0, 1, 2], "tune_seeds": 2, "tasks": ["classification"], "tune": TUNE,
                "experiments": TUNED, "claims": [],
                "dataset": {"dir": str(spec.dataset_dir)}, "store": str(spec.store),
                "model_ids": {"embedded": "fake:embedded"}})     # no backend is built for the store key
    f = tmp_path / "tune.yaml"
    f.write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(app, ["bench", "plan", str(f)])
    assert out.exit_code == 0, out.output
    assert "18 runs over 2 experiments: 16 tuning runs" in out.output     # 2 x (4 x 2 + 1 more seed)


def test_report_shows_explanations_and_chosen_points(tuned):
    spec = tuned["spec"]
    text = build_report(spec.results_dir, spec.report_dir).read_text()
    table = text.split("## With vs without explanations")[1].split("\n## ")[0]
    row = next(line for line in table.splitlines() if line.startswith("| NCF |"))
    chosen = {e: json.loads(tuned["results"][tuned["results"]["id"] == e]["tuned"].iloc[0]) for e in ("ncf", "ncf-text")}
    assert f"lr {chosen['ncf']['lr']:g}, embed_dim {chosen['ncf']['embed_dim']}" in row and "(tuned)" in row
    assert "| text (autoencoder) |" in row and "Δ AUC" in table and "LogLoss ↓ with" in table
    assert "**Tuning**" in text and "16 grid runs" in text and "first 2 seeds" in text


def test_spec_tune_validation(tmp_path):
    with pytest.raises(ReasonrecError, match=r"experiment 'x'.*tune: cannot tune \['learning_rate'\]"):
        _spec(tmp_path, experiments=[{"id": "x", "tune": {"learning_rate": [0.1]}}])
    with pytest.raises(ReasonrecError, match=r"experiment 'x'.*tune.lr"):
        _spec(tmp_path, experiments=[{"id": "x", "tune": {"lr": []}}])
    with pytest.raises(ReasonrecError, match=r"experiment 'x'.*tune.embed_dim"):
        _spec(tmp_path, experiments=[{"id": "x", "tune": {"embed_dim": [8, 8.5]}}])
    with pytest.raises(ReasonrecError, match=r"experiment 'd'.*only trained"):
        _spec(tmp_path, experiments=[{"id": "d", "kind": "llm_direct", "tune": {"lr": [0.1]}}])
    with pytest.raises(ReasonrecError, match=r"tune: cannot tune \['seed'\]"):
        _spec(tmp_path, tune={"seed": [0, 1]})
    spec = _spec(tmp_path, tune={"lr": [0.001, "1e-2"], "embed_dim": [8, 16]},
                 experiments=[{"id": "a"}, {"id": "b", "tune": None}, {"id": "c", "tune": {"dropout": [0, 0.2]}},
                              {"id": "d", "kind": "llm_direct"}])
    a, b, c, d = spec.experiments
    assert a.tune == {"lr": [0.001, 0.01], "embed_dim": [8, 16]}     # the spec's default grid
    assert a.grid()[1] == {"lr": 0.001, "embed_dim": 16} and len(a.grid()) == 4
    assert b.tune is None and b.grid() == [] and d.tune is None       # `tune: null` opts out; nothing to tune
    assert c.grid() == [{"dropout": 0.0}, {"dropout": 0.2}]
    # a point enters the hash through the values it sets; the grid itself does not (growing it keeps runs)
    assert a.resolved() == b.resolved()
    assert a.at(a.grid()[0]).resolved()["train"]["lr"] == 0.001 and a.at(a.grid()[1]).resolved()["embed_dim"] == 16


# --- insights -----------------------------------------------------------------------------------------

def test_insights_find_an_items_distinctive_words():
    rows, sid = [], itertools.count()
    rng = np.random.default_rng(0)
    generic = ["great", "story", "actors", "plot", "ending", "music"]
    for item in ("a", "b", "c", "d"):
        for _ in range(30):
            words = list(rng.choice(generic, 3))
            pos = words + (["zebra", "savanna"] if item == "a" else [str(rng.choice(["drama", "comedy"]))])
            neg = words + (["slow"] if item == "a" else ["loud"])
            rows.append({"sample_id": next(sid), "item_id": item, "split": "test" if item in "ab" else "train",
                         "positive": "The consumer watched this movie because " + " ".join(pos),
                         "negative": "The consumer did not watch this movie because " + " ".join(neg)})
    frame = pd.DataFrame(rows)
    samples, expl = frame[["sample_id", "item_id", "split"]], frame[["sample_id", "positive", "negative"]]
    kw = item_keywords(expl, samples, "a", top=3, strip_prefixes=["The consumer watched this movie because",
                                                                   "The consumer did not watch this movie because"])
    assert set(kw["positive"]["word"]) == {"zebra", "savanna"}      # generic words never outrank them
    assert kw["negative"]["word"].iloc[0] == "slow"
    assert not set(kw["positive"]["word"]) & set(generic) and "consumer" not in set(kw["positive"]["word"])
    assert top_items(samples, expl, n=2) == ["a", "b"]


def test_report_insights_come_from_the_run(bench):
    ins = json.loads((bench["spec"].results_dir / "insights.json").read_text())
    assert len(ins["items"]) == 3 and ins["model_id"] == "fake:embedded"
    first = ins["items"][0]
    assert first["test_samples"] >= 1 and first["profile"]
    words = [w["word"] for w in first["keywords"]["positive"]]
    assert words and not {"consumer", "the", "because"} & set(words)


def test_every_bench_command_is_registered():
    from typer.testing import CliRunner

    from reasonrec.cli import app

    out = CliRunner().invoke(app, ["bench", "--help"])
    assert out.exit_code == 0
    for command in ("throughput", "serve", "run", "report", "plan"):
        assert command in out.output, command


class CountingEncoder:
    """A fake encoder for the memo's control flow: counts the texts it is asked to encode."""

    name, dim = "counting", 3

    def __init__(self):
        self.seen = 0

    def encode(self, texts):
        self.seen += len(texts)
        return np.array([[len(t), t.count("a"), 1.0] for t in texts])


def test_encoded_vectors_outlive_the_process(tmp_path):
    from reasonrec.bench.encoders import _MemoEncoder

    store = tmp_path / "vectors.npz"
    first = CountingEncoder()
    out = _MemoEncoder(first, store).encode(["banana", "kiwi", "banana"])
    assert first.seen == 2 and out.shape == (3, 3) and store.is_file()
    again = CountingEncoder()                                    # a later process: nothing re-encoded
    memo = _MemoEncoder(again, store)
    assert np.array_equal(memo.encode(iter(["kiwi", "banana"])), out[[1, 0]])
    assert again.seen == 0
    assert memo.encode(["apple"]).tolist() == [[5.0, 1.0, 1.0]] and again.seen == 1
    assert len(_MemoEncoder(CountingEncoder(), store).memo) == 3
