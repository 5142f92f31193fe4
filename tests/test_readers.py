"""Readers: real-format fixtures (plain and gzipped) -> RawDataset schema, and errors that name
file, line and field for each class of bad input."""

from __future__ import annotations

import calendar
import gzip
import json
import os
import pickle
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from reasonrec.data.readers import read
from reasonrec.data.readers._io import iter_json_lines, open_text
from reasonrec.data.readers.amazon import read_amazon
from reasonrec.data.readers.bookcrossing import read_bookcrossing
from reasonrec.data.readers.generic import read_table
from reasonrec.data.readers.tripadvisor import read_tripadvisor
from reasonrec.data.readers.yelp import read_yelp
from reasonrec.data.schema import RawDataset, RowSink, validate
from reasonrec.errors import DataError


# --- helpers --------------------------------------------------------------------------------------

def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding) if isinstance(text, str) else text
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def utc(text: str, fmt: str = "%Y-%m-%d %H:%M:%S") -> int:
    return calendar.timegm(datetime.strptime(text, fmt).timetuple())


def assert_schema(ds: RawDataset) -> None:
    inter, items, users = ds.interactions, ds.items, ds.users
    assert list(inter.columns[:4]) == ["user_id", "item_id", "rating", "timestamp"]
    assert {"source", "line"} <= set(inter.columns)
    assert inter["user_id"].dtype == "str" and inter["item_id"].dtype == "str"
    assert inter["rating"].dtype == "float64"
    assert inter["timestamp"].dtype == "int64" and inter["line"].dtype == "int64"
    assert list(items.columns[:4]) == ["item_id", "title", "categories", "description"]
    assert all(items[c].dtype == "str" for c in ["item_id", "title", "categories", "description"])
    assert (items["title"].str.len() > 0).all()
    assert set(items["item_id"]) == set(inter["item_id"])
    assert set(users["user_id"]) == set(inter["user_id"])
    assert all(c.startswith("feat_") for c in list(items.columns[4:]) + list(users.columns[1:]))
    assert {"source", "items_source", "time_source", "bad_rows", "bad_examples"} <= set(ds.meta)
    validate(ds)  # the shape the prepare step expects


