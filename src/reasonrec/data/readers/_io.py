"""Helpers every reader shares: opening (gzip, encodings), line/JSON/CSV iteration with line numbers,
field parsing that raises `DataError` naming file/line/field, and assembling the `RawDataset` tables.

Readers stream rows through a `RowSink`; side tables (items, users) are read *after* the
interactions so that only the ids that occur are kept in memory (Amazon meta files are GBs).
"""

from __future__ import annotations

import ast
import codecs
import csv
import gzip
import html
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from reasonrec.data.readers._time import TimeParser
from reasonrec.data.schema import FILE_ORDER, RowSink, to_float  # noqa: F401 (FILE_ORDER re-exported)
from reasonrec.errors import DataError

MAX_BAD_EXAMPLES = 5
CATEGORY_SEP = ", "


# --- opening --------------------------------------------------------------------------------------

def _legacy_decode(err: UnicodeError) -> tuple[str, int]:
    """Decode bytes that are not UTF-8 as Windows-1252 (Latin-1 for its 5 undefined bytes).

    Real dumps mix encodings line by line (BookCrossing is Latin-1 with some UTF-8; scraped JSON has
    the odd cp1252 byte), so a per-sequence fallback beats guessing one codec for the whole file.
    """
    if not isinstance(err, UnicodeDecodeError):
        raise err
    chunk = err.object[err.start:err.end]
    try:
        text = chunk.decode("cp1252")
    except UnicodeDecodeError:
        text = chunk.decode("latin-1")
    return text, err.end


LEGACY_ERRORS = "reasonrec-cp1252-fallback"
codecs.register_error(LEGACY_ERRORS, _legacy_decode)


def is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def open_text(path: Path, *, newline: str | None = "\n") -> IO[str]:
    """Open text, gunzipping `.gz`; UTF-8 (BOM stripped) with a cp1252 fallback per bad sequence.

    For a whole-file read that need not count fallbacks; line readers use `decoded_lines`.
    """
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors=LEGACY_ERRORS, newline=newline)


def decode_line(raw: bytes) -> tuple[str, bool]:
    """(text, whether the legacy fallback was needed). The one decoding policy of every reader."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors=LEGACY_ERRORS), True


def decoded_lines(path: Path, sink: RowSink | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text with its line ending) splitting on LF only, so numbers match
    `wc -l`; each line that is not valid UTF-8 is decoded per bad sequence and noted in `sink`."""
    file = str(path)
    line_no = 0
    try:
        with open_binary(path) as fh:
            for line_no, raw in enumerate(fh, start=1):
                if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                text, fallback = decode_line(raw)
                if fallback and sink is not None:
                    sink.note_decoded(file, line_no)
                yield line_no, text
    except (EOFError, OSError, gzip.BadGzipFile) as err:
        raise DataError(f"cannot read the file ({err})", file=file, line=line_no + 1) from None


def base_name(path: Path) -> str:
    """File name without `.gz` and without its format extension: `meta_Books.json.gz` -> `meta_Books`."""
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return name.rsplit(".", 1)[0] if "." in name else name


def format_ext(path: Path) -> str:
    """Format extension ignoring `.gz`: `x.jsonl.gz` -> `jsonl`."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.rsplit(".", 1)[-1] if "." in name else ""


def iter_lines(path: Path, *, sink: RowSink | None = None) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line); a truncated/corrupt gzip becomes a DataError with the line."""
    yield from decoded_lines(path, sink)


# --- JSON lines -----------------------------------------------------------------------------------

