"""Claims as data (bench/claims.py) on synthetic results, and the control texts and probe
(bench/controls.py) on synthetic samples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from reasonrec.bench import controls, stats
from reasonrec.bench.claims import evaluate, family_summary, parse_claims
from reasonrec.bench.results import Results
from reasonrec.errors import ReasonrecError

SEEDS = range(5)


def _results(tmp_path, rows: dict) -> Results:
    """results.csv + spec.json for experiments id -> (model, tag, explanations, control, [AUC per seed])."""
    records, meta = [], []
    for exp_id, (model, tag, expl, control, aucs) in rows.items():
        meta.append({"id": exp_id, "label": exp_id, "tag": tag, "kind": "train", "model": model, "users": None,
                     "train_fraction": 1.0, "explanations": expl, "control": control,
                     "q": float(exp_id[1:]) / 10 if control == "oracle" else None})
        for seed, auc in zip(SEEDS, aucs):
            records.append({"id": exp_id, "label": exp_id, "tag": tag, "model": model, "task": "classification",
                            "seed": seed, "slice": "all", "users": None, "train_fraction": 1.0,
                            "explanations": expl, "control": control, "compare_to": None, "test_auc": auc,
                            "test_logloss": 1 - auc, "test_rmse": np.nan, "test_mae": np.nan,
                            "probe_auc": 0.5 if expl == "text" else np.nan,
                            "llm_name": "x", "predictions": None})
    pd.DataFrame(records).to_csv(tmp_path / "results.csv", index=False)
    (tmp_path / "spec.json").write_text(json.dumps({"experiments": meta}))
    return Results(tmp_path)


@pytest.fixture
def results(tmp_path):
    noise = np.array([0.001, -0.002, 0.0015, -0.001, 0.0005])
    return _results(tmp_path, {
        "none": ("ncf", "baseline", "none", None, 0.70 + noise),
        "text": ("ncf", "with_explanations", "text", None, 0.75 + noise[::-1]),
        "worse": ("ncf", "other", "text", None, 0.69 + noise),
        "other-base": ("din", "baseline", "none", None, 0.72 + noise[::-1]),
        "q6": ("ncf", "control", "text", "oracle", 0.71 + noise),
        "q8": ("ncf", "control", "text", "oracle", 0.74 + noise[::-1]),
        "q9": ("ncf", "control", "text", "oracle", 0.77 + noise),
    })


def _one(entry: dict, ids) -> dict:
    [claim] = parse_claims([entry], ids)
    return claim


def test_better_holds_and_fails(results):
    ids = set(results.meta)
    holds = _one({"text": "t", "a": "text", "b": {"best_of": {"tag": "baseline"}}, "metrics": ["auc", "logloss"]}, ids)
    verdict, evidence = evaluate(holds, results)
    assert verdict == "holds" and "vs other-base" in evidence     # the best baseline, not the first one
    assert evaluate(_one({"text": "t", "a": "worse", "b": "none", "metrics": ["auc"]}, ids), results)[0] == \
        "does not hold"
    # a significant gain that is smaller than min_gain does not count
    small = _one({"text": "t", "a": "text", "b": "none", "metrics": ["auc"], "min_gain": 0.1}, ids)
    assert evaluate(small, results)[0] == "does not hold"


def test_not_worse_same_and_max_drop(results):
    ids = set(results.meta)
    assert evaluate(_one({"text": "t", "a": "text", "b": "none", "direction": "not_worse"}, ids), results)[0] == "holds"
    drop = _one({"text": "t", "a": "worse", "b": "none", "direction": "not_worse", "metrics": ["auc"],
                 "max_drop": 0.003}, ids)
    assert evaluate(drop, results)[0] == "does not hold"
    assert evaluate(_one({"text": "t", "a": "text", "b": "none", "direction": "same"}, ids), results)[0] == \
        "does not hold"


def test_holm_adjusts_step_down_and_keeps_the_input_order():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]


def test_a_family_counts_its_tests_and_names_what_survives_holm(results):
    ids = set(results.meta)
    entries = [{"text": "t", "a": "text", "b": "none", "direction": "same", "family": "f"},
               {"text": "u", "a": "none", "b": "none", "direction": "same", "family": "f"},
               {"text": "v", "a": "text", "b": "none", "direction": "same"}]       # no family: not read
    claims = [_one(e, ids) for e in entries]
    [line] = family_summary(claims, results)
    assert "2 claims, 4 tests" in line and "2 at p < 0.05" in line
    assert "text AUC (Holm p=" in line and "none AUC" not in line


def test_rises_reads_the_slope_over_rows(results):
    ids = set(results.meta)
    up = {"text": "t", "direction": "rises", "b": "none",
          "rows": [{"id": "q6", "x": 0.6}, {"id": "q8", "x": 0.8}, {"id": "q9", "x": 0.9}]}
    verdict, evidence = evaluate(_one(up, ids), results)
    assert verdict == "holds" and "slope +" in evidence
    down = {**up, "rows": [{"id": "q9", "x": 0.6}, {"id": "q8", "x": 0.8}, {"id": "q6", "x": 0.9}]}
    assert evaluate(_one(down, ids), results)[0] == "does not hold"


def test_for_each_expands_and_bad_entries_fail():
    ids = {"a-none", "a-text", "b-none", "b-text"}
    claims = parse_claims([{"text": "{m} do no harm", "for_each": {"m": ["a", "b"]}, "a": "{m}-text",
                            "b": "{m}-none", "direction": "not_worse"}], ids)
    assert [(c["text"], c["a"], c["b"]) for c in claims] == [("a do no harm", "a-text", "a-none"),
                                                              ("b do no harm", "b-text", "b-none")]
    for bad in ({"text": "t", "a": "nope", "b": "a-none"}, {"text": "t", "a": "a-text", "b": "a-none", "direction": "up"},
                {"text": "t", "a": "a-text", "b": "a-none", "metrics": ["acc"]},
                {"text": "t", "a": "a-text", "b": "a-none", "direction": "rises", "rows": [{"id": "a-text"}]}):
        with pytest.raises(ReasonrecError):
            parse_claims([bad], ids)


def test_informativeness_points_pair_rows_with_their_model_without(results):
    pts = results.informativeness_points().set_index("id")
    assert set(pts.index) == {"text", "worse", "q6", "q8", "q9"}
    assert (pts["without"] == "none").all()
    assert pts.loc["q9", "gain"] == pytest.approx(0.07, abs=1e-3) and pts.loc["q9", "kind"] == "oracle q=0.9"
    assert pts.loc["text", "kind"] == "generated (x)"


# --- controls ------------------------------------------------------------------------------------------

def _samples(n=10_000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"sample_id": np.arange(n) * 3 + 7, "item_id": rng.integers(0, 50, n),
                         "label": rng.integers(0, 2, n), "split": rng.choice(["train", "valid", "test"], n)})


def _items():
    return pd.DataFrame({"item_id": np.arange(50), "title": [f"Movie {i}" for i in range(50)]})


def test_oracle_states_the_truth_for_a_share_q():
    s = _samples()
    for q in (0.6, 0.9):
        t = controls.oracle_texts(s, _items(), q).merge(s, on="sample_id")
        says_like = ~t["positive"].str.contains(" not |does not|unlikely")
        assert abs((says_like == (t["label"] == 1)).mean() - q) < 0.015
    # fixed per sample: the same texts again, and truthful samples at 0.6 stay truthful at 0.9
    assert controls.oracle_texts(s, _items(), 0.6).equals(controls.oracle_texts(s, _items(), 0.6))
    ids = s["sample_id"].to_numpy()
    assert not (controls.oracle_truthful(ids, 0.6) & ~controls.oracle_truthful(ids, 0.9)).any()
    t = controls.oracle_texts(s, _items(), 0.8)
    assert t["positive"].nunique() > 100 and t["negative"].nunique() >= 4      # not just two strings


def test_shuffled_is_a_permutation_within_each_split():
    s = _samples(2_000)
    table = pd.DataFrame({"sample_id": s["sample_id"], "positive": [f"p{i}" for i in range(len(s))],
                          "negative": [f"n{i}" for i in range(len(s))]})
    out = controls.shuffled_texts(table, s, seed=3, columns=("positive", "negative"))
    assert (out["positive"] != table["positive"]).mean() > 0.9
    assert (out["positive"].str[1:] == out["negative"].str[1:]).all()          # pairs move together
    split = s.set_index("sample_id")["split"]
    origin = out["positive"].str[1:].astype(int).map(lambda i: split.iloc[i])
    assert (origin.to_numpy() == out["sample_id"].map(split).to_numpy()).all()
    assert sorted(out["positive"]) == sorted(table["positive"])
    assert out.equals(controls.shuffled_texts(table, s, 3, ("positive", "negative")))
    assert not out.equals(controls.shuffled_texts(table, s, 4, ("positive", "negative")))


def test_probe_auc_noise_and_oracle():
    from sklearn.feature_extraction.text import CountVectorizer

    s = _samples(6_000)
    rng = np.random.default_rng(1)
    train, test = s["split"] == "train", s["split"] == "test"
    noise = rng.normal(size=(len(s), 16))
    assert abs(controls.probe_auc(noise[train], s.loc[train, "label"], noise[test], s.loc[test, "label"]) - 0.5) < 0.05
    t = controls.oracle_texts(s, _items(), 0.95).set_index("sample_id").loc[s["sample_id"]]
    vec = CountVectorizer(binary=True).fit(t["positive"] + " " + t["negative"])
    codes = np.hstack([vec.transform(t[c]).toarray() for c in ("positive", "negative")])
    assert controls.probe_auc(codes[train], s.loc[train, "label"], codes[test], s.loc[test, "label"]) > 0.9
