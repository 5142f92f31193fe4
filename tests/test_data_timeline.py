"""The columnar prepare (Polars sort, Arrow history windows) against the pure-pandas one it replaced.

`_reference` is the previous implementation of the order, history, subsampling and split steps,
kept here verbatim in behaviour: stable sort by (user, time, line), groupby positions, a Python
loop for the windows. Every case compares whole sample tables, not summaries.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from reasonrec.data import synth
from reasonrec.data.prepare import PrepareConfig, _split, load_prepared, prepare, user_subset
from reasonrec.data.readers import read
from reasonrec.data.readers._fast import read_ratings_csv
from reasonrec.data.schema import RawDataset
from reasonrec.data.timeline import last_k_windows, trim_to_last, user_timeline


def _reference(ds: RawDataset, cfg: PrepareConfig) -> pd.DataFrame:
    inter = ds.interactions.copy()
    inter["user_id"] = inter["user_id"].astype(str)
    inter["item_id"] = inter["item_id"].astype(str)
    if "line" not in inter.columns:
        inter["line"] = np.arange(1, len(inter) + 1)
    if cfg.max_users is not None:
        inter = inter[inter["user_id"].isin(set(user_subset(inter["user_id"].unique(), cfg.max_users, cfg.seed)))]
    inter = inter.sort_values(["user_id", "timestamp", "line"], kind="stable").reset_index(drop=True)
    pos = inter.groupby("user_id", sort=False).cumcount().to_numpy()
    count = inter.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    items = inter["item_id"].to_numpy()
    history = [[] for _ in range(len(inter))]
    for j in range(cfg.history_len, 0, -1):
        for r in np.nonzero(pos >= j)[0]:
            history[r].append(items[r - j])
    inter["history"] = history
    if cfg.last_n_per_user is not None:
        inter = inter[pos >= count - cfg.last_n_per_user].reset_index(drop=True)
        pos = inter.groupby("user_id", sort=False).cumcount().to_numpy()
        count = inter.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    inter["split"] = _split(pos, count, cfg.test_frac, cfg.valid_frac)
    return inter[["user_id", "item_id", "rating", "timestamp", "split", "history"]]


def _assert_same(ds_factory, cfg: PrepareConfig) -> pd.DataFrame:
    got = prepare(ds_factory(), cfg).samples
    want = _reference(ds_factory(), cfg)
    assert got["sample_id"].tolist() == list(range(len(want)))
    for col in ("user_id", "item_id", "rating", "timestamp", "split"):
        assert got[col].tolist() == want[col].tolist(), col
    assert [list(h) for h in got["history"]] == want["history"].tolist()
    return got


def _tricky() -> RawDataset:
    """Same-second ties, users with 1-3 rows, ids whose text order differs from their number
    order ("10" < "9"), non-ASCII ids, and a file order that is not the time order."""
    rng = np.random.default_rng(7)
    rows = []
    for u in range(60):
        user = ["9", "10", "100", "ü2", "Zoë"][u] if u < 5 else f"u{u}"
        n = [1, 2, 3][u % 3] if u < 30 else int(rng.integers(4, 40))
        stamps = 1_000_000 + np.sort(rng.integers(0, 6, n)) * 60  # few distinct seconds: many ties
        rows += [(user, f"i{int(rng.integers(0, 25))}", float(rng.integers(1, 6)), int(t)) for t in stamps]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]).sample(frac=1, random_state=3)
    frame = frame.drop_duplicates(["user_id", "item_id", "timestamp"]).reset_index(drop=True)
    frame["line"] = np.arange(2, len(frame) + 2)
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(25)], "title": "t", "categories": "", "description": ""})
    return RawDataset("tricky", "movie", frame, items, pd.DataFrame({"user_id": []}))


CONFIGS = [PrepareConfig(), PrepareConfig(max_users=20, seed=3), PrepareConfig(last_n_per_user=2),
           PrepareConfig(max_users=35, last_n_per_user=5, seed=1), PrepareConfig(history_len=2, test_frac=0.3)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"users{c.max_users}-last{c.last_n_per_user}-h{c.history_len}")
def test_tricky_timelines_match_the_pandas_reference(cfg):
    got = _assert_same(_tricky, cfg)
    assert got["history"].map(len).min() == 0


@pytest.mark.parametrize("cfg", [PrepareConfig(), PrepareConfig(max_users=50, last_n_per_user=10, seed=2)],
                         ids=["full", "subsampled"])
def test_ml100k_matches_the_pandas_reference(cfg):
    _assert_same(lambda: read("ml-100k"), cfg)


def test_synthetic_ml20m_layout_sample_matches_the_reference(tmp_path):
    data = synth.write_movielens(tmp_path / "ml", rows=100_000, users=1_500, items=4_000, seed=5)
    _assert_same(lambda: read("movielens", data), PrepareConfig(last_n_per_user=40))


def test_saved_history_reads_back_as_lists_of_str(tmp_path):
    prepared = prepare(_tricky())
    assert isinstance(prepared.samples["history"].dtype, pd.ArrowDtype)
    back = load_prepared(prepared.save(tmp_path / "p")).samples
    assert all(isinstance(h, list) and all(isinstance(i, str) for i in h) for h in back["history"])
    assert back["history"].tolist() == [list(h) for h in prepared.samples["history"]]
    assert set(prepared.items["item_id"]) >= {i for h in back["history"] for i in h} | set(back["item_id"])


def test_timeline_orders_by_text_then_time_then_line_then_input():
    users = pd.Series(["b", "a", "b", "a", "a"], dtype="str")
    order, pos, count = user_timeline(users, pd.Series([5, 7, 5, 7, 1]), pd.Series([9, 4, 9, 3, 8]))
    # rows 1 and 3 tie on user and time: line decides; rows 0 and 2 tie on all three: input order
    assert order.tolist() == [4, 3, 1, 0, 2]
    assert pos.tolist() == [0, 1, 2, 0, 1]
    assert count.tolist() == [3, 3, 3, 2, 2]


def test_windows_stop_at_the_user_boundary_and_keep_oldest_first():
    items = pa.array(["a", "b", "c", "x", "y"])
    got = last_k_windows(items, np.array([0, 1, 2, 0, 1]), 2).to_pylist()
    assert got == [[], ["a"], ["a", "b"], [], ["x"]]
    assert last_k_windows(items, np.array([0, 1, 2, 0, 1]), 0).to_pylist() == [[]] * 5


def test_trim_to_last_renumbers_the_kept_rows():
    pos, count = np.array([0, 1, 2, 3, 0, 1]), np.array([4, 4, 4, 4, 2, 2])
    keep, new_pos, new_count = trim_to_last(pos, count, 3)
    assert keep.tolist() == [False, True, True, True, True, True]
    assert new_pos.tolist() == [0, 1, 2, 0, 1]
    assert new_count.tolist() == [3, 3, 3, 2, 2]


def test_synthetic_dump_shape_and_reuse(tmp_path):
    counts = synth.user_counts(10_007, 300, np.random.default_rng(0))
    assert counts.sum() == 10_007 and counts.min() >= 20 and counts.max() > 3 * counts.min()
    out = synth.write_movielens(tmp_path / "d", rows=10_007, users=300, items=500, seed=1)
    ratings = out / "ratings.csv"
    before = ratings.stat().st_mtime_ns
    synth.write_movielens(tmp_path / "d", rows=10_007, users=300, items=500, seed=1)
    assert ratings.stat().st_mtime_ns == before, "the same shape must reuse the file"
    fast = read_ratings_csv(ratings, {"user_id": "userId", "item_id": "movieId", "rating": "rating",
                                      "timestamp": "timestamp"}, (0.5, 5.0))
    assert fast is not None, "the dump must be clean enough for the vectorised reader"
    frame = fast[0]
    assert len(frame) == 10_007 and frame["user_id"].nunique() == 300
    assert set(frame["rating"].unique()) <= set(np.arange(1, 11) / 2)
    assert not frame.duplicated(["user_id", "item_id", "timestamp"]).any()
    top = frame["item_id"].value_counts()
    assert top.iloc[:25].sum() > 0.2 * len(frame), "item popularity should be skewed"
    synth.write_movielens(tmp_path / "d", rows=10_000, users=300, items=500, seed=1)
    assert len(pd.read_csv(ratings)) == 10_000, "a new shape must rewrite the file"
