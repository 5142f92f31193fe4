"""MovieLens: the embedded ML-100K (RecBole atomic files) and the original GroupLens layouts.

Layouts recognised by `read_grouplens(path)` (a directory):
- ml-100k: `u.data` (tab: user item rating ts), `u.item` (pipe, latin-1, 19 genre flags), `u.user`
- ml-1m:   `ratings.dat`, `movies.dat`, `users.dat` (`::`-separated, latin-1)
- ml-20m / ml-25m / ml-latest(-small): `ratings.csv`, `movies.csv` (title carries "(year)")
- RecBole atomic files: `<name>.inter`, `<name>.item`, `<name>.user` (typed tab-separated headers)

Ratings are 1-5 (half stars in ml-20m/latest); "high" means rating >= 4, as in LR-Recsys.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd

from reasonrec.data.schema import RawDataset, RowSink, empty_users, to_float, to_timestamp
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

def _read_ratings(file: Path, rows, skip_bad_rows: bool) -> pd.DataFrame:
    """`rows` yields (line_no, [user, item, rating, timestamp]) from any of the layouts."""
    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "source", "line"], skip_bad_rows)
    fields = ("user_id", "item_id", "rating", "timestamp")
    for line_no, parts in rows:
        def parse(parts=parts, line_no=line_no):
            if len(parts) < 4:
                raise DataError(f"expected 4 fields (user, item, rating, timestamp), got {len(parts)}",
                                file=str(file), line=line_no, field=fields[len(parts)] if len(parts) < 4 else None)
            user, item = parts[0].strip(), parts[1].strip()
            for name, value in (("user_id", user), ("item_id", item)):
                if not value:
                    raise DataError("empty id", file=str(file), line=line_no, field=name)
            return {"user_id": user, "item_id": item,
                    "rating": to_float(parts[2], file=str(file), line=line_no, field_name="rating"),
                    "timestamp": to_timestamp(parts[3], file=str(file), line=line_no, field_name="timestamp"),
                    "source": str(file), "line": line_no}
        sink.add(parse)
    out = sink.frame()
    out.attrs["bad"] = sink.bad
    return out


def _split_lines(file: Path, sep: str, encoding: str = "utf-8", skip_header: bool = False):
    with open(file, encoding=encoding, errors="strict" if encoding == "utf-8" else "replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if skip_header and line_no == 1:
                continue
            line = line.rstrip("\r\n")
            if line:
                yield line_no, line.split(sep)


def _finish(name, inter, items, users, *, source, items_source, rating_scale=(1.0, 5.0)) -> RawDataset:
    meta = {"source": str(source), "items_source": str(items_source), "time_source": "timestamp",
            "bad_rows": len(inter.attrs.get("bad", [])), "bad_examples": inter.attrs.get("bad", [])[:5]}
    inter["timestamp"] = inter["timestamp"].astype("int64")
    inter["rating"] = inter["rating"].astype("float64")
    known = set(items["item_id"])
    unknown = sorted(set(inter["item_id"]) - known)
    if unknown:  # ratings for items the item file lacks still count; give them their id as title
        items = pd.concat([items, pd.DataFrame({"item_id": unknown, "title": unknown, "categories": "",
                                                "description": ""})], ignore_index=True)
    if users is None:
        users = empty_users(inter["user_id"])
    return RawDataset(name=name, domain="movie", interactions=inter, items=items, users=users,
                      label_threshold=4.0, rating_scale=rating_scale, meta=meta)


# --- layouts ------------------------------------------------------------------------------

def _read_ml100k(path: Path, skip_bad_rows: bool) -> RawDataset:
    inter = _read_ratings(path / "u.data", _split_lines(path / "u.data", "\t"), skip_bad_rows)
    rows = []
    for line_no, parts in _split_lines(path / "u.item", "|", encoding="latin-1"):
        if len(parts) < 5 + len(ML100K_GENRES):
            raise DataError(f"expected {5 + len(ML100K_GENRES)} fields, got {len(parts)}",
                            file=str(path / "u.item"), line=line_no)
        flags = parts[5:5 + len(ML100K_GENRES)]
        genres = [g for g, f in zip(ML100K_GENRES, flags) if f.strip() == "1"]
        title, year = _title_year(parts[1])
        if not year and parts[2][-4:].isdigit():
            year = parts[2][-4:]
        rows.append({"item_id": parts[0].strip(), "title": title or parts[0].strip(), "categories": ", ".join(genres),
                     "description": "", "feat_year": year})
    items = pd.DataFrame(rows)
    users = None
    if (path / "u.user").is_file():
        users = pd.DataFrame(
            [{"user_id": p[0], "feat_age": p[1], "feat_gender": p[2], "feat_occupation": p[3]}
             for _, p in _split_lines(path / "u.user", "|", encoding="latin-1") if len(p) >= 4])
    return _finish("ml-100k", inter, items, users, source=path / "u.data", items_source=path / "u.item")


def _read_ml1m(path: Path, skip_bad_rows: bool) -> RawDataset:
    ratings = path / "ratings.dat"
    inter = _read_ratings(ratings, _split_lines(ratings, "::"), skip_bad_rows)
    rows = []
    for line_no, parts in _split_lines(path / "movies.dat", "::", encoding="latin-1"):
        if len(parts) < 3:
            raise DataError("expected MovieID::Title::Genres", file=str(path / "movies.dat"), line=line_no)
        title, year = _title_year(parts[1])
        rows.append({"item_id": parts[0], "title": title or parts[0], "categories": parts[2].replace("|", ", "),
                     "description": "", "feat_year": year})
    users = None
    if (path / "users.dat").is_file():
        users = pd.DataFrame([
            {"user_id": p[0], "feat_gender": p[1], "feat_age": ML1M_AGES.get(p[2], p[2]),
             "feat_occupation": ML1M_OCCUPATIONS[int(p[3])] if p[3].isdigit() and int(p[3]) < 21 else p[3]}
            for _, p in _split_lines(path / "users.dat", "::", encoding="latin-1") if len(p) >= 4])
    return _finish("ml-1m", inter, pd.DataFrame(rows), users, source=ratings, items_source=path / "movies.dat")


def _read_mlcsv(path: Path, skip_bad_rows: bool) -> RawDataset:
    ratings = path / "ratings.csv"
    with open(ratings, encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    idx = _column_index(ratings, header, ["userId", "movieId", "rating", "timestamp"])

    def rows():
        for line_no, parts in _split_lines(ratings, ",", skip_header=True):
            yield line_no, [parts[i] if i < len(parts) else "" for i in idx] if len(parts) >= len(header) else parts

    inter = _read_ratings(ratings, rows(), skip_bad_rows)
    rows_ = []
    movies = path / "movies.csv"
    if movies.is_file():
        with open(movies, encoding="utf-8", newline="") as fh:
            for rec in csv.DictReader(fh):
                title, year = _title_year(rec.get("title", ""))
                genres = rec.get("genres", "")
                rows_.append({"item_id": rec["movieId"], "title": title or rec["movieId"],
                              "categories": "" if genres == "(no genres listed)" else genres.replace("|", ", "),
                              "description": "", "feat_year": year})
    items = pd.DataFrame(rows_, columns=["item_id", "title", "categories", "description", "feat_year"])
    return _finish(path.name or "movielens", inter, items, None, source=ratings, items_source=movies,
                   rating_scale=(0.5, 5.0))


def read_recbole_atomic(path: Path, name: str, *, skip_bad_rows: bool = False) -> RawDataset:
    """RecBole atomic files: tab-separated, header `field:type`."""
    inter_file = path / f"{name}.inter"
    header = _atomic_header(inter_file)
    idx = _column_index(inter_file, header, ["user_id", "item_id", "rating", "timestamp"])

    def rows():
        for line_no, parts in _split_lines(inter_file, "\t", skip_header=True):
            yield line_no, [parts[i] for i in idx] if len(parts) == len(header) else parts[:len(parts)]

    inter = _read_ratings(inter_file, rows(), skip_bad_rows)
    item_file = path / f"{name}.item"
    rows_ = []
    if item_file.is_file():
        ih = _atomic_header(item_file)
        for line_no, parts in _split_lines(item_file, "\t", skip_header=True):
            rec = dict(zip(ih, parts))
            title = rec.get("movie_title") or rec.get("title") or rec["item_id"]
            if title == "unkonwn":  # a typo in the shipped file for ML-100K item 267 (title unknown)
                title = "unknown"
            year = rec.get("release_year", "")
            rows_.append({"item_id": rec["item_id"], "title": title,
                          "categories": ", ".join((rec.get("class") or "").split()),
                          "description": "", "feat_year": year if year.isdigit() else ""})
    items = pd.DataFrame(rows_, columns=["item_id", "title", "categories", "description", "feat_year"])
    user_file = path / f"{name}.user"
    users = None
    if user_file.is_file():
        uh = _atomic_header(user_file)
        recs = [dict(zip(uh, p)) for _, p in _split_lines(user_file, "\t", skip_header=True)]
        users = pd.DataFrame([{"user_id": r["user_id"], **{f"feat_{k}": v for k, v in r.items()
                                                            if k not in ("user_id", "zip_code")}} for r in recs])
    return _finish(name, inter, items, users, source=inter_file, items_source=item_file)


def _column_index(file: Path, header: list[str], want: list[str]) -> list[int]:
    """Positions of the wanted columns in a header line; a clear error naming the first missing one."""
    missing = [c for c in want if c not in header]
    if missing:
        raise DataError(f"missing column(s) {missing}; header is {header}", file=str(file), line=1, field=missing[0])
    return [header.index(c) for c in want]


def _atomic_header(file: Path) -> list[str]:
    if not file.is_file():
        raise DataError("file not found", file=str(file))
    with open(file, encoding="utf-8") as fh:
        return [h.split(":")[0] for h in fh.readline().rstrip("\r\n").split("\t")]


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