def parse_json_record(text: str, *, file: str, line: int, literal_fallback: bool = False) -> dict:
    """One JSON object; with `literal_fallback`, also a Python dict literal (Amazon 2014 files).

    `ast.literal_eval` only builds literals, so a hostile line cannot run code (never `eval`).
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        record = None
        if literal_fallback:
            try:
                record = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                record = None
        if record is None:
            snippet = text.strip()[:60]
            raise DataError(f"malformed JSON ({err.msg} at column {err.colno}): {snippet!r}",
                            file=file, line=line) from None
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", file=file, line=line)
    return record


def iter_json_lines(path: Path, *, sink: RowSink | None = None,
                    literal_fallback: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each non-blank line.

    A malformed line raises DataError, unless `sink` is in skip mode: then it is counted in the
    sink and skipped, so one broken line in a 10 GB dump does not cost the whole read.
    """
    file = str(path)
    for line_no, text in iter_lines(path, sink=sink):
        if not text.strip():
            continue
        try:
            record = parse_json_record(text, file=file, line=line_no, literal_fallback=literal_fallback)
        except DataError as err:
            if sink is None or not sink.skip_bad_rows:
                raise
            sink.reject(err)
            continue
        yield line_no, record


def first_json_record(path: Path, *, literal_fallback: bool = False) -> tuple[int, dict] | None:
    """The first parseable record, to autodetect a format (None for an empty file)."""
    for line_no, text in iter_lines(path):
        if text.strip():
            return line_no, parse_json_record(text, file=str(path), line=line_no,
                                              literal_fallback=literal_fallback)
    return None


# --- CSV ------------------------------------------------------------------------------------------

def sniff_delimiter(header: str, candidates: str = ",;\t|") -> str:
    """The candidate that occurs most often in the header line (headers rarely contain separators)."""
    counts = {c: header.count(c) for c in candidates}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


class CsvRows:
    """Iterate a delimited file: `.header` is the first row, iteration yields (line number, fields).

    The line number is the csv module's physical line count, so the header is line 1 and a record
    with an embedded newline reports its last line. csv errors (bad quoting, with `strict`) become
    DataErrors naming the line; in skip mode with a `sink` they are counted and the read goes on.
    `strict_quotes=False` accepts text after a closing quote (old dumps), leaving `check_width` to
    catch lines that really are broken.
    """

    def __init__(self, path: Path, *, delimiter: str | None = None, escapechar: str | None = None,
                 strict_quotes: bool = True, sink: RowSink | None = None):
        self.path, self.file, self.sink = path, str(path), sink
        self.pending_decoded: list[int] = []  # fallback lines met before a sink was attached
        self._lines = decoded_lines(path, _SinkProxy(self))
        first = next(self._lines, (1, ""))[1]
        if not first.strip():
            self._lines.close()
            raise DataError("empty file: expected a header line", file=self.file, line=1)
        self.delimiter = delimiter or sniff_delimiter(first)
        self._reader = csv.reader(_chain([first], (text for _, text in self._lines)), delimiter=self.delimiter,
                                  quotechar='"', escapechar=escapechar, doublequote=True, strict=strict_quotes)
        try:
            self.header = [h.strip() for h in next(self._reader)]
        except csv.Error as err:
            self._lines.close()
            raise DataError(f"malformed CSV header ({err})", file=self.file, line=1) from None

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        if self.sink is not None:
            for line in self.pending_decoded:
                self.sink.note_decoded(self.file, line)
            self.pending_decoded.clear()
        try:
            while True:
                try:
                    row = next(self._reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    bad = DataError(f"malformed CSV line ({err})", file=self.file, line=self._reader.line_num)
                    if self.sink is None or not self.sink.skip_bad_rows:
                        raise bad from None
                    self.sink.reject(bad)
                    continue
                if row and any(cell.strip() for cell in row):
                    yield self._reader.line_num, row
        finally:
            self._lines.close()

    def close(self) -> None:
        self._lines.close()

    def column_index(self, name: str, *, required: bool = True) -> int | None:
        if name in self.header:
            return self.header.index(name)
        if required:
            raise DataError(f"missing column {name!r}; the file has {self.header}", file=self.file, line=1,
                            field=name)
        return None

    def check_width(self, row: list[str], line: int) -> None:
        if len(row) != len(self.header):
            raise DataError(f"expected {len(self.header)} fields ({self.delimiter!r}-separated), got "
                            f"{len(row)}: {self.delimiter.join(row)[:80]!r}", file=self.file, line=line)


class _SinkProxy:
    """Lets CsvRows note decoding fallbacks in whichever sink it is given later (readers set
    `.sink` after the header is read)."""

    def __init__(self, rows: CsvRows):
        self._rows = rows

    def note_decoded(self, file: str, line: int) -> None:
        if self._rows.sink is not None:
            self._rows.sink.note_decoded(file, line)
        else:
            self._rows.pending_decoded.append(line)


def _chain(first: Iterable[str], rest: Iterable[str]) -> Iterator[str]:
    yield from first
    yield from rest


# --- fields ---------------------------------------------------------------------------------------

def is_missing(value: Any) -> bool:
    """None, NaN, or blank text. Called several times per row, hence the exact-type fast paths."""
    if value is None:
        return True
    kind = type(value)
    if kind is str:
        return not value or value.isspace()
    if kind is int:
        return False
    if isinstance(value, (float, np.floating)):
        return value != value
    return isinstance(value, str) and (not value or value.isspace())


def require(record: dict, name: str, *, file: str, line: int) -> Any:
    """The value of a field that must be present and non-empty."""
    value = record.get(name)
    if is_missing(value):
        what = "missing field" if name not in record else "empty field"
        raise DataError(f"{what}; the record has {sorted(record)[:12]}", file=file, line=line, field=name)
    return value


def to_id(value: Any, *, file: str, line: int, field_name: str) -> str:
    """Ids are strings; a float id that is an integer (Parquet with NaNs) loses its `.0`."""
    if type(value) is str:
        text = value.strip()
        if text:
            return text
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value).strip() if not is_missing(value) else ""
    if not text:
        raise DataError("empty id", file=file, line=line, field=field_name)
    return text