def error_of(fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


def assert_where(err: DataError, file: Path, line: int | None, field: str | None) -> None:
    assert err.file == str(file), str(err)
    assert err.line == line, str(err)
    assert err.field == field, str(err)
    assert str(file) in str(err)
    if line is not None:
        assert f"line {line}" in str(err)
    if field is not None:
        assert f"field '{field}'" in str(err)


# --- shared io ------------------------------------------------------------------------------------

def test_open_text_decodes_gzip_bom_and_legacy_bytes(tmp_path):
    mixed = "\ufeffcaf\u00e9 utf8\n".encode() + "caf\u00e9 latin1 \u20ac\n".encode("cp1252")
    write(tmp_path / "x.txt.gz", mixed)
    with open_text(tmp_path / "x.txt.gz") as fh:
        assert fh.read().splitlines() == ["caf\u00e9 utf8", "caf\u00e9 latin1 \u20ac"]


def test_json_lines_counts_malformed_lines_in_skip_mode(tmp_path):
    f = write(tmp_path / "r.jsonl", jsonl({"a": 1}, "", "{oops", "[1, 2]", {"a": 2}))
    sink = RowSink([], skip_bad_rows=True)
    assert [(n, r["a"]) for n, r in iter_json_lines(f, sink=sink)] == [(1, 1), (5, 2)]
    assert len(sink.bad) == 2 and "line 3" in sink.bad[0] and "line 4" in sink.bad[1]
    err = error_of(lambda: list(iter_json_lines(f)))
    assert_where(err, f, 3, None)
    assert "malformed JSON" in str(err)


# --- Amazon ---------------------------------------------------------------------------------------

def review18(user, asin, overall, t, **extra):
    return {"overall": overall, "verified": True, "reviewTime": "01 01, 2010", "reviewerID": user, "asin": asin,
            "reviewerName": "Jo", "reviewText": "Fine.", "summary": "ok", "unixReviewTime": t, **extra}


def amazon_2018(tmp_path: Path) -> Path:
    write(tmp_path / "Books_5.json.gz", jsonl(
        review18("A1", "0000031852", 5.0, 1252800000),
        review18("A2", "0000031852", 3.0, 1252886400),
        review18("A1", "B000000XYZ", 4.0, 1260000000),
    ))
    write(tmp_path / "meta_Books.json.gz", jsonl(
        {"asin": "0000031852", "title": "Tom &amp; Jerry Tales", "category": ["Books", "Literature & Fiction"],
         "description": ["A classic.", "  Illustrated. "], "brand": "Penguin", "main_cat": "Books", "price": "$12.99"},
        {"asin": "0000031852", "title": "duplicate row, ignored"},
        {"asin": "NOT_REVIEWED", "title": "never kept"},
    ))
    return tmp_path


def test_amazon_2018_directory(tmp_path):
    ds = read_amazon(amazon_2018(tmp_path))
    assert_schema(ds)
    assert (ds.name, ds.domain, ds.label_threshold, ds.rating_scale) == ("amazon-Books", "product", 4.0, (1.0, 5.0))
    inter = ds.interactions
    assert inter["user_id"].tolist() == ["A1", "A2", "A1"]
    assert inter["rating"].tolist() == [5.0, 3.0, 4.0]
    assert inter["timestamp"].tolist() == [1252800000, 1252886400, 1260000000]
    assert inter["line"].tolist() == [1, 2, 3]
    assert inter["source"].iloc[0] == str(tmp_path / "Books_5.json.gz")
    items = ds.items.set_index("item_id")
    assert items.loc["0000031852", "title"] == "Tom & Jerry Tales"
    assert items.loc["0000031852", "categories"] == "Books, Literature & Fiction"
    assert items.loc["0000031852", "description"] == "A classic. Illustrated."
    assert items.loc["0000031852", "feat_brand"] == "Penguin"
    assert items.loc["0000031852", "feat_price"] == pytest.approx(12.99)
    assert items.loc["B000000XYZ", "title"] == "B000000XYZ"  # no meta row: falls back to the id
    assert pd.isna(items.loc["B000000XYZ", "feat_price"])
    assert "NOT_REVIEWED" not in items.index
    assert ds.meta["format"] == "amazon-2018"
    assert ds.meta["items_source"] == str(tmp_path / "meta_Books.json.gz")
    assert ds.meta["bad_rows"] == 0


def test_amazon_2014_python_literal_meta_and_review_time_fallback(tmp_path):
    rec = review18("U1", "B001", 2.0, None)
    del rec["unixReviewTime"]
    rec["reviewTime"] = "9 13, 2009"
    write(tmp_path / "reviews_Clothing_Shoes.json", jsonl(rec))
    write(tmp_path / "meta_Clothing_Shoes.json",
          "{'asin': 'B001', 'title': \"Girls' Ballet Tutu\", 'categories': [['Clothing', 'Girls'], "
          "['Sports & Outdoors', 'Girls']], 'description': 'Pink.', 'salesRank': {'Toys': 211836}}\n"
          "{'asin': 'B002', 'title': __import__('os').system('true')}\n")  # not a literal: never evaluated
    ds = read_amazon(tmp_path / "reviews_Clothing_Shoes.json", skip_bad_rows=True)
    assert ds.interactions["timestamp"].tolist() == [utc("2009-09-13", "%Y-%m-%d")]
    item = ds.items.iloc[0]
    assert (item["title"], item["categories"]) == ("Girls' Ballet Tutu", "Clothing, Girls, Sports & Outdoors")
    assert ds.meta["bad_rows"] == 1 and "line 2" in ds.meta["bad_examples"][0]
    err = error_of(read_amazon, tmp_path)
    assert_where(err, tmp_path / "meta_Clothing_Shoes.json", 2, None)


def test_amazon_2023_jsonl_prefers_parent_asin_and_ms_timestamps(tmp_path):
    write(tmp_path / "Movies_and_TV.jsonl.gz", jsonl(
        {"rating": 5.0, "title": "Great", "text": "...", "images": [], "asin": "B01VARIANT", "parent_asin": "B01PARENT",
         "user_id": "AGKHLEW2SOWH", "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": True},
        {"rating": 1, "asin": "B02ONLY", "user_id": "AXYZ", "timestamp": 1588687728000},
    ))
    write(tmp_path / "meta_Movies_and_TV.jsonl", jsonl(
        {"main_category": "Movies & TV", "title": "Heat", "average_rating": 4.8, "rating_number": 10, "features": [],
         "description": ["Crime", "drama."], "price": None, "store": "Warner", "categories": [], "parent_asin": "B01PARENT"},
    ))
    ds = read_amazon(tmp_path)
    assert_schema(ds)
    assert ds.domain == "movie" and ds.meta["format"] == "amazon-2023"
    assert ds.interactions["item_id"].tolist() == ["B01PARENT", "B02ONLY"]
    assert ds.interactions["timestamp"].tolist() == [1588687728, 1588687728]
    heat = ds.items.set_index("item_id").loc["B01PARENT"]
    assert (heat["title"], heat["categories"], heat["description"], heat["feat_brand"]) == \
        ("Heat", "Movies & TV", "Crime drama.", "Warner")


@pytest.mark.parametrize("line, field, message", [
    ({"reviewerID": "A1", "asin": "X", "unixReviewTime": 1}, "overall", "missing field"),
    (review18("A1", "X", "five", 1), "overall", "expected a number"),
    (review18("A1", "X", 9.0, 1), "overall", "outside 1..5"),
    (review18("A1", "X", 5.0, "soon", reviewTime=None), "unixReviewTime", "cannot parse a timestamp"),
    (review18("A1", "", 5.0, 1), "asin", "empty field"),
    ('{"reviewerID": "A1", "asin": ', None, "malformed JSON"),
])
def test_amazon_bad_rows_name_file_line_field(tmp_path, line, field, message):
    f = write(tmp_path / "Books.json", jsonl(review18("A0", "X", 4.0, 1), "", line))
    err = error_of(read_amazon, f)
    assert_where(err, f, 3, field)
    assert message in str(err)
    ds = read_amazon(f, skip_bad_rows=True)
    assert len(ds.interactions) == 1 and ds.meta["bad_rows"] == 1
    assert message in ds.meta["bad_examples"][0]


def test_amazon_unknown_layout_and_empty_input(tmp_path):
    f = write(tmp_path / "Books.json", jsonl({"user": "u", "item": "i"}))
    err = error_of(read_amazon, f)
    assert_where(err, f, 1, None)
    assert "reviewerID" in str(err) and "['item', 'user']" in str(err)
    empty = write(tmp_path / "Toys.json.gz", "\n\n")
    assert_where(error_of(read_amazon, empty), empty, None, None)
    err = error_of(read_amazon, tmp_path)  # two categories: ambiguous
    assert "several reviews files" in str(err) and "category=" in str(err)


# --- Yelp -----------------------------------------------------------------------------------------

def business(bid, name, categories, **extra):
    return {"business_id": bid, "name": name, "address": "1 Main St", "city": "Philadelphia", "state": "PA",
            "stars": 4.5, "review_count": 80, "is_open": 1, "categories": categories, "hours": None, **extra}


def review(rid, user, bid, stars, date):
    return {"review_id": rid, "user_id": user, "business_id": bid, "stars": stars, "useful": 0, "funny": 0,
            "cool": 0, "text": "Tasty.", "date": date}


def yelp_dir(tmp_path: Path, reviews: list) -> Path:
    write(tmp_path / "yelp_academic_dataset_business.json", jsonl(
        business("b_thai", "Thai Orchid", "Thai, Restaurants"),
        business("b_cafe", "Bean There", "Coffee & Tea, Food"),
        business("b_pets", "Paws", "Pet Food Stores, Pets"),
        business("b_none", "Mystery", None),
    ))
    write(tmp_path / "yelp_academic_dataset_review.json.gz", jsonl(*reviews))
    return tmp_path


def test_yelp_keeps_restaurants_and_joins_names(tmp_path):
    folder = yelp_dir(tmp_path, [
        review("r1", "u1", "b_thai", 5, "2016-03-09 00:44:42"),
        review("r2", "u2", "b_pets", 4, "2016-03-10 10:00:00"),
        review("r3", "u1", "b_cafe", 2.0, "2017-01-01 12:00:00"),
        review("r4", "u3", "b_none", 1, "2018-01-01 00:00:00"),
        review("r5", "u3", "b_unknown", 3, "2018-01-02 00:00:00"),
    ])
    ds = read_yelp(folder)
    assert_schema(ds)
    assert (ds.domain, ds.label_threshold) == ("restaurant", 4.0)
    assert ds.interactions["item_id"].tolist() == ["b_thai", "b_cafe"]
    assert ds.interactions["line"].tolist() == [1, 3]
    assert ds.interactions["timestamp"].iloc[0] == utc("2016-03-09 00:44:42")
    assert ds.meta["dropped"] == {"not a restaurant": 2, "business not in the business file": 1}
    thai = ds.items.set_index("item_id").loc["b_thai"]
    assert (thai["title"], thai["categories"], thai["description"]) == \
        ("Thai Orchid", "Thai, Restaurants", "Located in Philadelphia, PA.")
    assert thai["feat_stars"] == 4.5 and thai["feat_city"] == "Philadelphia"

    everything = read_yelp(folder, restaurants_only=False)
    assert len(everything.interactions) == 5
    items = everything.items.set_index("item_id")
    assert items.loc["b_unknown", "title"] == "b_unknown" and items.loc["b_none", "categories"] == ""


@pytest.mark.parametrize("bad, field, message", [
    ({"review_id": "x", "user_id": "u", "business_id": "b_thai", "stars": 5}, "date", "missing field"),
    (review("x", "u", "b_thai", "great", "2016-01-01"), "stars", "expected a number"),
    (review("x", "u", "b_thai", 5, "last tuesday"), "date", "cannot parse a timestamp"),
    ({"review_id": "x", "business_id": "b_thai", "stars": 5, "date": "2016-01-01"}, "user_id", "missing field"),
])
def test_yelp_bad_reviews(tmp_path, bad, field, message):
    folder = yelp_dir(tmp_path, [review("r1", "u1", "b_thai", 5, "2016-03-09 00:44:42"), bad])
    f = folder / "yelp_academic_dataset_review.json.gz"
    err = error_of(read_yelp, folder)
    assert_where(err, f, 2, field)
    assert message in str(err)
    ds = read_yelp(folder, skip_bad_rows=True)
    assert (len(ds.interactions), ds.meta["bad_rows"]) == (1, 1)


def test_yelp_needs_business_file_to_filter_and_reports_empty_result(tmp_path):
    write(tmp_path / "yelp_academic_dataset_review.json", jsonl(review("r", "u", "b", 5, "2016-01-01")))
    err = error_of(read_yelp, tmp_path)
    assert "yelp_academic_dataset_business" in str(err) and err.file == str(tmp_path)
    write(tmp_path / "yelp_academic_dataset_business.json", jsonl(business("b", "Shop", "Shopping")))
    err = error_of(read_yelp, tmp_path)
    assert_where(err, tmp_path / "yelp_academic_dataset_review.json", None, None)
    assert "no interactions" in str(err) and "1 dropped as not a restaurant" in str(err)


# --- TripAdvisor ----------------------------------------------------------------------------------

def all_train_items(ds: RawDataset) -> pd.DataFrame:
    """The items table prepare would build if every review were in the training split."""
    return ds.derive_items(ds.interactions, ds.items)


def peter(user, item, rating, feature, sentence="the room was clean", sentiment=1):
    return {"user": user, "item": item, "rating": rating,
            "template": (feature, "clean", sentence, sentiment), "predicted": ""}


def test_tripadvisor_pickle_file_order_and_aspects(tmp_path):
    records = [peter("u1", "h1", 5, "room"), peter("u2", "h1", 4, "location"), peter("u3", "h1", 2, "room"),
               peter("u1", "h2", 3, "breakfast"), {"user": "u2", "item": "h2", "rating": 4, "template": None}]
    f = tmp_path / "reviews.pickle.gz"
    f.write_bytes(gzip.compress(pickle.dumps(records, protocol=4)))
    ds = read_tripadvisor(tmp_path)
    assert_schema(ds)
    assert (ds.domain, ds.label_threshold, ds.meta["time_source"]) == ("hotel", 4.0, "file order")
    assert ds.interactions["timestamp"].tolist() == [1, 2, 3, 4, 5]
    assert ds.interactions["rating"].tolist() == [5.0, 4.0, 2.0, 3.0, 4.0]
    assert ds.items.set_index("item_id").loc["h1", "categories"] == ""  # only prepare knows the split
    items = all_train_items(ds).set_index("item_id")
    assert items.loc["h1", "categories"] == "room, location"  # most frequent first
    assert items.loc["h1", "title"] == "h1"
    assert not any(c.startswith("ctx_") for c in ds.interactions.columns)  # review text would leak


def test_tripadvisor_refuses_pickles_with_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    f = tmp_path / "reviews.pickle"
    f.write_bytes(pickle.dumps([peter("u", "h", 5, "room"), Evil()], protocol=2))
    err = error_of(read_tripadvisor, f)
    assert err.file == str(f) and "refusing to unpickle" in str(err) and "system" in str(err)
    assert not marker.exists()
    f.write_bytes(pickle.dumps([pd.Timestamp(0)]))  # any non-builtin class, however harmless
    assert "refusing" in str(error_of(read_tripadvisor, f))
    f.write_bytes(pickle.dumps([peter("u", "h", 5, "room")])[:-5])
    assert "not a readable pickle" in str(error_of(read_tripadvisor, f))
    f.write_bytes(pickle.dumps({"u": 1}))
    assert "expected a list" in str(error_of(read_tripadvisor, f))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_tripadvisor_pickle_of_plain_containers_loads_at_every_protocol(tmp_path, protocol):
    record = peter("u", "h", 4, "pool") | {"extra": [{1, 2}, frozenset({3}), b"raw", 1.5]}
    (tmp_path / "reviews.pickle").write_bytes(pickle.dumps([record], protocol=protocol))
    ds = read_tripadvisor(tmp_path)
    assert all_train_items(ds)["categories"].tolist() == ["pool"] and ds.interactions["rating"].tolist() == [4.0]


def test_tripadvisor_empty_pickle_is_an_empty_result(tmp_path):
    f = tmp_path / "reviews.pkl"
    f.write_bytes(pickle.dumps([]))
    err = error_of(read_tripadvisor, f)
    assert_where(err, f, None, None)
    assert "no interactions" in str(err)


def test_tripadvisor_pickle_bad_record_names_record_number(tmp_path):
    f = tmp_path / "reviews.pickle"
    f.write_bytes(pickle.dumps([peter("u", "h", 5, "room"), peter("u", "h", "n/a", "room"), "junk"]))
    err = error_of(read_tripadvisor, f)
    assert_where(err, f, 2, "rating")
    ds = read_tripadvisor(f, skip_bad_rows=True)
    assert ds.meta["bad_rows"] == 2 and "line 3" in ds.meta["bad_examples"][1]


def test_tripadvisor_json_lines_with_dates_and_items_file(tmp_path):
    write(tmp_path / "reviews.jsonl.gz", jsonl(
        {"user": "u1", "item": "h1", "rating": 5, "date": "2012-05-01", "title": "Hotel Lux",
         "template": ["staff", "friendly", "friendly staff", 1]},
        {"user": "u2", "item": "h2", "rating": 2, "date": "2012-06-01"},
    ))
    write(tmp_path / "items.json", jsonl({"item": "h2", "title": "Grand Hotel", "categories": ["Hotel", "Spa"]}))
    ds = read_tripadvisor(tmp_path)
    assert_schema(ds)
    assert ds.meta["time_source"] == "date"
    assert ds.interactions["timestamp"].tolist() == [utc("2012-05-01", "%Y-%m-%d"), utc("2012-06-01", "%Y-%m-%d")]
    items = all_train_items(ds).set_index("item_id")
    assert items.loc["h1", ["title", "categories"]].tolist() == ["Hotel Lux", "staff"]
    assert items.loc["h2", ["title", "categories"]].tolist() == ["Grand Hotel", "Hotel, Spa"]

    f = write(tmp_path / "more.jsonl", jsonl({"user": "u", "item": "h", "rating": 4, "time": 1},
                                             {"user": "u", "item": "h2", "rating": 4, "time": "never"},
                                             {"user": "u", "item": "h3", "rating": 4}))
    err = error_of(read_tripadvisor, f)
    assert_where(err, f, 2, "time")
    ds = read_tripadvisor(f, skip_bad_rows=True)
    assert ds.meta["bad_rows"] == 2 and "field 'time': missing field" in ds.meta["bad_examples"][1]


# --- Book-Crossing --------------------------------------------------------------------------------

BX_BOOKS_HEADER = '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"'


def bx_book(isbn, title, author, year, publisher):
    return f'"{isbn}";"{title}";"{author}";"{year}";"{publisher}";"http://s.jpg";"http://m.jpg";"http://l.jpg"'


def bookcrossing_dir(tmp_path: Path, ratings: list[str]) -> Path:
    books = [BX_BOOKS_HEADER,
             bx_book("034545104X", "Flesh Tones: A Novel", "M. J. Rose", "2002", "Ballantine Books"),
             bx_book("0789466953", "DK Readers: Creating the X-Men (Level 4)\\", "James Buckley", "2000", "DK Publishing Inc"),
             bx_book("2070423204", "L'\u00e9tranger", "Albert Camus", "0", "Gallimard"),
             '"0000000001";"broken";"line"']
    users = ['"User-ID";"Location";"Age"', '"276725";"tyler, texas, usa";NULL', '"276726";"seattle, washington, usa";"31"',
             '"276727";"m\u00fcnchen, bayern, germany";"244"']
    write(tmp_path / "BX-Books.csv", "\r\n".join(books) + "\r\n", encoding="latin-1")
    write(tmp_path / "BX-Users.csv.gz", "\r\n".join(users) + "\r\n", encoding="latin-1")
    write(tmp_path / "BX-Book-Ratings.csv", "\r\n".join(['"User-ID";"ISBN";"Book-Rating"', *ratings]) + "\r\n",
          encoding="latin-1")
    return tmp_path


GOOD_RATINGS = ['"276725";"034545104x";"0"', '"276726";"034545104X";"9"', '"276727";"0789466953";"5"',
                '"276726";"2070423204";"10"']


def test_bookcrossing_original_layout(tmp_path):
    folder = bookcrossing_dir(tmp_path, GOOD_RATINGS)
    err = error_of(read_bookcrossing, folder)  # the broken books line, strict mode
    assert_where(err, folder / "BX-Books.csv", 5, None)
    assert "expected 8 fields" in str(err)

    ds = read_bookcrossing(folder, skip_bad_rows=True)
    assert_schema(ds)
    assert (ds.domain, ds.label_threshold, ds.rating_scale) == ("book", 8.0, (1.0, 10.0))
    inter = ds.interactions
    assert inter["rating"].tolist() == [9.0, 5.0, 10.0]  # the implicit 0 is dropped
    assert inter["line"].tolist() == inter["timestamp"].tolist() == [3, 4, 5]
    assert ds.meta["dropped"] == {"implicit (rating 0)": 1} and ds.meta["bad_rows"] == 1
    items = ds.items.set_index("item_id")
    assert items.loc["034545104X", "title"] == "Flesh Tones: A Novel"
    assert items.loc["034545104X", "description"] == "By M. J. Rose. Ballantine Books, 2002."
    assert items.loc["0789466953", "title"] == "DK Readers: Creating the X-Men (Level 4)"  # stray backslash
    assert items.loc["2070423204", "title"] == "L'\u00e9tranger"  # latin-1 decoded
    assert pd.isna(items.loc["2070423204", "feat_year"]) and items.loc["034545104X", "feat_year"] == 2002
    users = ds.users.set_index("user_id")
    assert users.loc["276726", "feat_age"] == 31 and pd.isna(users.loc["276727", "feat_age"])  # 244: a typo
    assert users.loc["276727", "feat_location"] == "m\u00fcnchen, bayern, germany"
    assert users.loc["276726", "feat_country"] == "usa"
    assert "276725" not in users.index  # only an implicit rating

    implicit = read_bookcrossing(folder, skip_bad_rows=True, explicit_only=False)
    assert len(implicit.interactions) == 4 and implicit.interactions["item_id"].iloc[0] == "034545104X"


@pytest.mark.parametrize("bad, field, message", [
    ('"276725";"034545104X";"great"', "Book-Rating", "expected a number"),
    ('"276725";"034545104X";"11"', "Book-Rating", "outside 0..10"),
    ('"276725";"034545104X"', None, "expected 3 fields"),
    ('"";"034545104X";"5"', "User-ID", "empty id"),
])
def test_bookcrossing_bad_rating_lines(tmp_path, bad, field, message):
    folder = bookcrossing_dir(tmp_path, [GOOD_RATINGS[1], bad])
    err = error_of(read_bookcrossing, folder)
    assert_where(err, folder / "BX-Book-Ratings.csv", 3, field)
    assert message in str(err)
    ds = read_bookcrossing(folder, skip_bad_rows=True)
    assert len(ds.interactions) == 1 and ds.meta["bad_rows"] == 2  # the rating line + the books line


def test_bookcrossing_kaggle_layout_and_missing_column(tmp_path):
    write(tmp_path / "Ratings.csv.gz", "User-ID,ISBN,Book-Rating\n276725,034545104X,0\n276726,0155061224,5\n")
    write(tmp_path / "Books.csv", "ISBN,Book-Title,Book-Author,Year-Of-Publication,Publisher,Image-URL-S,Image-URL-M,"
          "Image-URL-L\n0155061224,\"Rites of Passage, \"\"Vol 1\"\"\",Judith Rae,2001,Heinle,a,b,c\n")
    write(tmp_path / "Users.csv", "User-ID,Location,Age\n276726,\"stockton, california, usa\",18.0\n")
    ds = read_bookcrossing(tmp_path)
    assert_schema(ds)
    assert ds.items["title"].tolist() == ['Rites of Passage, "Vol 1"']
    assert ds.users["feat_age"].tolist() == [18.0]
    (tmp_path / "Ratings.csv.gz").unlink()
    f = write(tmp_path / "Ratings.csv", "User,ISBN,Book-Rating\n1,2,3\n")
    err = error_of(read_bookcrossing, tmp_path)
    assert_where(err, f, 1, "User-ID")
    assert "['User', 'ISBN', 'Book-Rating']" in str(err)


def test_bookcrossing_all_implicit_is_an_empty_result(tmp_path):
    folder = bookcrossing_dir(tmp_path, [GOOD_RATINGS[0]])
    err = error_of(read_bookcrossing, folder)
    assert_where(err, folder / "BX-Book-Ratings.csv", None, None)
    assert "1 dropped as implicit" in str(err)


# --- generic table --------------------------------------------------------------------------------

def test_table_csv_with_mapping_items_and_users(tmp_path):
    f = write(tmp_path / "log.csv", "uid,song,stars,when,device\n"
                                    "7,s1,4.5,2021-01-02T03:04:05Z,phone\n"
                                    "8,s2,2,2021-01-03,web\n")
    write(tmp_path / "songs.tsv.gz", "song\tname\tgenre\tyear\ns1\tHey Jude\tpop|rock\t1968\ns2\t\t\t\ns3\tUnused\tx\t1\n")
    write(tmp_path / "people.csv", "uid;age;city\n7;33;Oslo\n8;NULL;\n")
    ds = read_table(f, columns={"user_id": "uid", "item_id": "song", "rating": "stars", "timestamp": "when",
                                "ctx_device": "device", "item_title": "name", "item_categories": "genre"},
                    items_path=tmp_path / "songs.tsv.gz", users_path=tmp_path / "people.csv", domain="music")
    assert_schema(ds)
    assert (ds.name, ds.domain, ds.label_threshold, ds.rating_scale) == ("log", "music", 4.0, (1.0, 5.0))
    inter = ds.interactions
    assert inter["user_id"].tolist() == ["7", "8"] and inter["rating"].tolist() == [4.5, 2.0]
    assert inter["timestamp"].tolist() == [utc("2021-01-02 03:04:05"), utc("2021-01-03", "%Y-%m-%d")]
    assert inter["ctx_device"].tolist() == ["phone", "web"] and inter["line"].tolist() == [2, 3]
    items = ds.items.set_index("item_id")
    assert items.loc["s1", ["title", "categories"]].tolist() == ["Hey Jude", "pop|rock"]
    assert items.loc["s2", "title"] == "s2" and "s3" not in items.index
    assert items["feat_year"].dtype == "float64" and items.loc["s1", "feat_year"] == 1968
    users = ds.users.set_index("user_id")
    assert users["feat_age"].dtype == "float64" and users.loc["7", "feat_age"] == 33
    assert pd.isna(users.loc["8", "feat_age"]) and pd.isna(users.loc["8", "feat_city"])
    assert users.loc["7", "feat_city"] == "Oslo"
    assert ds.meta["time_source"] == "when (dates)"


def test_table_parquet_label_only_and_epoch_ms(tmp_path):
    f = tmp_path / "clicks.parquet"
    pd.DataFrame({"user_id": [1, 2, 3], "item_id": ["a", "b", "a"], "label": [1, 0, 1],
                  "timestamp": [1_600_000_000_000, 1_600_000_001_000, 1_600_000_002_500],
                  "title": ["Alpha", "Beta", None]}).to_parquet(f)
    ds = read_table(f, time_unit="ms")
    assert_schema(ds)
    assert ds.interactions["rating"].tolist() == [1.0, 0.0, 1.0] == ds.interactions["label"].tolist()
    assert ds.interactions["timestamp"].tolist() == [1_600_000_000, 1_600_000_001, 1_600_000_002]
    assert (ds.label_threshold, ds.rating_scale, ds.meta["rating_from_label"]) == (1.0, (0.0, 1.0), True)
    assert all_train_items(ds).set_index("item_id")["title"].to_dict() == {"a": "Alpha", "b": "Beta"}
    assert ds.meta["time_source"] == "timestamp (ms)"
    assert read_table(f).interactions["timestamp"].tolist() == [1_600_000_000, 1_600_000_001, 1_600_000_002]
    ds = read_table(f, time_unit="ms", label_threshold=0.5)
    assert ds.label_threshold == 0.5


def test_table_parquet_datetime_column_without_time_is_file_order(tmp_path):
    f = tmp_path / "x.parquet"
    pd.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "r": [1.0, 5.0],
                  "t": pd.to_datetime(["2020-01-01", "2020-01-02"])}).to_parquet(f)
    ds = read_table(f, columns={"user_id": "u", "item_id": "i", "rating": "r", "timestamp": "t"})
    assert ds.interactions["timestamp"].tolist() == [utc("2020-01-01", "%Y-%m-%d"), utc("2020-01-02", "%Y-%m-%d")]
    ds = read_table(f, columns={"user_id": "u", "item_id": "i", "rating": "r"})
    assert ds.meta["time_source"] == "file order" and ds.interactions["timestamp"].tolist() == [1, 2]


