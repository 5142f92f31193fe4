"""Amazon reviews: the 2014/2018 releases (McAuley lab, Ni et al.) and the 2023 release (Hou et al.).

Layouts (each file may be gzipped):
- 2018: reviews `<Cat>.json`, `<Cat>_5.json` or (2014) `reviews_<Cat>[_5].json`, JSON lines with
  `reviewerID, asin, overall, unixReviewTime` (`reviewTime` "09 13, 2009" when the epoch is absent);
  meta `meta_<Cat>.json` with `asin, title, category` (2014: `categories`, nested lists),
  `description` (list or str), `brand`, `main_cat`, `price`. The 2014 meta files are Python dict
  literals (single quotes), read with `ast.literal_eval` when a line is not JSON.
- 2023: reviews `<Cat>.jsonl` with `user_id, parent_asin (preferred) | asin, rating, timestamp (ms)`;
  meta `meta_<Cat>.jsonl` with `parent_asin, title, categories, description (list), main_category,
  store, price`.
The release is detected from the first record's keys.

Choices: domain "movie" when the category name mentions movies (Movies_and_TV), else "product";
ratings 1-5 with label threshold 4 (the LR-Recsys setting). Items are the reviewed ids only (meta
rows for other ids are never kept); `categories` falls back to the 2023 `main_category` when the list
is empty. Features: `feat_brand` (2018 brand / 2023 store), `feat_main_category`, `feat_price`
(float, NaN when absent). Review text is not kept: it is written after the interaction, so as a
model input it would leak the label.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from reasonrec.data.readers._io import (
    bad_row_meta, base_name, clean_text, format_ext, id_field, interactions_frame, items_frame,
    iter_json_lines, join_categories, optional_float, parse_time, rating, require, require_rows, to_id,
    users_frame,
)
from reasonrec.data.schema import RawDataset, RowSink
from reasonrec.errors import DataError

REVIEW_EXTS = ("json", "jsonl")
FEATURES = ["feat_brand", "feat_main_category", "feat_price"]


def read_amazon(path: Path, *, skip_bad_rows: bool = False, category: str | None = None,
                meta_path: Path | None = None) -> RawDataset:
    """Read one Amazon category. `path` is the reviews file or a directory holding it.

    `category` picks the reviews file when the directory holds several; `meta_path` overrides the
    `meta_<Cat>` file found beside the reviews.
    """
    path = Path(path)
    reviews = _find_reviews(path, category)
    cat = _category_of(reviews)
    meta_file = Path(meta_path) if meta_path else _find_meta(reviews.parent, cat)

    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line"], skip_bad_rows)
    file = str(reviews)
    version = None
    for line, rec in iter_json_lines(reviews, sink=sink, literal_fallback=True):
        if version is None:
            version = _detect(rec, file=file, line=line)
        parse = _parse_2018 if version == "2018" else _parse_2023
        sink.add(lambda rec=rec, line=line: parse(rec, file, line))
    inter = interactions_frame(sink, reviews)
    require_rows(inter, reviews, [sink])

    meta_sink = RowSink([], skip_bad_rows)
    rows = _read_meta(meta_file, set(inter["item_id"].unique()), meta_sink) if meta_file else {}
    items = items_frame(inter["item_id"], rows, FEATURES if meta_file else [])
    return RawDataset(
        name=f"amazon-{cat}",
        domain="movie" if "movie" in cat.lower() else "product",
        interactions=inter,
        items=items,
        users=users_frame(inter["user_id"]),
        label_threshold=4.0,
        rating_scale=(1.0, 5.0),
        meta={
            "source": file,
            "items_source": str(meta_file) if meta_file else None,
            "users_source": None,
            "format": f"amazon-{version}",
            "time_source": "unixReviewTime" if version == "2018" else "timestamp (ms)",
            **bad_row_meta(sink, meta_sink),
        },
    )


def _find_reviews(path: Path, category: str | None) -> Path:
    if path.is_file():
        if path.name.startswith("meta_"):
            raise DataError("this is an item meta file; pass the reviews file or its directory", file=str(path))
        return path
    candidates = sorted(p for p in path.iterdir()
                        if p.is_file() and format_ext(p) in REVIEW_EXTS and not p.name.startswith("meta_"))
    if category:
        candidates = [p for p in candidates if _category_of(p).lower() == category.lower()]
    if len(candidates) == 1:
        return candidates[0]
    names = [p.name for p in candidates] or sorted(p.name for p in path.iterdir())
    if not candidates:
        raise DataError(f"no Amazon reviews file (<Cat>.json[l][.gz]) for category {category!r} here; "
                        f"found {names}", file=str(path))
    raise DataError(f"several reviews files {names}; pass one as the path or choose with category=",
                    file=str(path))


def _category_of(reviews: Path) -> str:
    name = base_name(reviews)
    name = name.removeprefix("reviews_")
    return name.removesuffix("_5")


def _find_meta(folder: Path, cat: str) -> Path | None:
    for ext in ("json.gz", "json", "jsonl.gz", "jsonl"):
        candidate = folder / f"meta_{cat}.{ext}"
        if candidate.exists():
            return candidate
    return None


def _detect(rec: dict, *, file: str, line: int) -> str:
    if "reviewerID" in rec:
        return "2018"
    if "user_id" in rec:
        return "2023"
    raise DataError("cannot tell the Amazon release: expected 2018 keys (reviewerID, asin, overall, "
                    f"unixReviewTime) or 2023 keys (user_id, parent_asin, rating, timestamp); got {sorted(rec)}",
                    file=file, line=line)


def _parse_2018(rec: dict, file: str, line: int) -> dict:
    if rec.get("unixReviewTime") is not None:
        ts = parse_time(rec["unixReviewTime"], file=file, line=line, field_name="unixReviewTime")
    elif rec.get("reviewTime"):
        ts = _review_time(rec["reviewTime"], file=file, line=line)
    else:
        raise DataError("missing field (and no reviewTime either)", file=file, line=line, field="unixReviewTime")
    return {
        "user_id": id_field(rec, "reviewerID", file=file, line=line),
        "item_id": id_field(rec, "asin", file=file, line=line),
        "rating": rating(require(rec, "overall", file=file, line=line), file=file, line=line,
                         field_name="overall", bounds=(1, 5)),
        "timestamp": ts,
        "line": line,
    }


def _review_time(text, *, file: str, line: int) -> int:
    """`reviewTime` is "MM DD, YYYY" (US order, no zero-padding guarantee)."""
    try:
        dt = datetime.strptime(str(text).strip(), "%m %d, %Y").replace(tzinfo=timezone.utc)
    except ValueError:
        raise DataError(f"cannot parse a date from {text!r} (expected 'MM DD, YYYY')",
                        file=file, line=line, field="reviewTime") from None
    return int(dt.timestamp())


def _parse_2023(rec: dict, file: str, line: int) -> dict:
    item_field = "parent_asin" if rec.get("parent_asin") else "asin"
    if not rec.get(item_field):
        raise DataError(f"missing field (and no asin either); the record has {sorted(rec)[:12]}",
                        file=file, line=line, field="parent_asin")
    return {
        "user_id": id_field(rec, "user_id", file=file, line=line),
        "item_id": to_id(rec[item_field], file=file, line=line, field_name=item_field),
        "rating": rating(require(rec, "rating", file=file, line=line), file=file, line=line,
                         field_name="rating", bounds=(1, 5)),
        "timestamp": parse_time(require(rec, "timestamp", file=file, line=line), file=file, line=line,
                                field_name="timestamp", unit="ms"),
        "line": line,
    }


def _read_meta(meta_file: Path, wanted: set[str], sink: RowSink) -> dict[str, dict]:
    """Item text for the reviewed ids; the first record of a duplicated asin wins (2018 has repeats)."""
    rows: dict[str, dict] = {}
    file = str(meta_file)
    for line, rec in iter_json_lines(meta_file, sink=sink, literal_fallback=True):
        item = rec.get("parent_asin") or rec.get("asin")
        if item is None:
            sink.add(lambda line=line, rec=rec: _no_id(rec, file, line))
            continue
        item = str(item).strip()
        if item not in wanted or item in rows:
            continue
        main = _not_html(rec.get("main_cat") or rec.get("main_category"))
        rows[item] = {
            "title": clean_text(rec.get("title")),
            "categories": join_categories(rec.get("categories") or rec.get("category")) or join_categories(main),
            "description": clean_text(rec.get("description")),
            "feat_brand": clean_text(rec.get("brand") or rec.get("store")) or None,
            "feat_main_category": clean_text(main) or None,
            "feat_price": optional_float(rec.get("price")),
        }
    return rows


def _no_id(rec: dict, file: str, line: int) -> None:
    raise DataError(f"missing field (and no parent_asin either); the record has {sorted(rec)[:12]}",
                    file=file, line=line, field="asin")


def _not_html(value):
    # 2018 `main_cat` is sometimes an <img> logo tag instead of a name.
    return None if isinstance(value, str) and value.lstrip().startswith("<") else value
