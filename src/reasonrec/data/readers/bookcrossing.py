"""Book-Crossing (Ziegler et al. 2005), the original dump or the Kaggle re-export.

- Original: `BX-Book-Ratings.csv` (`"User-ID";"ISBN";"Book-Rating"`), `BX-Books.csv`
  (`"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";image URLs`), `BX-Users.csv`
  (`"User-ID";"Location";"Age"`, Age "NULL" when unknown): semicolon separated, every field quoted,
  Latin-1/cp1252 text with some UTF-8 (decoded per line, see `_io.decode_line`).
- Kaggle: `Ratings.csv`, `Books.csv`, `Users.csv`, the same columns comma separated, UTF-8.
Any of these files may be gzipped (`BX-Books.csv.gz`).
The separator is sniffed from each header. `path` is the directory or the ratings file; the book and
user files are optional (titles then fall back to the ISBN). The real files have stray broken lines
(a `\\"` before a separator, unquoted `;`): quoting is parsed leniently and a line whose field count
is wrong is a bad row (DataError in strict mode, counted with `skip_bad_rows=True`).

Choices: ratings 0-10 where 0 means an implicit interaction (the user touched the book, no opinion).
Implicit policy: `explicit_only=True` (default) drops the 0s, each counted in `meta["dropped"]` and
listed in the rejects; `explicit_only=False` keeps them as rating 0 on a 0-10 scale, so they are
negatives under any threshold. Domain "book", rating_scale (1, 10), label threshold 8: the
explicit ratings are skewed high (median 8), so 8+ is the "liked it" half, the analogue of 4+ on 1-5.
There are no times: timestamp = the line number (`meta["time_source"] = "file order"`). ISBNs are
upper-cased and stripped so that "034545104x" in ratings joins "034545104X" in books. Items:
description "By <author>. <publisher>, <year>." (the dump has no free text), categories "" (no
genres), features `feat_author`, `feat_publisher`, `feat_year` (NaN for 0 / implausible years).
Users: `feat_location`, `feat_country` (last part of the location), `feat_age` (NaN for NULL and for
ages outside 5-100, which in this dump are typos).
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

from reasonrec.data.readers._io import (
    FILE_ORDER, CsvRows, bad_row_meta, clean_text, interactions_frame, is_missing, items_frame, rating,
    require_rows, to_id, users_frame,
)
from reasonrec.data.schema import RawDataset, RowSink, to_float
from reasonrec.errors import DataError

LAYOUTS = {  # ratings file -> (books file, users file)
    "BX-Book-Ratings.csv": ("BX-Books.csv", "BX-Users.csv"),
    "Ratings.csv": ("Books.csv", "Users.csv"),
}
ITEM_FEATURES = ["feat_author", "feat_publisher", "feat_year"]
USER_FEATURES = ["feat_location", "feat_country", "feat_age"]
IMPLICIT = "implicit (rating 0)"


def read_bookcrossing(path: Path, *, skip_bad_rows: bool = False, explicit_only: bool = True) -> RawDataset:
    path = Path(path)
    ratings_file = path if path.is_file() else _find_ratings(path)
    books_name, users_name = LAYOUTS.get(ratings_file.name.removesuffix(".gz"), ("BX-Books.csv", "BX-Users.csv"))
    books_file = _optional(ratings_file.parent / books_name)
    users_file = _optional(ratings_file.parent / users_name)

    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line"], skip_bad_rows)
    rows = _csv(ratings_file, sink)
    file = rows.file
    user_col, isbn_col, rating_col = (rows.column_index(c) for c in ("User-ID", "ISBN", "Book-Rating"))

    def parse(row: list[str], line: int) -> dict | None:
        rows.check_width(row, line)
        value = rating(row[rating_col], file=file, line=line, field_name="Book-Rating", bounds=(0, 10))
        if explicit_only and value == 0:
            sink.drop(IMPLICIT, file=file, line=line, field="Book-Rating")
            return None
        return {
            "user_id": to_id(row[user_col], file=file, line=line, field_name="User-ID"),
            "item_id": to_id(_isbn(row[isbn_col]), file=file, line=line, field_name="ISBN"),
            "rating": value,
            "timestamp": line,
            "line": line,
        }

    for line, row in rows:
        sink.add(lambda row=row, line=line: parse(row, line))
    inter = interactions_frame(sink, ratings_file)
    require_rows(inter, ratings_file, [sink], sink.dropped)

    book_sink, user_sink = RowSink([], skip_bad_rows), RowSink([], skip_bad_rows)
    books = _read_books(books_file, set(inter["item_id"].unique()), book_sink) if books_file else {}
    users = _read_users(users_file, set(inter["user_id"].unique()), user_sink) if users_file else {}
    return RawDataset(
        name="bookcrossing",
        domain="book",
        interactions=inter,
        items=items_frame(inter["item_id"], books, ITEM_FEATURES if books_file else []),
        users=users_frame(inter["user_id"], users, USER_FEATURES if users_file else []),
        label_threshold=8.0,
        rating_scale=(1.0, 10.0) if explicit_only else (0.0, 10.0),
        meta={
            "source": file,
            "items_source": str(books_file) if books_file else None,
            "users_source": str(users_file) if users_file else None,
            "time_source": FILE_ORDER,
            "explicit_only": explicit_only,
            **bad_row_meta(sink, book_sink, user_sink),
        },
    )


def _find_ratings(folder: Path) -> Path:
    for name in LAYOUTS:
        found = _optional(folder / name)
        if found:
            return found
    raise DataError(f"no ratings file ({' or '.join(LAYOUTS)}); found {sorted(p.name for p in folder.iterdir())}",
                    file=str(folder))


def _optional(path: Path) -> Path | None:
    """The file, or its gzipped twin `<name>.gz`."""
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            return candidate
    return None


def _csv(path: Path, sink: RowSink) -> CsvRows:
    # No escapechar: the dump's `\"` sequences are stray backslashes before a closing quote.
    return CsvRows(path, strict_quotes=False, sink=sink)


def _isbn(value: str) -> str:
    return value.strip().strip('"').upper()


def _field(value: str) -> str:
    return clean_text(value.replace('\\"', '"').rstrip("\\"))


def _read_books(books_file: Path, wanted: set[str], sink: RowSink) -> dict[str, dict]:
    rows = _csv(books_file, sink)
    cols = [rows.column_index(c) for c in ("ISBN", "Book-Title", "Book-Author", "Year-Of-Publication", "Publisher")]
    latest = date.today().year + 1
    out: dict[str, dict] = {}

    def parse(row: list[str], line: int) -> None:
        rows.check_width(row, line)
        isbn, title, author, year, publisher = (row[i] for i in cols)
        isbn = _isbn(isbn)
        if isbn not in wanted or isbn in out:
            return
        title, author, publisher = _field(title), _field(author), _field(publisher)
        year_value = float(year) if year.strip().isdigit() else math.nan
        if not 1000 < year_value <= latest:  # 0 means unknown; a few years are typos (2050)
            year_value = math.nan
        year_text = "" if math.isnan(year_value) else str(int(year_value))
        published = ", ".join(x for x in (publisher, year_text) if x)
        description = " ".join(x for x in (f"By {author}." if author else "", f"{published}." if published else "") if x)
        out[isbn] = {
            "title": title,
            "description": description,
            "feat_author": author or None,
            "feat_publisher": publisher or None,
            "feat_year": year_value,
        }

    for line, row in rows:
        sink.add(lambda row=row, line=line: parse(row, line))
    return out


def _read_users(users_file: Path, wanted: set[str], sink: RowSink) -> dict[str, dict]:
    rows = _csv(users_file, sink)
    user_col, loc_col, age_col = (rows.column_index(c) for c in ("User-ID", "Location", "Age"))
    out: dict[str, dict] = {}

    def parse(row: list[str], line: int) -> None:
        rows.check_width(row, line)
        user = row[user_col].strip()
        if user not in wanted:
            return
        location = _field(row[loc_col])
        country = location.rsplit(",", 1)[-1].strip() if location else ""
        out[user] = {
            "feat_location": location or None,
            "feat_country": country if country and country != "n/a" else None,
            "feat_age": _age(row[age_col], file=rows.file, line=line),
        }

    for line, row in rows:
        sink.add(lambda row=row, line=line: parse(row, line))
    return out


def _age(value: str, *, file: str, line: int) -> float:
    text = value.strip()
    if is_missing(text) or text.upper() in ("NULL", "NAN", "NA"):
        return float("nan")
    age = to_float(text, file=file, line=line, field_name="Age")
    return age if 5 <= age <= 100 else float("nan")
