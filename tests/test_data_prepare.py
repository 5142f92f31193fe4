"""The samples contract: split, histories, labels, subsampling, and MovieLens layouts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from reasonrec.cli import app
from reasonrec.data.prepare import PrepareConfig, load_prepared, prepare
from reasonrec.data.readers import read
from reasonrec.errors import DataError


@pytest.fixture(scope="module")
def ml100k():
    return prepare(read("ml-100k"))


def test_embedded_ml100k_counts_and_split(ml100k):
    s = ml100k.samples
    assert len(s) == 100_000
    assert s["user_id"].nunique() == 943
    assert s["item_id"].nunique() == 1682
    test_frac = (s["split"] == "test").mean()
    assert 0.19 <= test_frac <= 0.21
    valid_share_of_train = (s["split"] == "valid").sum() / (s["split"] != "test").sum()
    assert 0.09 <= valid_share_of_train <= 0.12
    assert set(s["label"].unique()) == {0, 1}
    assert (s["label"] == (s["rating"] >= 4)).all()
    assert ml100k.card["label_rate"] == pytest.approx(s["label"].mean(), abs=1e-4)


def test_split_is_temporal_per_user(ml100k):
    s = ml100k.samples
    order = {"train": 0, "valid": 1, "test": 2}
    for _, g in s.groupby("user_id"):
        ranks = g["split"].map(order).to_numpy()
        assert (ranks[1:] >= ranks[:-1]).all(), "a user's split must go train -> valid -> test in time"
        ts = g["timestamp"].to_numpy()
        assert (ts[1:] >= ts[:-1]).all()


def test_history_is_the_previous_five_and_never_later(ml100k):
    s = ml100k.samples
    for _, g in s.groupby("user_id"):
        items = g["item_id"].tolist()
        ts = g["timestamp"].tolist()
        when = {}
        for k, (item, hist, t) in enumerate(zip(items, g["history"], ts)):
            assert hist == items[max(0, k - 5):k]
            for h in hist:
                assert when[h] <= t, "a history item must not come after the interaction"
            when.setdefault(item, t)
    assert ml100k.card["history_full_5"] > 0.9


def test_last_n_per_user_keeps_full_timeline_histories(ml100k):
    sub = prepare(read("ml-100k"), PrepareConfig(last_n_per_user=20))
    assert sub.samples.groupby("user_id").size().max() == 20
    assert (sub.samples["split"] == "test").sum() >= 3000
    full = ml100k.samples.set_index(["user_id", "item_id", "timestamp"])["history"]
    for row in sub.samples.sample(200, random_state=0).itertuples():
        assert list(row.history) == list(full.loc[(row.user_id, row.item_id, row.timestamp)])


def test_max_users_is_deterministic():
    a = prepare(read("ml-100k"), PrepareConfig(max_users=50, seed=3)).samples
    b = prepare(read("ml-100k"), PrepareConfig(max_users=50, seed=3)).samples
    c = prepare(read("ml-100k"), PrepareConfig(max_users=50, seed=4)).samples
    assert a["user_id"].nunique() == 50
    assert a.equals(b)
    assert set(a["user_id"]) != set(c["user_id"])


def test_save_and_load_round_trip(ml100k, tmp_path):
    ml100k.save(tmp_path)
    back = load_prepared(tmp_path)
    assert len(back.samples) == 100_000
    assert back.samples["history"].iloc[10] == ml100k.samples["history"].iloc[10]
    assert (tmp_path / "card.md").read_text().startswith("# Dataset card: ml-100k")


def test_cli_prepare_prints_card(tmp_path):
    result = CliRunner().invoke(app, ["data", "prepare", "--dataset", "ml-100k", "--max-users", "30",
                                      "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "positive rate" in result.output and "users | 30" in result.output
    shown = CliRunner().invoke(app, ["data", "show", str(tmp_path / "d")])
    assert "Dataset card" in shown.output


# --- GroupLens layouts and bad input ---------------------------------------------------

def _write_ml100k(d, data_lines):
    d.mkdir()
    (d / "u.data").write_text("".join(data_lines))
    genres = "|".join(["0"] * 19)
    (d / "u.item").write_text(f"1|Toy Story (1995)|01-Jan-1995||http://x|{genres[:-1]}1\n"
                              f"2|GoldenEye (1995)|01-Jan-1995||http://x|{genres}\n"
                              f"3|Usual Suspects, The (1995)|01-Jan-1995||http://x|{genres}\n",
                              encoding="latin-1")
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return d


def test_grouplens_ml100k_layout(tmp_path):
    d = _write_ml100k(tmp_path / "ml", ["1\t1\t5\t100\n", "1\t2\t3\t200\n", "1\t3\t4\t300\n", "2\t1\t2\t50\n",
                                        "2\t3\t5\t60\n"])
    ds = read("movielens", d)
    assert len(ds.interactions) == 5
    titles = dict(zip(ds.items["item_id"], ds.items["title"]))
    assert titles["3"] == "The Usual Suspects" and titles["1"] == "Toy Story"
    assert "Western" in ds.items.set_index("item_id").loc["1", "categories"]
    out = prepare(ds).samples
    assert out[out.user_id == "1"]["history"].tolist() == [[], ["1"], ["1", "2"]]


def test_grouplens_ml1m_and_csv_layouts(tmp_path):
    m1 = tmp_path / "ml-1m"
    m1.mkdir()
    (m1 / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n")
    (m1 / "movies.dat").write_text("10::Matrix, The (1999)::Action|Sci-Fi\n20::Heat (1995)::Crime\n",
                                   encoding="latin-1")
    (m1 / "users.dat").write_text("1::F::1::10::48067\n")
    ds = read("movielens", m1)
    assert ds.items.set_index("item_id").loc["10", "title"] == "The Matrix"
    assert ds.users.iloc[0]["feat_age"] == "Under 18"
    latest = tmp_path / "ml-latest-small"
    latest.mkdir()
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.5,964982703\n1,3,4.0,964981247\n")
    (latest / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                       '3,"Grumpier Old Men, The (1995)",Comedy|Romance\n')
    ds = read("movielens", latest)
    assert ds.rating_scale == (0.5, 5.0)
    assert ds.items.set_index("item_id").loc["3", "title"] == "The Grumpier Old Men"


@pytest.mark.parametrize("line, field, words", [
    ("1\t2\tfive\t100\n", "rating", "expected a number"),
    ("1\t2\t5\tyesterday-ish\n", "timestamp", "cannot parse a timestamp"),
    ("1\t2\t5\n", "timestamp", "expected 4 fields"),
])
def test_bad_rows_name_file_line_field(tmp_path, line, field, words):
    d = _write_ml100k(tmp_path / "ml", ["1\t1\t5\t100\n", line])
    with pytest.raises(DataError) as err:
        read("movielens", d)
    msg = str(err.value)
    assert "u.data" in msg and "line 2" in msg and f"field '{field}'" in msg and words in msg
    ds = read("movielens", d, skip_bad_rows=True)
    assert ds.meta["bad_rows"] == 1 and len(ds.interactions) == 1


def test_duplicates_and_empty_and_missing_column(tmp_path):
    d = _write_ml100k(tmp_path / "dup", ["1\t1\t5\t100\n", "1\t1\t5\t100\n"])
    with pytest.raises(DataError, match=r"u.data, line 2.*duplicate interaction"):
        prepare(read("movielens", d), PrepareConfig(duplicates="error"))
    kept = prepare(read("movielens", d))  # the default policy keeps the first copy and says so
    assert kept.card["duplicates_dropped"] == 1 and kept.card["dropped"] == {"duplicate": 1}
    assert kept.rejects[["line", "kind"]].values.tolist() == [[2, "dropped"]]
    e = _write_ml100k(tmp_path / "empty", [])
    with pytest.raises(DataError, match="no interactions"):
        prepare(read("movielens", e))
    m = tmp_path / "csv"
    m.mkdir()
    (m / "ratings.csv").write_text("userId,movieId,score,timestamp\n1,1,4,5\n")
    with pytest.raises(DataError, match=r"ratings.csv, line 1, field 'rating': missing column"):
        read("movielens", m)
    with pytest.raises(DataError, match="not a MovieLens directory"):
        read("movielens", tmp_path)