def test_table_missing_mapped_column_lists_what_exists(tmp_path):
    f = write(tmp_path / "r.csv", "user,item,score\n1,2,3\n")
    err = error_of(read_table, f, columns={"user_id": "user", "item_id": "item", "rating": "stars"})
    assert_where(err, f, 1, "stars")
    assert "['user', 'item', 'score']" in str(err) and "mapped from rating" in str(err)
    err = error_of(read_table, f)
    assert "missing column 'user_id'" in str(err) and "['user', 'item', 'score']" in str(err)
    err = error_of(read_table, f, columns={"user_id": "user", "item_id": "item"})
    assert "needs a rating or a label" in str(err)
    assert "unknown column mapping key" in str(error_of(read_table, f, columns={"userid": "user"}))
    side = write(tmp_path / "items.csv", "sku,name\n2,Two\n")
    err = error_of(read_table, f, columns={"user_id": "user", "item_id": "item", "rating": "score"}, items_path=side)
    assert_where(err, side, 1, "item_id")
    assert "['sku', 'name']" in str(err) and "item_key" in str(err)
    ds = read_table(f, columns={"user_id": "user", "item_id": "item", "rating": "score", "item_key": "sku",
                                "item_title": "name"}, items_path=side)
    assert ds.items["title"].tolist() == ["Two"]


