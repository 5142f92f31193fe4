"""Any interactions table (CSV, TSV, Parquet; text files may be `.gz`) with a column mapping.

`columns` maps *our* names to the file's column names. Every key is optional; an unmapped key uses
the column of the same name when the file has one. Keys:

- interactions file: `user_id`, `item_id` (required), `rating` and/or `label` (one required; with a
  label but no rating, rating = label), `timestamp` (epoch numbers in `time_unit` s|ms|us|ns, or
  "auto" to detect it from the magnitude; or dates: year-first forms are read as they are, a
  year-last date such as 03/04/2021 needs `date_format`; without a timestamp, file order), inline
  item text `title`, `categories`, `description`, and `ctx_<name>` context columns (file columns
  already named `ctx_*` are taken as they are). Inline item text comes from the interactions, so
  `prepare` takes it from training rows only (first non-empty value per item, `derive_items`);
  an items file, when given, wins over it.
- items file (`items_path`): `item_key` (its id column; default: the interactions' item column
  name, else "item_id"), `item_title`, `item_categories`, `item_description` (defaults "title",
  "categories", "description"), `item_feat_<name>` -> items column `feat_<name>`. Without any
  `item_feat_*` key, every other column becomes `feat_<column>`.
- users file (`users_path`): `user_key`, `user_feat_<name>`, same rules.

A mapped column that the file lacks is a DataError naming the file and the column and listing the
columns it has. The separator is `sep`, else tab for .tsv/.tab, else sniffed from the header.
`line` is the file line (header = line 1) for text files and the 1-based row for Parquet.
`rating_scale` defaults to 1-5, or 0-1 when ratings come from a label column (a 0/1 click log); a
rating outside it is a bad row. `label_threshold` defaults to three quarters up the scale (4 on
1-5, 7.5 on 0-10), or 1 for labels. The domain is the caller's.
Feature and context columns are numeric when every value parses as a number, else strings; empty
cells and NA/NULL/NaN/None/\\N are missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from reasonrec.data.readers._io import (
    FILE_ORDER, CsvRows, bad_row_meta, base_name, clean_text, format_ext, interactions_frame, is_missing,
    items_frame, join_categories, rating, require_rows, to_id, users_frame,
)
from reasonrec.data.readers._fast import read_ratings_csv
from reasonrec.data.readers._time import TimeParser
from reasonrec.data.schema import RawDataset, RowSink, default_threshold, to_float
from reasonrec.errors import DataError

MAIN_KEYS = ("user_id", "item_id", "rating", "timestamp", "label", "title", "categories", "description")
ITEM_KEYS = ("item_key", "item_title", "item_categories", "item_description")
USER_KEYS = ("user_key",)
TEXT_EXTS = ("csv", "tsv", "tab", "txt", "dat")
PARQUET_EXTS = ("parquet", "pq")
AUX = "aux_"  # per-row inline item text, turned into item text by `prepare` from training rows
NA_STRINGS = {"NA", "N/A", "NULL", "null", "NaN", "nan", "None", "none", "\\N"}


def read_table(path: Path, *, columns: dict[str, str] | None = None, sep: str | None = None,
               domain: str = "product", label_threshold: float | None = None,
               rating_scale: tuple[float, float] | None = None, items_path: Path | None = None,
               users_path: Path | None = None, time_unit: str = "auto", date_format: str | None = None,
               skip_bad_rows: bool = False) -> RawDataset:
    path = Path(path)
    mapping = dict(columns or {})
    _check_keys(mapping)
    clock = TimeParser(time_unit, date_format)

    table = _Table(path, sep)
    col = _resolve(table, mapping, MAIN_KEYS, required=("user_id", "item_id"))
    if "rating" not in col and "label" not in col:
        raise DataError(f"needs a rating or a label column (map one with columns={{'rating': ...}}); "
                        f"the file has {table.columns}", file=str(path), line=1, field="rating")
    ctx = {k: v for k, v in mapping.items() if k.startswith("ctx_")}
    ctx.update({c: c for c in table.columns if c.startswith("ctx_") and c not in ctx.values()})
    _require_columns(table, ctx.values(), mapping)
    text_keys = [k for k in ("title", "categories", "description") if k in col]
    inline_cols = [AUX + k for k in text_keys]
    sink = RowSink(["user_id", "item_id", "rating", "timestamp", "line", "label", *ctx, *inline_cols], skip_bad_rows)
    table.read_columns = sorted(set(col.values()) | set(ctx.values()))
    from_label = "rating" not in col
    scale = tuple(map(float, rating_scale)) if rating_scale else ((0.0, 1.0) if from_label else (1.0, 5.0))
    file = str(path)

    def parse(make: Callable[[], dict], line: int) -> dict:
        rec = make()
        row = {
            "user_id": to_id(rec[col["user_id"]], file=file, line=line, field_name=col["user_id"]),
            "item_id": to_id(rec[col["item_id"]], file=file, line=line, field_name=col["item_id"]),
            "line": line,
        }
        if "label" in col:
            row["label"] = _label(rec[col["label"]], file=file, line=line, field_name=col["label"])
        row["rating"] = rating(row["label"] if from_label else _blank_to_none(rec[col["rating"]]), file=file,
                               line=line, field_name=col.get("rating", col.get("label")), bounds=scale)
        row["timestamp"] = line if "timestamp" not in col else clock(
            rec[col["timestamp"]], file=file, line=line, field_name=col["timestamp"])
        for key, name in ctx.items():
            row[key] = _value(rec[name])
        for key in text_keys:
            row[AUX + key] = "" if is_missing(rec[col[key]]) else _text(key, rec[col[key]])
        return row

    fast = None if date_format else _fast_path(table, col, bool(ctx or text_keys), scale, time_unit)
    if fast is not None:
        inter, unit = fast
    else:
        for line, make in table.rows(sink):
            sink.add(lambda make=make, line=line: parse(make, line))
        extra = list(ctx) + (["label"] if "label" in col else []) + inline_cols
        inter = interactions_frame(sink, path, extra_columns=extra)
        if "label" in inter:
            inter["label"] = inter["label"].astype("float64")
        inter = _numeric_where_possible(inter, list(ctx))
        unit = clock.resolved_unit
    require_rows(inter, path, [sink])

    item_sink, user_sink = RowSink([], skip_bad_rows), RowSink([], skip_bad_rows)
    item_rows, item_feats = {}, []
    if items_path:
        item_rows, item_feats = _read_side(Path(items_path), mapping, "item", col["item_id"], sep,
                                           set(inter["item_id"].unique()), item_sink)
    user_rows, user_feats = ({}, [])
    if users_path:
        user_rows, user_feats = _read_side(Path(users_path), mapping, "user", col["user_id"], sep,
                                           set(inter["user_id"].unique()), user_sink)

    return RawDataset(
        name=base_name(path),
        domain=domain,
        interactions=inter,
        items=_numeric_where_possible(items_frame(inter["item_id"], item_rows, item_feats), item_feats),
        users=_numeric_where_possible(users_frame(inter["user_id"], user_rows, user_feats), user_feats),
        label_threshold=float(label_threshold if label_threshold is not None else 1.0 if from_label
                              else default_threshold(scale)),
        rating_scale=scale,
        meta={
            "source": file,
            "items_source": str(items_path) if items_path else None,
            "users_source": str(users_path) if users_path else None,
            "time_source": f"{col['timestamp']} ({unit or 'dates'})" if "timestamp" in col
            else FILE_ORDER,
            "columns": col | ctx,
            "rating_from_label": from_label,
            **bad_row_meta(sink, item_sink, user_sink),
        },
        derive_items=_inline_text(text_keys) if text_keys else None,
    )


def _fast_path(table: _Table, col: dict[str, str], extras: bool, scale: tuple[float, float], time_unit: str):
    """A plain log (ids, rating, epoch time; nothing else mapped) takes the vectorised read of _fast.py,
    which returns None, leaving the line path to name the problem, whenever a line is doubtful."""
    if table.ext not in TEXT_EXTS or extras or "label" in col:
        return None
    keys = [k for k in ("user_id", "item_id", "rating", "timestamp") if k in col]
    fast = read_ratings_csv(table.path, {k: col[k] for k in keys}, scale, delimiter=table.delimiter, unit=time_unit)
    if fast is not None:
        table.close()
    return fast


def _inline_text(keys: list[str]):
    def derive(train: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
        """Fill what the items file left empty with each item's first non-empty training value."""
        train = train.sort_values("line", kind="stable")
        items = items.copy()
        for key in keys:
            said = train[train[AUX + key].astype(str) != ""]
            first = said.drop_duplicates("item_id").set_index("item_id")[AUX + key]
            current = items[key].fillna("").astype(str)
            empty = (current == "") | ((current == items["item_id"]) if key == "title" else False)
            found = items["item_id"].map(first)
            fill = empty & found.notna()
            items.loc[fill, key] = found[fill].astype(str)
        return items
    return derive


