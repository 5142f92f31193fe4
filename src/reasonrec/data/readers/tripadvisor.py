"""TripAdvisor hotel reviews as released with PETER/NRT (Li et al.), or the same data as JSON lines.

- `reviews.pickle` (optionally `.gz`): a list of dicts with `user`, `item`, `rating`,
  `template` = (feature, adjective, sentence, sentiment) and optionally `predicted`. It has no
  times, so the timestamp is the record's position (`meta["time_source"] = "file order"`) and
  `line` is the 1-based record index. Unpickling goes through `SafeUnpickler`, which only lets
  plain containers/scalars through: a pickle referencing any other global (a class, `os.system`)
  is refused with a DataError instead of being executed.
- JSON lines (`reviews.jsonl`/`.json`, optionally `.gz`): `user, item, rating`, and `time` (epoch
  seconds or ISO) or `date`; without either, file order. An optional per-record `title`, and an
  optional `items.json[l]` beside it (`item, title, categories, description`) give item text.

Choices: domain "hotel", ratings 1-5 with label threshold 4. Hotels have no titles here, so the
title falls back to the id. The aspect terms (template[0], e.g. "room", "location") are item-level
text: each item's `categories` is its up to 5 most frequent aspect terms *in training reviews*
(unless an items file gives categories). The reader keeps each review's term in `aux_aspect` and
`prepare` counts them after the split (`RawDataset.derive_items`), so a test review never shapes
what a model sees about its hotel. They are not per-interaction `ctx_` columns because they come
from the review itself and would leak the rating into a model's input.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import pandas as pd

from reasonrec.data.readers._io import (
    CATEGORY_SEP, FILE_ORDER, bad_row_meta, clean_text, format_ext, id_field, interactions_frame, is_missing,
    items_frame, iter_json_lines, join_categories, open_binary, parse_time, rating, require, require_rows,
    users_frame,
)
from reasonrec.data.schema import RawDataset, RowSink
from reasonrec.errors import DataError

REVIEW_NAMES = ("reviews.pickle", "reviews.pickle.gz", "reviews.pkl", "reviews.pkl.gz", "reviews.jsonl",
                "reviews.jsonl.gz", "reviews.json", "reviews.json.gz")
ITEM_NAMES = ("items.jsonl", "items.jsonl.gz", "items.json", "items.json.gz")
TOP_ASPECTS = 5
ASPECT = "aux_aspect"
# The globals a pickle of plain Python containers may reference: protocols 0-3 name set/frozenset/
# bytearray/complex, and protocols 0-2 rebuild bytes with `_codecs.encode(text, "latin1")`, a pure
# string transform. Everything else (classes, functions such as os.system) is refused.
_ALLOWED = {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes",
                                       "bytearray", "int", "float", "bool", "complex")} | {("_codecs", "encode")}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles lists/dicts/tuples/sets of str, bytes and numbers; any other global is refused."""

    def __init__(self, fh, *, file: str):
        super().__init__(fh, encoding="utf-8", errors="replace")
        self.file = file

    def find_class(self, module: str, name: str):
        canonical = "builtins" if module == "__builtin__" else module
        if (canonical, name) not in _ALLOWED:
            raise DataError(f"refusing to unpickle {module}.{name}: only plain lists, dicts, strings and "
                            "numbers are allowed (this file may not be what it claims to be)", file=self.file)
        return super().find_class(module, name)


def safe_load_pickle(path: Path):
    try:
        with open_binary(path) as fh:
            return SafeUnpickler(fh, file=str(path)).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError) as err:
        raise DataError(f"not a readable pickle ({type(err).__name__}: {err})", file=str(path)) from None


