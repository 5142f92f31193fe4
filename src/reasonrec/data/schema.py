"""The one schema every reader produces, and its validation.

A reader returns a :class:`RawDataset`: raw interactions plus item and user side tables. `prepare`
turns it into the samples contract of DESIGN.md (split, label, history). Keeping the raw form
separate lets every reader stay small: it only parses its format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reasonrec.errors import DataError

# Interactions: one row per (user, item, time). `line` is the 1-based line/row in `source` so that a
# problem found after parsing (a duplicate, say) can still point at the offending input.
INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_TEXT_COLUMNS = ["title", "categories", "description"]

SPLITS = ("train", "valid", "test")
HISTORY_LEN = 5


@dataclass
class RawDataset:
    """What a reader returns.

    interactions: user_id (str), item_id (str), rating (float), timestamp (int64 seconds; when the
        source has no time, the file order is used and `meta['time_source']` says so), optional
        context columns prefixed `ctx_`, plus `source` (file) and `line` (1-based) for error messages.
    items: item_id (str), title (str), categories (str, comma-separated), description (str),
        optional feature columns prefixed `feat_`.
    users: user_id (str), optional feature columns prefixed `feat_`.
    """

    name: str
    domain: str  # movie | product | restaurant | hotel | book: picks the prompt templates
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    label_threshold: float = 4.0
    rating_scale: tuple[float, float] = (1.0, 5.0)
    meta: dict = field(default_factory=dict)


def empty_users(user_ids) -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series(sorted(set(user_ids)), dtype=str)})


def empty_items(item_ids) -> pd.DataFrame:
    ids = sorted(set(item_ids))
    return pd.DataFrame({"item_id": ids, "title": ids, "categories": "", "description": ""})


def to_float(value, *, file, line, field_name) -> float:
    """Parse a rating; a clear DataError instead of a bare ValueError."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"expected a number, got {value!r}", file=file, line=line, field=field_name) from None
    if not np.isfinite(out):
        raise DataError(f"expected a finite number, got {value!r}", file=file, line=line, field=field_name)
    return out


def to_timestamp(value, *, file, line, field_name, unit: str = "s") -> int:
    """Parse epoch seconds/milliseconds or an ISO-like date string into epoch seconds."""
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and np.isfinite(value)):
        return int(value) // (1000 if unit == "ms" else 1)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text) // (1000 if unit == "ms" else 1)
        try:
            ts = pd.Timestamp(text)
        except (ValueError, TypeError):
            ts = None
        if ts is not None and ts is not pd.NaT:
            if ts.tzinfo is not None:
                ts = ts.tz_convert("UTC").tz_localize(None)
            return int(ts.value // 10**9)
    raise DataError(f"cannot parse a timestamp from {value!r}", file=file, line=line, field=field_name)


class RowSink:
    """Collects parsed rows column-wise; in skip mode, counts bad rows instead of raising.

    Readers stream their input line by line into one of these, so memory holds parsed columns,
    never the raw file.
    """

    def __init__(self, columns: list[str], skip_bad_rows: bool = False):
        self.columns = {c: [] for c in columns}
        self.skip_bad_rows = skip_bad_rows
        self.bad: list[str] = []

    def add(self, parse):
        """`parse` is a zero-argument callable returning a row dict or raising DataError."""
        try:
            row = parse()
        except DataError as err:
            if not self.skip_bad_rows:
                raise
            self.bad.append(str(err))
            return
        if row is None:
            return
        for col, values in self.columns.items():
            values.append(row.get(col))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)


def validate(ds: RawDataset, *, skip_bad_rows: bool = False) -> dict:
    """Check the raw dataset; returns a report of what was dropped (only in skip mode).

    Duplicate (user, item, timestamp) rows are an error because they usually mean a file was
    concatenated twice; in skip mode the later copy is dropped and counted.
    """
    inter = ds.interactions
    report = {"bad_rows": 0, "duplicates": 0}
    missing = [c for c in INTERACTION_COLUMNS if c not in inter.columns]
    if missing:
        src = inter["source"].iloc[0] if "source" in inter.columns and len(inter) else ds.name
        raise DataError(f"missing column(s) {missing}; have {list(inter.columns)}", file=src)
    if len(inter) == 0:
        raise DataError("no interactions left after reading (empty input, or every row was bad)",
                        file=ds.meta.get("source", ds.name))
    dup = inter.duplicated(subset=["user_id", "item_id", "timestamp"], keep="first")
    if dup.any():
        if not skip_bad_rows:
            first = inter[dup].iloc[0]
            raise DataError(
                f"duplicate interaction (user {first.user_id!r}, item {first.item_id!r}, "
                f"timestamp {first.timestamp}); pass --skip-bad-rows to drop repeats",
                file=first.get("source"), line=_int_or_none(first.get("line")), field="user_id,item_id,timestamp")
        report["duplicates"] = int(dup.sum())
        ds.interactions = inter = inter[~dup].reset_index(drop=True)
    for col in ("user_id", "item_id"):
        if inter[col].isna().any() or (inter[col].astype(str).str.len() == 0).any():
            bad = inter[inter[col].isna() | (inter[col].astype(str).str.len() == 0)].iloc[0]
            raise DataError("empty id", file=bad.get("source"), line=_int_or_none(bad.get("line")), field=col)
    if "item_id" not in ds.items.columns:
        raise DataError("items table has no 'item_id' column", file=ds.meta.get("items_source", ds.name))
    return report


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