class _Table:
    """Rows of a CSV/TSV/Parquet file as (line, thunk returning {column: value})."""

    def __init__(self, path: Path, sep: str | None):
        self.path, self.file, self.ext = path, str(path), format_ext(path)
        self.read_columns: list[str] | None = None  # Parquet projection, set once the mapping is resolved
        if self.ext in PARQUET_EXTS:
            import pyarrow.parquet as pq

            try:
                self._parquet = pq.ParquetFile(path)
            except Exception as err:  # pyarrow raises several types for a non-Parquet file
                raise DataError(f"not a readable Parquet file ({err})", file=self.file) from None
            self.columns = list(self._parquet.schema_arrow.names)
        elif self.ext in TEXT_EXTS:
            delimiter = sep or ("\t" if self.ext in ("tsv", "tab") else None)
            self._csv = CsvRows(path, delimiter=delimiter)
            self.columns, self.delimiter = self._csv.header, self._csv.delimiter
        else:
            raise DataError(f"unsupported file type '.{self.ext}'; use one of "
                            f"{['.' + e for e in TEXT_EXTS + PARQUET_EXTS]} (text files may be .gz)", file=self.file)

    def close(self) -> None:
        if self.ext in TEXT_EXTS:
            self._csv.close()

    def rows(self, sink: RowSink) -> Iterator[tuple[int, Callable[[], dict]]]:
        """`sink` receives the lines the csv module cannot parse, when it is in skip mode."""
        if self.ext in PARQUET_EXTS:
            row_no = 0
            for batch in self._parquet.iter_batches(batch_size=65536, columns=self.read_columns):
                for rec in batch.to_pylist():
                    row_no += 1
                    yield row_no, (lambda rec=rec: rec)
            return
        header = self.columns
        self._csv.sink = sink
        for line, row in self._csv:
            def make(row=row, line=line) -> dict:
                self._csv.check_width(row, line)
                return dict(zip(header, row))
            yield line, make