def read_tripadvisor(path: Path, *, skip_bad_rows: bool = False) -> RawDataset:
    path = Path(path)
    reviews = path if path.is_file() else _find(path, REVIEW_NAMES, required=True)
    items_file = _find(reviews.parent, ITEM_NAMES, required=False)
    file = str(reviews)
    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line", ASPECT], skip_bad_rows)
    titles: dict[str, str] = {}

    if format_ext(reviews) in ("pickle", "pkl"):
        records = safe_load_pickle(reviews)
        if not isinstance(records, (list, tuple)):
            raise DataError(f"expected a list of review dicts, got {type(records).__name__}", file=file)
        numbered = ((i, rec) for i, rec in enumerate(records, start=1))
        time_source = FILE_ORDER
    else:
        numbered = iter_json_lines(reviews, sink=sink)
        time_source = None  # decided by the first record

    def parse(rec, line: int) -> dict:
        if not isinstance(rec, dict):
            raise DataError(f"expected a dict, got {type(rec).__name__}", file=file, line=line)
        user_key = "user" if "user" in rec or "user_id" not in rec else "user_id"
        item_key = "item" if "item" in rec or "item_id" not in rec else "item_id"
        row = {
            "user_id": id_field(rec, user_key, file=file, line=line),
            "item_id": id_field(rec, item_key, file=file, line=line),
            "rating": rating(require(rec, "rating", file=file, line=line), file=file, line=line,
                             field_name="rating", bounds=(1, 5)),
            "timestamp": line if time_source == FILE_ORDER else parse_time(
                require(rec, time_source, file=file, line=line), file=file, line=line, field_name=time_source),
            "line": line,
            ASPECT: _aspect(rec.get("template")),
        }
        if not is_missing(rec.get("title")):
            titles.setdefault(row["item_id"], clean_text(rec["title"]))
        return row

    for line, rec in numbered:
        if time_source is None:
            time_source = "time" if "time" in rec else "date" if "date" in rec else FILE_ORDER
        sink.add(lambda rec=rec, line=line: parse(rec, line))
    inter = interactions_frame(sink, reviews, extra_columns=[ASPECT])
    inter[ASPECT] = inter[ASPECT].astype(str)
    require_rows(inter, reviews, [sink])

    item_sink = RowSink([], skip_bad_rows)
    rows = _read_items(items_file, item_sink) if items_file else {}
    for item, title in titles.items():
        row = rows.setdefault(item, {})
        row["title"] = row.get("title") or title

    return RawDataset(
        name="tripadvisor",
        domain="hotel",
        interactions=inter,
        items=items_frame(inter["item_id"], rows),
        users=users_frame(inter["user_id"]),
        label_threshold=4.0,
        rating_scale=(1.0, 5.0),
        derive_items=aspect_categories,
        meta={
            "source": file,
            "items_source": str(items_file) if items_file else None,
            "users_source": None,
            "time_source": time_source,
            **bad_row_meta(sink, item_sink),
        },
    )


def aspect_categories(train: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Items without categories get their top aspect terms among `train` (ties: first seen in the file)."""
    said = train[train[ASPECT].astype(str) != ""].sort_values("line", kind="stable")
    top = {item: CATEGORY_SEP.join(term for term, _ in Counter(terms).most_common(TOP_ASPECTS))
           for item, terms in said.groupby("item_id", sort=False)[ASPECT]}
    items = items.copy()
    empty = items["categories"].fillna("").astype(str) == ""
    items.loc[empty, "categories"] = items.loc[empty, "item_id"].map(top).fillna("").astype(str)
    return items


def _find(folder: Path, names: tuple[str, ...], *, required: bool) -> Path | None:
    for name in names:
        if (folder / name).exists():
            return folder / name
    if required:
        raise DataError(f"no reviews file (one of {list(names)}); found {sorted(p.name for p in folder.iterdir())}",
                        file=str(folder))
    return None


def _aspect(template) -> str:
    if isinstance(template, (list, tuple)) and template and isinstance(template[0], str):
        return clean_text(template[0]).lower()
    return ""


def _read_items(items_file: Path, sink: RowSink) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    file = str(items_file)

    def parse(rec: dict, line: int) -> None:
        key = "item" if "item" in rec or "item_id" not in rec else "item_id"
        item = id_field(rec, key, file=file, line=line)
        rows.setdefault(item, {
            "title": clean_text(rec.get("title")),
            "categories": join_categories(rec.get("categories")),
            "description": clean_text(rec.get("description")),
        })

    for line, rec in iter_json_lines(items_file, sink=sink):
        sink.add(lambda rec=rec, line=line: parse(rec, line))
    return rows
