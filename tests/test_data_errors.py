"""Issue #16: every class of bad input is a DataError naming file, line and field, or a counted
skip with --skip-bad-rows; never a traceback, never a silently wrong dataset. Hand-made files in the
real public layouts."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from reasonrec.cli import app
from reasonrec.data.prepare import PrepareConfig, load_prepared, prepare
from reasonrec.data.readers import read
from reasonrec.data.readers._io import clean_text
from reasonrec.data.readers._time import TimeParser
from reasonrec.errors import DataError

GENRES = "|".join(["0"] * 18 + ["1"])


def write(path: Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data if isinstance(data, bytes) else data.encode(encoding)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def where(err: DataError) -> tuple:
    return Path(err.file).name if err.file else None, err.line, err.field


def raises(fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


def ml100k(d: Path, data: str | bytes, *, item: bool = True) -> Path:
    write(d / "u.data", data)
    if item:
        write(d / "u.item", f"1|Toy Story (1995)|01-Jan-1995||http://x|{GENRES}\n"
                            f"2|Heat (1995)|01-Jan-1995||http://x|{GENRES}\n", encoding="latin-1")
    return d


def ml1m(d: Path, ratings: str, movies: str | bytes | None) -> Path:
    write(d / "ratings.dat", ratings)
    if movies is not None:
        write(d / "movies.dat", movies)
    return d


def ml_latest(d: Path, ratings: str, movies: str | bytes | None = "movieId,title,genres\n1,Heat (1995),Crime\n") -> Path:
    write(d / "ratings.csv", ratings)
    if movies is not None:
        write(d / "movies.csv", movies)
    return d


# --- ratings outside the declared scale --------------------------------------------------------

@pytest.mark.parametrize("value", ["7", "0", "-1"])
def test_movielens_rating_outside_1_to_5_is_an_error_or_a_counted_skip(tmp_path, value):
    d = ml100k(tmp_path / "ml", f"1\t1\t5\t881250949\n1\t2\t{value}\t881250950\n")
    err = raises(read, "movielens", d)
    assert where(err) == ("u.data", 2, "rating") and "outside 1..5" in str(err)
    ds = read("movielens", d, skip_bad_rows=True)
    assert ds.interactions["rating"].tolist() == [5.0] and ds.meta["bad_rows"] == 1
    assert ds.meta["rejects"][0]["line"] == 2 and ds.meta["rejects"][0]["field"] == "rating"
    d1 = ml1m(tmp_path / "m1", f"1::1::{value}::978300760\n", "1::Heat (1995)::Crime\n")
    assert where(raises(read, "movielens", d1)) == ("ratings.dat", 1, "rating")


def test_ml_latest_rating_50_is_an_error(tmp_path):
    d = ml_latest(tmp_path / "ml", "userId,movieId,rating,timestamp\n1,1,4.5,964982703\n1,1,50,964982704\n")
    err = raises(read, "movielens", d)
    assert where(err) == ("ratings.csv", 3, "rating") and "outside 0.5..5" in str(err)


def test_csv_rating_outside_the_default_or_given_scale(tmp_path):
    f = write(tmp_path / "r.csv", "user_id,item_id,stars\nu,a,4\nu,b,10\n")
    err = raises(read, "csv", f, columns={"rating": "stars"})
    assert where(err) == ("r.csv", 3, "stars") and "outside 1..5" in str(err)
    ds = read("csv", f, columns={"rating": "stars"}, rating_scale=(0, 10))
    assert ds.label_threshold == 7.5 and ds.rating_scale == (0.0, 10.0)
    skipped = prepare(read("csv", f, columns={"rating": "stars"}, skip_bad_rows=True))
    assert skipped.card["dropped"] == {"bad row (skipped)": 1}
    assert skipped.rejects[["line", "field", "kind"]].values.tolist() == [[3, "stars", "bad row"]]


def test_cli_csv_on_a_0_to_10_scale_moves_the_threshold(tmp_path):
    f = write(tmp_path / "r.csv", "user_id,item_id,rating\nu,a,8\nu,b,7\nu,c,9\nv,a,2\nv,b,10\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "prepare", "--dataset", "csv", "--path", str(f), "--out", str(out),
                                      "--rating-scale", "0-10"])
    assert result.exit_code == 0, result.output
    card = load_prepared(out).card
    assert card["label_threshold"] == 7.5 and card["rating_scale"] == [0.0, 10.0]
    assert card["time_range"] is None and "no dates" in (out / "card.md").read_text()
    result = CliRunner().invoke(app, ["data", "prepare", "--dataset", "csv", "--path", str(f), "--out", str(out)])
    assert isinstance(result.exception, DataError) and "outside 1..5" in str(result.exception)
    bad = CliRunner().invoke(app, ["data", "prepare", "--dataset", "csv", "--path", str(f), "--rating-scale", "10-0"])
    assert isinstance(bad.exception, DataError) and "LOW < HIGH" in str(bad.exception)


def test_cli_rejects_csv_options_for_other_readers(tmp_path):
    result = CliRunner().invoke(app, ["data", "prepare", "--dataset", "ml-100k", "--rating-scale", "0-10"])
    assert "--rating-scale only apply to --dataset csv" in str(result.exception)


# --- encodings ------------------------------------------------------------------------------------

def test_ml1m_movies_dat_with_a_utf8_line_and_a_cp1252_line(tmp_path):
    movies = "1::Amélie (2001)::Comedy\n".encode() + "2::Café (1999)::Drama\n".encode("cp1252")
    d = ml1m(tmp_path / "m1", "1::1::5::978300760\n1::2::4::978300761\n", movies)
    ds = read("movielens", d)
    titles = ds.items.set_index("item_id")["title"]
    assert titles["1"] == "Amélie" and titles["2"] == "Café"
    assert ds.meta["decoded_with_fallback"] == {str(d / "movies.dat"): 1}
    card = prepare(ds).card
    assert card["decoded_with_fallback"] == {str(d / "movies.dat"): 1}


def test_cp1252_movies_csv_and_latin1_u_data_are_read_and_counted(tmp_path):
    d = ml_latest(tmp_path / "ml", "userId,movieId,rating,timestamp\n1,1,4,964982703\n",
                  "movieId,title,genres\n1,Caf\xe9 (1999),Drama\n".encode("cp1252"))
    ds = read("movielens", d)
    assert ds.items["title"].tolist() == ["Café"]
    assert ds.meta["decoded_with_fallback"] == {str(d / "movies.csv"): 1}
    d = ml100k(tmp_path / "ml100", b"1\t1\t5\t881250949\n1\t2\t4\t881250950 \xe9\n")
    err = raises(read, "movielens", d)  # the decoded line is still checked: "881250950 é" is no time
    assert where(err) == ("u.data", 2, "timestamp")
    d = ml100k(tmp_path / "ml100b", b"1\t1\t5\t881250949\n1\xe9\t2\t4\t881250950\n")
    ds = read("movielens", d)
    assert "1é" in set(ds.interactions["user_id"]) and ds.meta["decoded_with_fallback"] == {str(d / "u.data"): 1}


# --- wrong field counts and missing or empty files ----------------------------------------------

def test_ratings_csv_row_with_five_fields_is_an_error(tmp_path):
    d = ml_latest(tmp_path / "ml", "userId,movieId,rating,timestamp\n1,1,4,964982703\n1,1,4,964982704,x\n")
    err = raises(read, "movielens", d)
    assert where(err)[:2] == ("ratings.csv", 3) and "expected 4 fields" in str(err)
    assert read("movielens", d, skip_bad_rows=True).meta["bad_rows"] == 1
    d = ml100k(tmp_path / "ml100", "1\t1\t5\t881250949\t9\n")
    assert "expected 4 fields" in str(raises(read, "movielens", d))


def test_missing_and_empty_item_files(tmp_path):
    err = raises(read, "movielens", ml1m(tmp_path / "a", "1::1::5::978300760\n", None))
    assert where(err) == ("movies.dat", None, None) and "missing movies.dat" in str(err)
    err = raises(read, "movielens", ml100k(tmp_path / "b", "1\t1\t5\t881250949\n", item=False))
    assert where(err)[0] == "u.item" and "missing u.item" in str(err)
    err = raises(read, "movielens", ml1m(tmp_path / "c", "1::1::5::978300760\n", ""))
    assert where(err) == ("movies.dat", 1, None) and "empty" in str(err)
    err = raises(read, "movielens", ml_latest(tmp_path / "d", "userId,movieId,rating,timestamp\n1,1,4,964982703\n",
                                              "id,title,genres\n1,Heat (1995),Crime\n"))
    assert where(err) == ("movies.csv", 1, "movieId") and "missing column" in str(err)


# --- timestamps -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, day", [("03/04/2021", "2021-04-03"), ("04.03.2021", "2021-03-04")])
def test_year_last_dates_need_a_date_format(tmp_path, text, day):
    f = write(tmp_path / "r.csv", f"user_id,item_id,rating,timestamp\nu,a,4,2021-01-01\nu,b,4,{text}\n")
    err = raises(read, "csv", f)
    assert where(err) == ("r.csv", 3, "timestamp") and "ambiguous date" in str(err) and "--date-format" in str(err)
    fmt = "%d/%m/%Y" if "/" in text else "%d.%m.%Y"
    g = write(tmp_path / "s.csv", f"user_id,item_id,rating,timestamp\nu,b,4,{text}\n")
    ds = read("csv", g, date_format=fmt)
    assert pd.to_datetime(ds.interactions["timestamp"], unit="s").dt.date.astype(str).tolist() == [day]
    err = raises(read, "csv", f, date_format=fmt)  # the ISO line does not match the format
    assert where(err) == ("r.csv", 2, "timestamp") and "does not match" in str(err)


def test_epoch_units_detected_given_and_checked(tmp_path):
    ms = write(tmp_path / "ms.csv", "user_id,item_id,rating,timestamp\nu,a,4,1600000000000\nu,b,4,1600000100000\n")
    ds = read("csv", ms)
    assert ds.interactions["timestamp"].tolist() == [1600000000, 1600000100]
    assert ds.meta["time_source"] == "timestamp (ms)"
    us = write(tmp_path / "us.csv", "user_id,item_id,rating,timestamp\nu,a,4,1600000000000000\n")
    assert read("csv", us).interactions["timestamp"].tolist() == [1600000000]
    assert read("csv", us, time_unit="us").interactions["timestamp"].tolist() == [1600000000]
    err = raises(read, "csv", ms, time_unit="s")  # ms read as s: the year 52671
    assert where(err) == ("ms.csv", 2, "timestamp") and "--time-unit" in str(err)
    mixed = write(tmp_path / "mixed.csv", "user_id,item_id,rating,timestamp\nu,a,4,1600000000\nu,b,4,1600000100000\n")
    err = raises(read, "csv", mixed)
    assert where(err) == ("mixed.csv", 3, "timestamp") and "line 2 made this column s" in str(err)
    assert "time unit must be one of" in str(raises(TimeParser, "minutes"))
    ymd = write(tmp_path / "ymd.csv", "user_id,item_id,rating,timestamp\nu,a,4,20210304\nu,b,4,20210305\n")
    err = raises(read, "csv", ymd)                 # not 1970-08-22 in epoch seconds
    assert where(err) == ("ymd.csv", 2, "timestamp") and "%Y%m%d" in str(err)
    assert read("csv", ymd, date_format="%Y%m%d").interactions["timestamp"].tolist() == [1614816000, 1614902400]


def test_a_malformed_csv_header_is_an_error_not_a_traceback(tmp_path):
    f = write(tmp_path / "h.csv", 'user_id,"item"x,rating\nu,a,4\n')
    err = raises(read, "csv", f)
    assert where(err)[:2] == ("h.csv", 1) and "header" in str(err)


def test_cli_prepares_an_epoch_ms_csv_with_context(tmp_path):
    f = write(tmp_path / "ms.csv", "user_id,item_id,rating,timestamp\n"
                                   "u,a,4,1600000000000\nu,b,2,1600086400000\nu,c,5,1600172800000\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "prepare", "--dataset", "csv", "--path", str(f), "--out", str(out),
                                      "--time-unit", "ms"])
    assert result.exit_code == 0, result.output
    data = load_prepared(out)
    assert data.card["time_range"] == ["2020-09-13", "2020-09-15"]
    assert data.card["context_columns"] == ["ctx_hour", "ctx_weekday"]
    assert data.samples["ctx_hour"].tolist() == [12, 12, 12]


# --- drops, duplicates and the rejects file --------------------------------------------------------

def business(bid, categories, **extra):
    return {"business_id": bid, "name": bid.upper(), "categories": categories, "city": "Tucson", "state": "AZ",
            "stars": 4.5, "review_count": 12, **extra}


def review(user, bid, stars, date):
    return {"review_id": f"{user}{bid}", "user_id": user, "business_id": bid, "stars": stars, "date": date}


def test_yelp_drops_in_card_and_rejects_numeric_features_and_context(tmp_path):
    write(tmp_path / "yelp_academic_dataset_business.json", jsonl(
        business("b1", "Thai, Restaurants"), business("b2", "Dentists"),
        business("b3", "Food", stars=None, review_count="n/a")))
    write(tmp_path / "yelp_academic_dataset_review.json", jsonl(
        review("u1", "b1", 5, "2016-03-09 18:44:42"), review("u1", "b2", 1, "2016-03-10 00:00:00"),
        review("u1", "b3", 4, "2016-03-11 09:00:00"), review("u2", "b1", 2, "2016-03-12 10:00:00"),
        review("u2", "b9", 5, "2016-03-13 10:00:00")))
    out = prepare(read("yelp", tmp_path))
    assert out.card["dropped"] == {"not a restaurant": 1, "business not in the business file": 1}
    assert out.rejects[["line", "kind", "reason"]].values.tolist() == [
        [2, "dropped", "not a restaurant"], [5, "dropped", "business not in the business file"]]
    items = out.items.set_index("item_id")
    assert items["feat_stars"].dtype == "float64" and items["feat_review_count"].dtype == "float64"
    assert items.loc["b1", "feat_review_count"] == 12 and math.isnan(items.loc["b3", "feat_stars"])
    assert out.card["context_columns"] == ["ctx_hour", "ctx_weekday"]
    assert sorted(out.samples["ctx_hour"]) == [9, 10, 18]
    saved = out.save(tmp_path / "out")
    assert pd.read_csv(saved / "rejects.csv")["line"].tolist() == [2, 5]
    assert "not a restaurant: 1" in (saved / "card.md").read_text()


def test_bookcrossing_implicit_policy_is_counted_and_listed(tmp_path):
    write(tmp_path / "BX-Book-Ratings.csv", '"User-ID";"ISBN";"Book-Rating"\n"1";"A";"0"\n"1";"B";"9"\n'
                                            '"2";"A";"7"\n"2";"B";"0"\n')
    write(tmp_path / "BX-Users.csv", '"User-ID";"Location";"Age"\n"1";"oslo, norway";"33"\n"2";"x";NULL\n')
    out = prepare(read("bookcrossing", tmp_path))
    assert out.card["dropped"] == {"implicit (rating 0)": 2}
    assert out.rejects["line"].tolist() == [2, 5]
    assert out.users["feat_age"].dtype == "float64" and out.users["feat_age"].isna().tolist() == [False, True]
    kept = read("bookcrossing", tmp_path, explicit_only=False)  # the other documented policy: 0 = a negative
    assert kept.rating_scale == (0.0, 10.0) and sorted(kept.interactions["rating"]) == [0, 0, 7, 9]


def review18(user, asin, overall, t, **extra):
    return {"reviewerID": user, "asin": asin, "overall": overall, "unixReviewTime": t, **extra}


def test_amazon_duplicates_are_kept_once_and_html_is_text(tmp_path):
    write(tmp_path / "Books.json", jsonl(review18("u", "a", 5, 1500000000), review18("u", "a", 5, 1500000000),
                                         review18("u", "b", 2, 1500086400), review18("v", "a", 4, 1500000000)))
    write(tmp_path / "meta_Books.json", jsonl(
        {"asin": "a", "title": "A <i>book</i>", "description": ["<div><b>Great</b> read.<br/>Really&amp;truly</div>"],
         "price": "$12.99"},
        {"asin": "b", "title": "B", "description": "a < b and 3 > 2", "price": ""}))
    out = prepare(read("amazon", tmp_path))
    assert out.card["duplicates_dropped"] == 1 and out.card["dropped"] == {"duplicate": 1}
    assert out.rejects[["line", "kind"]].values.tolist() == [[2, "dropped"]]
    items = out.items.set_index("item_id")
    assert items.loc["a", "description"] == "Great read. Really&truly" and items.loc["a", "title"] == "A book"
    assert items.loc["b", "description"] == "a < b and 3 > 2"
    assert items["feat_price"].dtype == "float64" and items.loc["a", "feat_price"] == 12.99
    assert math.isnan(items.loc["b", "feat_price"])
    with pytest.raises(DataError, match="duplicate interaction"):
        prepare(read("amazon", tmp_path), PrepareConfig(duplicates="error"))


def test_clean_text_keeps_angle_brackets_that_are_not_tags():
    assert clean_text("<p>x &lt;3</p><3 y") == "x <3 <3 y"


# --- CSV side files, via the CLI ---------------------------------------------------------------------

def test_cli_csv_items_and_users_side_files(tmp_path):
    f = write(tmp_path / "log.csv", "user_id,item_id,rating,timestamp\nu1,a,4,2021-01-01T10:00:00\n"
                                    "u1,b,2,2021-01-02T11:00:00\nu2,a,5,2021-01-03T12:00:00\n")
    items = write(tmp_path / "items.csv", "item_id,title,price,color\na,Alpha,9.5,red\nb,Beta,,blue\n")
    users = write(tmp_path / "users.tsv", "user_id\tage\nu1\t31\nu2\tNULL\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "prepare", "--dataset", "csv", "--path", str(f), "--out", str(out),
                                      "--items", str(items), "--users", str(users)])
    assert result.exit_code == 0, result.output
    data = load_prepared(out)
    it = data.items.set_index("item_id")
    assert it.loc["a", "title"] == "Alpha" and it["feat_price"].dtype == "float64" and it.loc["a", "feat_color"] == "red"
    assert math.isnan(it.loc["b", "feat_price"])
    assert data.users["feat_age"].dtype == "float64" and data.users["feat_age"].isna().tolist() == [False, True]
    assert data.card["context_columns"] == ["ctx_hour", "ctx_weekday"]


# --- numeric features in the embedded dataset ---------------------------------------------------------

def test_embedded_ml100k_numeric_features():
    data = prepare(read("ml-100k"))
    assert data.items["feat_year"].dtype == "float64" and data.users["feat_age"].dtype == "float64"
    assert data.items["feat_year"].isna().sum() == 2  # two films without a release date
    assert data.items.set_index("item_id").loc["1", "feat_year"] == 1995
    assert data.card["dropped"] == {} and data.rejects.empty


def test_featurizer_vocabularies_of_numeric_ml100k_features():
    from reasonrec.train.features import Featurizer

    data = prepare(read("ml-100k"))
    train = data.samples[data.samples["split"] == "train"]
    spec = Featurizer(side_features=True).fit(train, data.items, data.users).spec
    # the sizes the string-typed tables gave: 71 years + "unknown", 61 ages
    assert len(spec.item_fields["feat_year"]) == 72 and len(spec.user_fields["feat_age"]) == 61
    assert "1995" in spec.item_fields["feat_year"] and "" in spec.item_fields["feat_year"]


def test_item_text_renders_numeric_years_as_the_string_tables_did():
    from reasonrec.explain.templates import load_templates

    movie = load_templates("movie")
    base = {"item_id": "1", "title": "Toy Story", "categories": "Comedy", "description": ""}
    assert movie.describe_item(base | {"feat_year": 1995.0}) == movie.describe_item(base | {"feat_year": "1995"})
    assert "1995" in movie.describe_item(base | {"feat_year": 1995.0})
    assert movie.describe_item(base | {"feat_year": float("nan")}) == movie.describe_item(base | {"feat_year": ""})


def test_json_lines_share_the_decoding_policy_and_list_skipped_lines(tmp_path):
    biz = jsonl(business("b1", "Restaurants")).encode() + \
        b'{"business_id": "b2", "name": "Caf\xe9 Noir", "categories": "Food", "city": "Lyon", "state": "FR"}\n'
    write(tmp_path / "yelp_academic_dataset_business.json", biz)
    write(tmp_path / "yelp_academic_dataset_review.json", jsonl(review("u1", "b1", 5, "2016-03-09 18:44:42"))
          + '{"user_id": "u1", "business_id": \n' + jsonl(review("u1", "b2", 4, "2016-03-10 10:00:00")))
    err = raises(read, "yelp", tmp_path)
    assert where(err) == ("yelp_academic_dataset_review.json", 2, None) and "malformed JSON" in str(err)
    out = prepare(read("yelp", tmp_path, skip_bad_rows=True))
    assert out.items.set_index("item_id").loc["b2", "title"] == "Café Noir"
    assert out.card["decoded_with_fallback"] == {str(tmp_path / "yelp_academic_dataset_business.json"): 1}
    assert out.rejects[["line", "kind"]].values.tolist() == [[2, "bad row"]]
    assert out.card["dropped"] == {"bad row (skipped)": 1}


# --- the vectorised ratings.csv path agrees with the line path ----------------------------------------

def test_fast_ratings_csv_matches_the_line_path(tmp_path):
    from reasonrec.data.readers._fast import read_ratings_csv
    from reasonrec.data.readers.movielens import CSV_COLUMNS, CSV_SCALE, FIELDS, _read_ratings_lines
    from reasonrec.data.schema import RowSink

    body = "".join(f"{u},{i},{(u * i) % 10 / 2 + 0.5},{964982703 + u * 100 + i}\n" for u in range(1, 30)
                   for i in range(1, 8))
    f = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n" + body)
    columns = dict(zip(FIELDS, CSV_COLUMNS))
    fast = read_ratings_csv(f, columns, CSV_SCALE)
    slow = _read_ratings_lines(f, RowSink(["user_id", "item_id", "rating", "timestamp", "line"]))
    assert fast is not None and fast[1] == "s"
    pd.testing.assert_frame_equal(fast[0], slow)
    for doubtful in ("userId,movieId,rating,timestamp\n1,1,4,964982703\n\n2,1,4,964982704\n",  # blank line
                     "userId,movieId,rating,timestamp\n1,1,4,964982703\n2,1,4.0,964982704.5\n",  # float time
                     "userId,movieId,rating,timestamp\n1,1,4,964982703\n 2,1,4,964982704\n",  # padded id
                     b"userId,movieId,rating,timestamp\n1\xe9,1,4,964982703\n"):  # not UTF-8
        assert read_ratings_csv(write(tmp_path / "d.csv", doubtful), columns, CSV_SCALE) is None
    d = ml_latest(tmp_path / "blank", "userId,movieId,rating,timestamp\n1,1,4,964982703\n\n2,1,60,964982704\n")
    assert where(raises(read, "movielens", d)) == ("ratings.csv", 4, "rating")  # line numbers of the file


@pytest.mark.parametrize("text", [
    "userId,movieId,rating,timestamp\n007,0042,4,964982703\nZoë,7,3.5,964982704\n",  # ids stay text
    "userId,movieId,rating,timestamp\r\n1,1,4,964982703\r\n2,1,0.5,964982704\r\n",  # CRLF
    "\ufeffuserId,movieId,rating,timestamp\n1,1,4,964982703\n",  # byte-order mark
    "userId,movieId,rating,timestamp,tag\n1,1,4,964982703,x\n2,3,5,964982704,007\n",  # an extra column
], ids=["text-ids", "crlf", "bom", "extra-column"])
def test_arrow_parsed_ratings_csv_matches_the_line_path(tmp_path, text):
    from reasonrec.data.readers._fast import read_ratings_csv
    from reasonrec.data.readers.movielens import CSV_COLUMNS, CSV_SCALE, FIELDS, _read_ratings_lines
    from reasonrec.data.schema import RowSink

    f = write(tmp_path / "ratings.csv", text)
    fast = read_ratings_csv(f, dict(zip(FIELDS, CSV_COLUMNS)), CSV_SCALE)
    slow = _read_ratings_lines(f, RowSink(["user_id", "item_id", "rating", "timestamp", "line"]))
    assert fast is not None, "a clean file should not need the line path"
    pd.testing.assert_frame_equal(fast[0], slow)


def test_arrow_parse_declines_what_only_the_line_path_can_name(tmp_path):
    from reasonrec.data.readers._fast import read_ratings_csv
    from reasonrec.data.readers.movielens import CSV_COLUMNS, CSV_SCALE, FIELDS

    columns = dict(zip(FIELDS, CSV_COLUMNS))
    # rating text in a later Arrow block than the first: a guessed type would have failed midway
    rows = "".join(f"{u},1,4,964982703\n" for u in range(1, 60_000))
    for bad, field in (("2,1,four,964982704", "rating"), ("2,1,4,yesterday", "timestamp"), ("2,1,4", None)):
        text = "userId,movieId,rating,timestamp\n" + rows + bad + "\n"
        assert read_ratings_csv(write(tmp_path / "d.csv", text), columns, CSV_SCALE) is None
        err = raises(read, "movielens", ml_latest(tmp_path / f"ml-{len(bad)}", text))
        assert where(err)[:2] == ("ratings.csv", 60_001) and (field is None or where(err)[2] == field)


@pytest.mark.parametrize("stamps, unit", [([1600000000000, 1600000360000, 1600000720000], "ms"), (None, None)])
def test_fast_csv_log_matches_the_line_path(tmp_path, monkeypatch, stamps, unit):
    from reasonrec.data.readers import generic

    header = "uid\tiid\tstars" + ("\tts" if stamps else "")
    rows = [f"u{k % 2}\ti{k}\t{k + 1}" + (f"\t{stamps[k]}" if stamps else "") for k in range(3)]
    f = write(tmp_path / "log.tsv", header + "\n" + "\n".join(rows))  # no final newline either
    cols = {"user_id": "uid", "item_id": "iid", "rating": "stars"} | ({"timestamp": "ts"} if stamps else {})
    calls = []
    real = generic.read_ratings_csv
    monkeypatch.setattr(generic, "read_ratings_csv", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = read("csv", f, columns=cols)
    assert calls and generic.read_ratings_csv(f, {"user_id": "uid", "item_id": "iid", "rating": "stars"},
                                               (1, 5), delimiter="\t") is not None
    monkeypatch.setattr(generic, "read_ratings_csv", lambda *a, **k: None)
    slow = read("csv", f, columns=cols)
    pd.testing.assert_frame_equal(fast.interactions, slow.interactions)
    assert fast.meta["time_source"] == slow.meta["time_source"] == ("ts (ms)" if stamps else "file order")
