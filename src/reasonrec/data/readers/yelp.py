"""Yelp Open Dataset (academic dataset JSON lines).

`path` is the directory holding `yelp_academic_dataset_review.json` and
`yelp_academic_dataset_business.json` (either may be `.gz`), or the review file itself with the
business file beside it.
Review: `user_id, business_id, stars, date ("2016-03-09 00:44:42", read as UTC)`.
Business: `business_id, name, categories ("Thai, Restaurants" or null), city, state, stars,
review_count`.

Choices: domain "restaurant", stars 1-5 with label threshold 4. `restaurants_only=True` keeps
businesses having the category "Restaurants" or "Food" (whole category names, so "Pet Food Stores"
does not count); reviews of other businesses, and of businesses the business file lacks, are
dropped, counted per reason in `meta["dropped"]` and listed in the rejects. Items: title = name,
categories as given, description = "Located in <city>, <state>." (the dataset has no free text
about a business), numeric features `feat_stars`, `feat_review_count` (NaN when absent), text
features `feat_city`, `feat_state`. Hour/weekday context comes from the review `date` in prepare.
The large user file is not read: users get no features.
"""

from __future__ import annotations

from pathlib import Path

from reasonrec.data.readers._io import (
    bad_row_meta, clean_text, id_field, interactions_frame, items_frame, iter_json_lines, join_categories,
    optional_float, parse_time, rating, require, require_rows, users_frame,
)
from reasonrec.data.schema import RawDataset, RowSink
from reasonrec.errors import DataError

REVIEW = "yelp_academic_dataset_review"
BUSINESS = "yelp_academic_dataset_business"
FOOD_CATEGORIES = {"Restaurants", "Food"}
FEATURES = ["feat_city", "feat_state", "feat_stars", "feat_review_count"]


def read_yelp(path: Path, *, skip_bad_rows: bool = False, restaurants_only: bool = True) -> RawDataset:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    reviews = path if path.is_file() else _find(folder, REVIEW, required=True)
    business_file = _find(folder, BUSINESS, required=restaurants_only)

    biz_sink = RowSink([], skip_bad_rows)
    businesses = _read_businesses(business_file, biz_sink) if business_file else {}
    kept = {b for b, row in businesses.items() if _is_food(row["categories"])} if restaurants_only else None

    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line"], skip_bad_rows)
    file = str(reviews)

    def parse(rec: dict, line: int) -> dict | None:
        row = {
            "user_id": id_field(rec, "user_id", file=file, line=line),
            "item_id": id_field(rec, "business_id", file=file, line=line),
            "rating": rating(require(rec, "stars", file=file, line=line), file=file, line=line,
                             field_name="stars", bounds=(1, 5)),
            "timestamp": parse_time(require(rec, "date", file=file, line=line), file=file, line=line,
                                    field_name="date"),
            "line": line,
        }
        if kept is not None and row["item_id"] not in kept:
            reason = "not a restaurant" if row["item_id"] in businesses else "business not in the business file"
            sink.drop(reason, file=file, line=line, field="business_id")
            return None
        return row

    for line, rec in iter_json_lines(reviews, sink=sink):
        sink.add(lambda rec=rec, line=line: parse(rec, line))
    inter = interactions_frame(sink, reviews)
    require_rows(inter, reviews, [sink, biz_sink], sink.dropped)

    return RawDataset(
        name="yelp",
        domain="restaurant",
        interactions=inter,
        items=items_frame(inter["item_id"], businesses, FEATURES if business_file else []),
        users=users_frame(inter["user_id"]),
        label_threshold=4.0,
        rating_scale=(1.0, 5.0),
        meta={
            "source": file,
            "items_source": str(business_file) if business_file else None,
            "users_source": None,
            "time_source": "date",
            "restaurants_only": restaurants_only,
            **bad_row_meta(sink, biz_sink),
        },
    )


def _find(folder: Path, stem: str, *, required: bool) -> Path | None:
    for ext in (".json", ".json.gz", ".jsonl", ".jsonl.gz"):
        if (folder / f"{stem}{ext}").exists():
            return folder / f"{stem}{ext}"
    if required:
        raise DataError(f"no {stem}.json[.gz] here (needed{' to filter restaurants' if stem == BUSINESS else ''}); "
                        f"found {sorted(p.name for p in folder.iterdir())}", file=str(folder))
    return None


def _is_food(categories: str) -> bool:
    return any(c.strip() in FOOD_CATEGORIES for c in categories.split(","))


def _read_businesses(business_file: Path, sink: RowSink) -> dict[str, dict]:
    """All businesses (a few hundred thousand rows, fine in memory) keyed by id."""
    rows: dict[str, dict] = {}
    file = str(business_file)

    def parse(rec: dict, line: int) -> None:
        business = id_field(rec, "business_id", file=file, line=line)
        city, state = clean_text(rec.get("city")), clean_text(rec.get("state"))
        where = ", ".join(x for x in (city, state) if x)
        rows.setdefault(business, {
            "title": clean_text(rec.get("name")),
            "categories": join_categories(rec.get("categories")),
            "description": f"Located in {where}." if where else "",
            "feat_city": city or None,
            "feat_state": state or None,
            "feat_stars": optional_float(rec.get("stars")),
            "feat_review_count": optional_float(rec.get("review_count")),
        })

    for line, rec in iter_json_lines(business_file, sink=sink):
        sink.add(lambda rec=rec, line=line: parse(rec, line))
    return rows
