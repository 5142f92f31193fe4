"""MovieLens: the embedded ML-100K (RecBole atomic files) and the original GroupLens layouts.

Layouts recognised by `read_grouplens(path)` (a directory):
- ml-100k: `u.data` (tab: user item rating ts), `u.item` (pipe, latin-1, 19 genre flags), `u.user`
- ml-1m:   `ratings.dat`, `movies.dat`, `users.dat` (`::`-separated, latin-1)
- ml-20m / ml-25m / ml-latest(-small): `ratings.csv`, `movies.csv` (title carries "(year)")
- RecBole atomic files: `<name>.inter`, `<name>.item`, `<name>.user` (typed tab-separated headers)

Declared scales: 1-5 for ml-100k, ml-1m and RecBole files, 0.5-5 for the CSV releases (half
stars); a rating outside them is a bad row naming file, line and field. "High" means rating >= 4,
as in LR-Recsys. Timestamps are epoch seconds. Every file is read with the shared decoding policy
(UTF-8, then cp1252 per line, counted): GroupLens says "latin-1" for ml-100k/ml-1m, but repackaged
copies are often UTF-8, and reading those as latin-1 turns "Amélie" into "AmÃ©lie".
The item file of each layout is required (a release always ships it); the user file is optional.
Features are numbers where the data is numeric: `feat_year`, and `feat_age` in ml-100k (ml-1m's
age is a band such as "25-34", kept as text).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

from reasonrec.data.readers._fast import read_ratings_csv
from reasonrec.data.readers._io import (
    CsvRows, bad_row_meta, decoded_lines, interactions_frame, items_frame, optional_float, rating, require_rows,
    users_frame,
)
from reasonrec.data.readers._time import TimeParser
from reasonrec.data.schema import RawDataset, RowSink
from reasonrec.errors import DataError

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ML1M_AGES = {"1": "Under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
ML1M_OCCUPATIONS = ["other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
                    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
                    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer"]
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")


FIELDS = ("user_id", "item_id", "rating", "timestamp")
CSV_COLUMNS = ("userId", "movieId", "rating", "timestamp")
CSV_SCALE = (0.5, 5.0)  # half stars
ITEM_FEATURES = ["feat_year"]


def read_embedded_ml100k(*, skip_bad_rows: bool = False) -> RawDataset:
    """MovieLens-100K from the installed `recbole` wheel (the project's embedded default)."""
    from reasonrec.assets import ml100k_dir

    ds = read_recbole_atomic(ml100k_dir(), "ml-100k", skip_bad_rows=skip_bad_rows)
    ds.name = "ml-100k"
    return ds


def read_grouplens(path: Path, *, skip_bad_rows: bool = False) -> RawDataset:
    path = Path(path)
    if path.is_file():
        path = path.parent
    if (path / "u.data").is_file():
        return _read_ml100k(path, skip_bad_rows)
    if (path / "ratings.dat").is_file():
        return _read_ml1m(path, skip_bad_rows)
    if (path / "ratings.csv").is_file():
        return _read_mlcsv(path, skip_bad_rows)
    inter = sorted(path.glob("*.inter"))
    if inter:
        return read_recbole_atomic(path, inter[0].stem, skip_bad_rows=skip_bad_rows)
    raise DataError("not a MovieLens directory: expected u.data (ml-100k), ratings.dat (ml-1m), "
                    "ratings.csv (ml-20m/latest) or *.inter (RecBole)", file=str(path))


# --- shared line parsing ------------------------------------------------------------------

def _delimited(file: Path, sep: str, sink: RowSink, *, skip_header: bool = False) -> Iterator[tuple[int, list[str]]]:
    for line_no, text in decoded_lines(file, sink):
        if skip_header and line_no == 1:
            continue
        text = text.rstrip("\r\n")
        if text.strip():
            yield line_no, text.split(sep)


def _read_ratings(file: Path, rows, sink: RowSink, scale: tuple[float, float]):
    """`rows` yields (line_no, [user, item, rating, timestamp]) from any of the layouts."""
    name = str(file)
    clock = TimeParser("s")

    def parse(parts: list[str] | DataError, line: int) -> dict:
        if isinstance(parts, DataError):  # found by a layout's own width check
            raise parts
        if len(parts) != 4:
            missing = FIELDS[len(parts)] if len(parts) < 4 else None
            raise DataError(f"expected 4 fields (user, item, rating, timestamp), got {len(parts)}",
                            file=name, line=line, field=missing)
        user, item = parts[0].strip(), parts[1].strip()
        for field_name, value in (("user_id", user), ("item_id", item)):
            if not value:
                raise DataError("empty id", file=name, line=line, field=field_name)
        return {"user_id": user, "item_id": item,
                "rating": rating(parts[2].strip(), file=name, line=line, field_name="rating", bounds=scale),
                "timestamp": clock(parts[3].strip(), file=name, line=line, field_name="timestamp"),
                "line": line}

    for line_no, parts in rows:
        sink.add(lambda parts=parts, line_no=line_no: parse(parts, line_no))
    inter = interactions_frame(sink, file)
    require_rows(inter, file, [sink])
    return inter


def _required(file: Path, layout: str) -> Path:
    if not file.is_file():
        raise DataError(f"missing {file.name}: a {layout} release ships it beside the ratings (titles and "
                        f"genres come from it); found {sorted(p.name for p in file.parent.iterdir())}",
                        file=str(file))
    return file


def _not_empty(rows: dict, file: Path) -> dict:
    if not rows:
        raise DataError("no item lines: the file is empty", file=str(file), line=1)
    return rows


def _finish(name, inter, items: dict, users: dict | None, user_features: list[str], *, sinks, source,
            items_source, users_source=None, scale=(1.0, 5.0)) -> RawDataset:
    return RawDataset(
        name=name, domain="movie", interactions=inter,
        items=items_frame(inter["item_id"], items, ITEM_FEATURES),
        users=users_frame(inter["user_id"], users or {}, user_features if users is not None else []),
        label_threshold=4.0, rating_scale=scale,
        meta={"source": str(source), "items_source": str(items_source) if items_source else None,
              "users_source": str(users_source) if users_source else None, "time_source": "timestamp",
              **bad_row_meta(*sinks)})


def _year(text: str) -> float:
    text = (text or "").strip()
    return float(text) if text.isdigit() and len(text) == 4 else math.nan


# --- layouts ------------------------------------------------------------------------------

def _read_ml100k(path: Path, skip_bad_rows: bool) -> RawDataset:
    data = path / "u.data"
    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line"], skip_bad_rows)
    inter = _read_ratings(data, _delimited(data, "\t", sink), sink, (1.0, 5.0))
    item_file = _required(path / "u.item", "MovieLens-100K")
    item_sink, user_sink = RowSink([], skip_bad_rows), RowSink([], skip_bad_rows)
    items: dict[str, dict] = {}
    width = 5 + len(ML100K_GENRES)

    def parse_item(parts: list[str], line: int) -> None:
        if len(parts) != width:
            raise DataError(f"expected {width} '|'-separated fields, got {len(parts)}", file=str(item_file), line=line)
        flags = parts[5:width]
        title, year = _title_year(parts[1])
        if not year and parts[2][-4:].isdigit():
            year = parts[2][-4:]
        items[parts[0].strip()] = {"title": title or parts[0].strip(), "description": "", "feat_year": _year(year),
                                   "categories": ", ".join(g for g, f in zip(ML100K_GENRES, flags) if f.strip() == "1")}

    for line, parts in _delimited(item_file, "|", item_sink):
        item_sink.add(lambda parts=parts, line=line: parse_item(parts, line))
    _not_empty(items, item_file)
    users = None
    user_file = path / "u.user"
    if user_file.is_file():
        users = {}

        def parse_user(parts: list[str], line: int) -> None:
            if len(parts) != 5:
                raise DataError(f"expected 5 '|'-separated fields, got {len(parts)}", file=str(user_file), line=line)
            users[parts[0].strip()] = {"feat_age": optional_float(parts[1]), "feat_gender": parts[2].strip(),
                                       "feat_occupation": parts[3].strip()}

        for line, parts in _delimited(user_file, "|", user_sink):
            user_sink.add(lambda parts=parts, line=line: parse_user(parts, line))
    return _finish("ml-100k", inter, items, users, ["feat_age", "feat_gender", "feat_occupation"],
                   sinks=(sink, item_sink, user_sink), source=data, items_source=item_file,
                   users_source=user_file if users is not None else None)


def _read_ml1m(path: Path, skip_bad_rows: bool) -> RawDataset:
    ratings = path / "ratings.dat"
    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line"], skip_bad_rows)
    inter = _read_ratings(ratings, _delimited(ratings, "::", sink), sink, (1.0, 5.0))
    movies = _required(path / "movies.dat", "MovieLens-1M")
    item_sink, user_sink = RowSink([], skip_bad_rows), RowSink([], skip_bad_rows)
    items: dict[str, dict] = {}

    def parse_item(parts: list[str], line: int) -> None:
        if len(parts) != 3:
            raise DataError(f"expected MovieID::Title::Genres, got {len(parts)} field(s)", file=str(movies), line=line)
        title, year = _title_year(parts[1])
        items[parts[0].strip()] = {"title": title or parts[0].strip(), "description": "", "feat_year": _year(year),
                                   "categories": parts[2].strip().replace("|", ", ")}

    for line, parts in _delimited(movies, "::", item_sink):
        item_sink.add(lambda parts=parts, line=line: parse_item(parts, line))
    _not_empty(items, movies)
    users = None
    user_file = path / "users.dat"
    if user_file.is_file():
        users = {}

        def parse_user(parts: list[str], line: int) -> None:
            if len(parts) != 5:
                raise DataError(f"expected UserID::Gender::Age::Occupation::Zip-code, got {len(parts)} field(s)",
                                file=str(user_file), line=line)
            code = parts[3].strip()
            users[parts[0].strip()] = {
                "feat_gender": parts[1].strip(), "feat_age": ML1M_AGES.get(parts[2].strip(), parts[2].strip()),
                "feat_occupation": ML1M_OCCUPATIONS[int(code)] if code.isdigit() and int(code) < 21 else code}

        for line, parts in _delimited(user_file, "::", user_sink):
            user_sink.add(lambda parts=parts, line=line: parse_user(parts, line))
    return _finish("ml-1m", inter, items, users, ["feat_gender", "feat_age", "feat_occupation"],
                   sinks=(sink, item_sink, user_sink), source=ratings, items_source=movies,
                   users_source=user_file if users is not None else None)


def _read_mlcsv(path: Path, skip_bad_rows: bool) -> RawDataset:
    ratings = path / "ratings.csv"
    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line"], skip_bad_rows)
    fast = read_ratings_csv(ratings, dict(zip(FIELDS, CSV_COLUMNS)), CSV_SCALE)
    # not provably clean: the line path finds and names the problem
    inter = fast[0] if fast is not None else _read_ratings_lines(ratings, sink)
    movies = _required(path / "movies.csv", "MovieLens CSV")
    item_sink = RowSink([], skip_bad_rows)
    table = CsvRows(movies, delimiter=",", sink=item_sink)
    id_col, title_col, genre_col = (table.column_index(c) for c in ("movieId", "title", "genres"))
    items: dict[str, dict] = {}

    def parse_item(rec: list[str], line: int) -> None:
        table.check_width(rec, line)
        title, year = _title_year(rec[title_col])
        genres = rec[genre_col].strip()
        items[rec[id_col].strip()] = {"title": title or rec[id_col].strip(), "description": "", "feat_year": _year(year),
                                      "categories": "" if genres == "(no genres listed)" else genres.replace("|", ", ")}

    for line, rec in table:
        item_sink.add(lambda rec=rec, line=line: parse_item(rec, line))
    _not_empty(items, movies)
    return _finish(path.name or "movielens", inter, items, None, [], sinks=(sink, item_sink), source=ratings,
                   items_source=movies, scale=CSV_SCALE)


def _read_ratings_lines(ratings: Path, sink: RowSink):
    table = CsvRows(ratings, delimiter=",", sink=sink)
    idx = [table.column_index(c) for c in CSV_COLUMNS]

    def rows():
        for line, parts in table:
            if len(parts) != len(table.header):
                try:
                    table.check_width(parts, line)
                except DataError as err:
                    yield line, err
                continue
            yield line, [parts[i] for i in idx]

    return _read_ratings(ratings, rows(), sink, CSV_SCALE)


def read_recbole_atomic(path: Path, name: str, *, skip_bad_rows: bool = False) -> RawDataset:
    """RecBole atomic files: tab-separated, header `field:type`."""
    inter_file = path / f"{name}.inter"
    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line"], skip_bad_rows)
    header = _atomic_header(inter_file)
    idx = _column_index(inter_file, header, list(FIELDS))

    def rows():
        for line, parts in _delimited(inter_file, "\t", sink, skip_header=True):
            yield line, [parts[i] for i in idx] if len(parts) == len(header) else parts

    inter = _read_ratings(inter_file, rows(), sink, (1.0, 5.0))
    item_file = path / f"{name}.item"
    item_sink, user_sink = RowSink([], skip_bad_rows), RowSink([], skip_bad_rows)
    items: dict[str, dict] = {}
    if item_file.is_file():
        ih = _atomic_header(item_file)

        def parse_item(parts: list[str], line: int) -> None:
            if len(parts) != len(ih):
                raise DataError(f"expected {len(ih)} tab-separated fields, got {len(parts)}", file=str(item_file),
                                line=line)
            rec = dict(zip(ih, parts))
            title = rec.get("movie_title") or rec.get("title") or rec["item_id"]
            if title == "unkonwn":  # a typo in the shipped file for ML-100K item 267 (title unknown)
                title = "unknown"
            items[rec["item_id"]] = {"title": title, "categories": ", ".join((rec.get("class") or "").split()),
                                     "description": "", "feat_year": _year(rec.get("release_year", ""))}

        for line, parts in _delimited(item_file, "\t", item_sink, skip_header=True):
            item_sink.add(lambda parts=parts, line=line: parse_item(parts, line))
    user_file = path / f"{name}.user"
    users, user_features = None, []
    if user_file.is_file():
        uh = _atomic_header(user_file)
        user_features = [f"feat_{k}" for k in uh if k not in ("user_id", "zip_code")]
        users = {}

        def parse_user(parts: list[str], line: int) -> None:
            if len(parts) != len(uh):
                raise DataError(f"expected {len(uh)} tab-separated fields, got {len(parts)}", file=str(user_file),
                                line=line)
            rec = dict(zip(uh, parts))
            users[rec["user_id"]] = {f"feat_{k}": optional_float(v) if k in NUMERIC_USER_FIELDS else v
                                     for k, v in rec.items() if k not in ("user_id", "zip_code")}

        for line, parts in _delimited(user_file, "\t", user_sink, skip_header=True):
            user_sink.add(lambda parts=parts, line=line: parse_user(parts, line))
    return _finish(name, inter, items, users, user_features, sinks=(sink, item_sink, user_sink), source=inter_file,
                   items_source=item_file if item_file.is_file() else None,
                   users_source=user_file if users is not None else None)


NUMERIC_USER_FIELDS = {"age"}


def _column_index(file: Path, header: list[str], want: list[str]) -> list[int]:
    """Positions of the wanted columns in a header line; a clear error naming the first missing one."""
    missing = [c for c in want if c not in header]
    if missing:
        raise DataError(f"missing column(s) {missing}; header is {header}", file=str(file), line=1, field=missing[0])
    return [header.index(c) for c in want]


def _atomic_header(file: Path) -> list[str]:
    if not file.is_file():
        raise DataError("file not found", file=str(file))
    for _, text in decoded_lines(file):
        return [h.split(":")[0] for h in text.rstrip("\r\n").split("\t")]
    raise DataError("empty file: expected a header line", file=str(file), line=1)


def _title_year(title: str) -> tuple[str, str]:
    """'Toy Story (1995)' -> ('Toy Story', '1995'); 'Matrix, The (1999)' -> ('The Matrix', '1999')."""
    title = title.strip()
    m = _YEAR_IN_TITLE.search(title)
    year = m.group(1) if m else ""
    if m:
        title = title[:m.start()].strip()
    for article in ("The", "A", "An", "Les", "La", "Le", "Il", "Das", "Der", "Die", "El"):
        suffix = f", {article}"
        if title.endswith(suffix):
            title = f"{article} {title[:-len(suffix)]}"
            break
    return title, year