def id_field(record: dict, name: str, *, file: str, line: int) -> str:
    """A required id field of a JSON record, as a string."""
    return to_id(require(record, name, file=file, line=line), file=file, line=line, field_name=name)


def parse_time(value: Any, *, file: str, line: int, field_name: str, unit: str = "s") -> int:
    """Epoch seconds from one value; readers of a whole column keep one `TimeParser` instead, so
    that an auto-detected unit holds for every row."""
    return TimeParser(unit)(value, file=file, line=line, field_name=field_name)


def rating(value: Any, *, file: str, line: int, field_name: str,
           bounds: tuple[float, float] | None = None) -> float:
    out = to_float(value, file=file, line=line, field_name=field_name)
    if bounds is not None and not bounds[0] <= out <= bounds[1]:
        raise DataError(f"rating {out:g} outside {bounds[0]:g}..{bounds[1]:g}", file=file, line=line,
                        field=field_name)
    return out


def optional_float(value: Any) -> float:
    """Lenient numeric feature: NaN for missing/unparsable (`'$12.99'` -> 12.99)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lstrip("$").replace(",", "")
        try:
            return float(text)
        except ValueError:
            return math.nan
    return math.nan


def clean_text(value: Any) -> str:
    """One line of display text from a str, a list of str (Amazon descriptions) or None."""
    if is_missing(value):
        return ""
    if isinstance(value, (list, tuple)):
        value = " ".join(clean_text(v) for v in value)
    text = str(value)
    if "<" in text:  # Amazon descriptions carry <br>, <b>, <div>...; tags become word breaks
        text = _TAG.sub(" ", text)
    if "&" in text:  # dumps are full of &amp; / &#39;
        text = html.unescape(text)
    return " ".join(text.split())


# A tag starts with a letter, `/` or `!`, so "a < b" and "<3" in prose survive.
_TAG = re.compile(r"<[A-Za-z/!][^<>]*>")


def join_categories(values: Any) -> str:
    """Flatten (possibly nested) category lists or a comma string into one `, `-joined string.

    Order is kept and duplicates dropped; names are not escaped, so a category that itself contains
    a comma ("Clothing, Shoes & Jewelry") splits into two parts when re-split.
    """
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
        elif isinstance(v, str):
            for part in v.split(","):
                part = clean_text(part)
                if part and part not in out:
                    out.append(part)

    walk(values)
    return CATEGORY_SEP.join(out)


# --- assembling the dataset -----------------------------------------------------------------------

def interactions_frame(sink: RowSink, source: Path, *, extra_columns: list[str] = ()) -> pd.DataFrame:
    """The interactions table with the schema's dtypes.

    `source` is categorical: one path repeated for millions of rows would otherwise be stored per row.
    """
    df = sink.frame()
    n = len(df)
    out = pd.DataFrame({
        "user_id": df["user_id"].astype(str),
        "item_id": df["item_id"].astype(str),
        "rating": df["rating"].astype("float64"),
        "timestamp": df["timestamp"].astype("int64"),
    })
    for col in extra_columns:
        out[col] = df[col]
    out["source"] = pd.Categorical.from_codes(np.zeros(n, dtype="int8"), categories=[str(source)])
    out["line"] = df["line"].astype("int64")
    return out


def require_rows(df: pd.DataFrame, source: Path, sinks: Iterable[RowSink] = (), dropped: dict | None = None) -> None:
    if len(df):
        return
    why = []
    bad = sum(len(s.bad) for s in sinks)
    if bad:
        why.append(f"{bad} bad row(s) skipped")
    for what, count in (dropped or {}).items():
        if count:
            why.append(f"{count} dropped as {what}")
    detail = f" ({'; '.join(why)})" if why else " (the file has no data rows)"
    raise DataError(f"no interactions left after reading{detail}", file=str(source))


def items_frame(item_ids: Iterable[str], rows: dict[str, dict], feature_columns: list[str] = ()) -> pd.DataFrame:
    """One row per item that occurs in the interactions, titles falling back to the id.

    `rows` maps id -> {"title", "categories", "description", "feat_*"}; ids absent from it get the
    fallback text and missing features.
    """
    ids = _unique_sorted(item_ids)
    cols: dict[str, list] = {"item_id": ids, "title": [], "categories": [], "description": []}
    for col in feature_columns:
        cols[col] = []
    for item in ids:
        row = rows.get(item, {})
        cols["title"].append(clean_text(row.get("title")) or item)
        cols["categories"].append(row.get("categories") or "")
        cols["description"].append(row.get("description") or "")
        for col in feature_columns:
            cols[col].append(row.get(col))
    df = pd.DataFrame(cols)
    for col in ["item_id", *ITEM_TEXT]:
        df[col] = df[col].astype(str)
    return _typed_features(df, feature_columns)


ITEM_TEXT = ("title", "categories", "description")


def users_frame(user_ids: Iterable[str], rows: dict[str, dict] | None = None,
                feature_columns: list[str] = ()) -> pd.DataFrame:
    ids = _unique_sorted(user_ids)
    rows = rows or {}
    cols: dict[str, list] = {"user_id": ids}
    for col in feature_columns:
        cols[col] = [rows.get(u, {}).get(col) for u in ids]
    df = pd.DataFrame(cols)
    df["user_id"] = df["user_id"].astype(str)
    return _typed_features(df, feature_columns)


def _unique_sorted(ids: Iterable[str]) -> list[str]:
    # Iterating an Arrow-backed Series element by element is slow; deduplicate in Arrow first.
    return sorted(pd.Series(ids, dtype=str).unique().tolist())


def _typed_features(df: pd.DataFrame, feature_columns: Iterable[str]) -> pd.DataFrame:
    """Numeric features become float64 (NaN = missing); anything else a string column with NA."""
    for col in feature_columns:
        values = df[col]
        non_null = values.dropna()
        if len(non_null) and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                                 for v in non_null):
            df[col] = values.astype("float64")
        else:
            df[col] = values.map(lambda v: None if is_missing(v) else str(v)).astype("str")
    return df


def bad_row_meta(*sinks: RowSink) -> dict:
    """The reader's account for the card: bad rows, policy drops, every rejected line, decoding fallbacks."""
    messages = [m for s in sinks for m in s.bad]
    dropped: dict[str, int] = {}
    decoded: dict[str, int] = {}
    for s in sinks:
        for reason, count in s.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
        for file, lines in s.decoded.items():
            decoded[file] = decoded.get(file, 0) + len(lines)
    return {"bad_rows": len(messages), "bad_examples": messages[:MAX_BAD_EXAMPLES], "dropped": dropped,
            "rejects": [r for s in sinks for r in s.rejects], "decoded_with_fallback": decoded}