@pytest.mark.parametrize("row, field, message", [
    ("1,2,high,2020-01-01", "score", "expected a number"),
    ("1,2,,2020-01-01", "score", "expected a number"),
    ("1,2,3,yesterday-ish", "ts", "cannot parse a timestamp"),
    ("1,2,3", None, "expected 4 fields"),
    ('1,2,3,"2020-01-01', None, "malformed CSV line"),  # unclosed quote runs to the end of the file
])
def test_table_bad_lines(tmp_path, row, field, message):
    f = write(tmp_path / "r.csv.gz", f"user,item,score,ts\n1,1,5,2020-01-01\n{row}\n")
    cols = {"user_id": "user", "item_id": "item", "rating": "score", "timestamp": "ts"}
    err = error_of(read_table, f, columns=cols)
    assert_where(err, f, 3, field)
    assert message in str(err)
    ds = read_table(f, columns=cols, skip_bad_rows=True)
    assert (len(ds.interactions), ds.meta["bad_rows"]) == (1, 1)


def test_table_header_only_and_registry_dispatch(tmp_path):
    f = write(tmp_path / "r.tsv", "user_id\titem_id\trating\n")
    err = error_of(read, "csv", f)
    assert_where(err, f, None, None)
    assert "no interactions" in str(err)
    write(f, "user_id\titem_id\trating\nu\ti\t3\n")
    assert read("csv", f).interactions["rating"].tolist() == [3.0]