def _check_keys(mapping: dict[str, str]) -> None:
    fixed = set(MAIN_KEYS + ITEM_KEYS + USER_KEYS)
    prefixes = ("ctx_", "item_feat_", "user_feat_")
    unknown = [k for k in mapping if k not in fixed and not k.startswith(prefixes)]
    if unknown:
        raise DataError(f"unknown column mapping key(s) {unknown}; use {sorted(fixed)} or a key starting "
                        f"with {list(prefixes)}")


def _resolve(table: _Table, mapping: dict[str, str], keys: tuple[str, ...], *, required: tuple[str, ...] = (),
             defaults: dict[str, str] | None = None) -> dict[str, str]:
    """our key -> file column, for the keys mapped or present under their default name."""
    out = {}
    for key in keys:
        if key in mapping:
            out[key] = mapping[key]
        else:
            name = (defaults or {}).get(key, key)
            if name in table.columns:
                out[key] = name
            elif key in required:
                raise DataError(f"missing column {name!r} (needed for {key}; map it with columns={{'{key}': "
                                f"...}}); the file has {table.columns}", file=table.file, line=1, field=name)
    _require_columns(table, out.values(), mapping)
    return out


def _require_columns(table: _Table, names, mapping: dict[str, str]) -> None:
    for name in names:
        if name not in table.columns:
            keys = [k for k, v in mapping.items() if v == name]
            raise DataError(f"missing column {name!r} (mapped from {', '.join(keys) or 'default'}); "
                            f"the file has {table.columns}", file=table.file, line=1, field=name)


def _read_side(path: Path, mapping: dict[str, str], kind: str, main_id_column: str, sep: str | None,
               wanted: set[str], sink: RowSink) -> tuple[dict[str, dict], list[str]]:
    """Items or users side file -> ({id: row}, feature columns)."""
    table = _Table(path, sep)
    key = f"{kind}_key"
    id_default = main_id_column if main_id_column in table.columns else f"{kind}_id"
    text_keys = ("title", "categories", "description") if kind == "item" else ()
    col = _resolve(table, mapping, (key, *(f"{kind}_{t}" for t in text_keys)), required=(key,),
                   defaults={key: id_default, **{f"{kind}_{t}": t for t in text_keys}})
    feats = {k.removeprefix(f"{kind}_"): v for k, v in mapping.items() if k.startswith(f"{kind}_feat_")}
    if not feats:
        feats = {f"feat_{c}": c for c in table.columns if c not in col.values()}
    _require_columns(table, feats.values(), mapping)
    table.read_columns = sorted(set(col.values()) | set(feats.values()))
    rows: dict[str, dict] = {}
    file = str(path)

    def parse(make: Callable[[], dict], line: int) -> None:
        rec = make()
        ident = to_id(rec[col[key]], file=file, line=line, field_name=col[key])
        if ident not in wanted or ident in rows:
            return
        row = {t: _text(t, rec[col[f"{kind}_{t}"]]) for t in text_keys if f"{kind}_{t}" in col}
        row.update({f: _value(rec[c]) for f, c in feats.items()})
        rows[ident] = row

    for line, make in table.rows(sink):
        sink.add(lambda make=make, line=line: parse(make, line))
    return rows, list(feats)


def _text(key: str, value) -> str:
    return join_categories(value) if key == "categories" else clean_text(value)


def _value(value):
    """A feature/context value, None for the usual missing-value spellings of CSV exports."""
    if is_missing(value) or (isinstance(value, str) and value.strip() in NA_STRINGS):
        return None
    return value


def _blank_to_none(value):
    return None if isinstance(value, str) and not value.strip() else value


def _label(value, *, file: str, line: int, field_name: str) -> float:
    out = to_float(_blank_to_none(value), file=file, line=line, field_name=field_name)
    if out not in (0.0, 1.0):
        raise DataError(f"a label must be 0 or 1, got {value!r}", file=file, line=line, field=field_name)
    return out


def _numeric_where_possible(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    for c in columns:
        if c in df and not pd.api.types.is_numeric_dtype(df[c]):
            try:
                df[c] = pd.to_numeric(df[c])
            except (ValueError, TypeError):
                df[c] = df[c].map(lambda v: None if is_missing(v) else str(v)).astype("str")
    return df
