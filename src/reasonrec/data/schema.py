"""The one schema every reader produces, and its validation.

A reader returns a :class:`RawDataset`: raw interactions plus item and user side tables. `prepare`
turns it into the samples contract of DESIGN.md (split, label, history). Keeping the raw form
separate lets every reader stay small: it only parses its format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reasonrec.errors import DataError

# Interactions: one row per (user, item, time). `line` is the 1-based line/row in `source` so that a
# problem found after parsing (a duplicate, say) can still point at the offending input.
INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ITEM_TEXT_COLUMNS = ["title", "categories", "description"]

SPLITS = ("train", "valid", "test")
FILE_ORDER = "file order"  # meta["time_source"] of a dataset without real times
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
    derive_items: for item text computed from interactions (TripAdvisor's aspect terms). `prepare`
        calls it with the *train-split* interactions (which may carry reader columns prefixed
        `aux_`) and the items table, and uses the table it returns, so nothing a model sees about an
        item can come from a validation or test review.
    """

    name: str
    domain: str  # movie | product | restaurant | hotel | book: picks the prompt templates
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    label_threshold: float = 4.0
    rating_scale: tuple[float, float] = (1.0, 5.0)
    meta: dict = field(default_factory=dict)
    derive_items: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame] | None = None


def to_float(value, *, file, line, field_name) -> float:
    """Parse a rating; a clear DataError instead of a bare ValueError."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"expected a number, got {value!r}", file=file, line=line, field=field_name) from None
    if not np.isfinite(out):
        raise DataError(f"expected a finite number, got {value!r}", file=file, line=line, field=field_name)
    return out


def default_threshold(scale: tuple[float, float]) -> float:
    """Three quarters up the scale: 4 on 1-5 (the LR-Recsys setting), 7.5 on 0-10, 0.75 on 0-1."""
    lo, hi = scale
    return lo + 0.75 * (hi - lo)


def parse_scale(text: str) -> tuple[float, float]:
    """'1-5', '0.5-5', '0..10' or '1,10' -> (low, high)."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:-|\.\.|,|:)\s*(-?\d+(?:\.\d+)?)\s*", str(text))
    if not m or float(m.group(1)) >= float(m.group(2)):
        raise DataError(f"rating scale must be LOW-HIGH with LOW < HIGH (e.g. 1-5, 0-10), got {text!r}",
                        field="rating_scale")
    return float(m.group(1)), float(m.group(2))


class RowSink:
    """Collects parsed rows column-wise and keeps the account of every line that did not make it.

    Readers stream their input line by line into one of these, so memory holds parsed columns,
    never the raw file. `rejects` lists each bad line skipped (skip mode only; otherwise the
    DataError propagates) and each line dropped by a reader's stated policy (`drop`), with its
    reason; `decoded` counts the lines that needed the legacy-encoding fallback, per file.
    """

    def __init__(self, columns: list[str], skip_bad_rows: bool = False):
        self.columns = {c: [] for c in columns}
        self.skip_bad_rows = skip_bad_rows
        self.bad: list[str] = []
        self.rejects: list[dict] = []
        self.dropped: dict[str, int] = {}
        self.decoded: dict[str, list[int]] = {}

    def add(self, parse):
        """`parse` is a zero-argument callable returning a row dict (None: nothing to add) or raising DataError."""
        try:
            row = parse()
        except DataError as err:
            if not self.skip_bad_rows:
                raise
            self.reject(err)
            return
        if row is None:
            return
        for col, values in self.columns.items():
            values.append(row.get(col))

    def reject(self, err: DataError) -> None:
        self.bad.append(str(err))
        self.rejects.append({"file": err.file, "line": err.line, "field": err.field, "kind": "bad row",
                             "reason": err.reason})

    def drop(self, reason: str, *, file: str, line: int, field: str | None = None) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.rejects.append({"file": file, "line": line, "field": field, "kind": "dropped", "reason": reason})

    def note_decoded(self, file: str, line: int) -> None:
        self.decoded.setdefault(file, []).append(line)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)


DUPLICATE_POLICIES = ("first", "error")


def validate(ds: RawDataset, *, skip_bad_rows: bool = False, duplicates: str = "first") -> dict:
    """Check the raw dataset; returns what was dropped: {"bad_rows", "duplicates", "rejects"}.

    Ratings outside `ds.rating_scale` are bad rows (a safety net behind the readers' own checks).
    Repeated (user, item, timestamp) rows are real in some dumps (Amazon 2018 lists some reviews
    twice), so by default the first is kept and the repeats are counted and listed; `duplicates=
    "error"` stops at the first one instead, for data that should have none.
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise DataError(f"duplicates policy must be one of {list(DUPLICATE_POLICIES)}, got {duplicates!r}")
    inter = ds.interactions
    report = {"bad_rows": 0, "duplicates": 0, "rejects": []}
    missing = [c for c in INTERACTION_COLUMNS if c not in inter.columns]
    if missing:
        src = inter["source"].iloc[0] if "source" in inter.columns and len(inter) else ds.name
        raise DataError(f"missing column(s) {missing}; have {list(inter.columns)}", file=src)
    if len(inter) == 0:
        raise DataError("no interactions left after reading (empty input, or every row was bad)",
                        file=ds.meta.get("source", ds.name))
    lo, hi = ds.rating_scale
    out = ~inter["rating"].astype("float64").between(lo, hi)
    if out.any():
        rows = inter[out]
        if not skip_bad_rows:
            first = rows.iloc[0]
            raise DataError(f"rating {first.rating:g} outside the scale {lo:g}..{hi:g}", file=first.get("source"),
                            line=_int_or_none(first.get("line")), field="rating")
        report["bad_rows"] = int(out.sum())
        report["rejects"] += _rejects(rows, "bad row", f"rating outside the scale {lo:g}..{hi:g}", "rating")
        ds.interactions = inter = inter[~out].reset_index(drop=True)
    dup = inter.duplicated(subset=["user_id", "item_id", "timestamp"], keep="first")
    if dup.any():
        if duplicates == "error":
            first = inter[dup].iloc[0]
            raise DataError(
                f"duplicate interaction (user {first.user_id!r}, item {first.item_id!r}, "
                f"timestamp {first.timestamp}); the default policy keeps the first copy",
                file=first.get("source"), line=_int_or_none(first.get("line")), field="user_id,item_id,timestamp")
        report["duplicates"] = int(dup.sum())
        report["rejects"] += _rejects(inter[dup], "dropped", "duplicate (user, item, timestamp); first kept",
                                      "user_id,item_id,timestamp")
        ds.interactions = inter = inter[~dup].reset_index(drop=True)
    for col in ("user_id", "item_id"):
        if inter[col].isna().any() or (inter[col].astype(str).str.len() == 0).any():
            bad = inter[inter[col].isna() | (inter[col].astype(str).str.len() == 0)].iloc[0]
            raise DataError("empty id", file=bad.get("source"), line=_int_or_none(bad.get("line")), field=col)
    if "item_id" not in ds.items.columns:
        raise DataError("items table has no 'item_id' column", file=ds.meta.get("items_source", ds.name))
    return report


def _rejects(rows: pd.DataFrame, kind: str, reason: str, field_name: str) -> list[dict]:
    files = rows["source"].astype(str) if "source" in rows.columns else pd.Series([None] * len(rows))
    lines = rows["line"] if "line" in rows.columns else pd.Series([None] * len(rows))
    return [{"file": f, "line": _int_or_none(n), "field": field_name, "kind": kind, "reason": reason}
            for f, n in zip(files, lines)]


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
