"""prepare's heavy steps on whole columns: the per-user time order and the last-k history windows.

Engine, chosen by measurement (5M synthetic ML rows, 2 shared cores; benchmarks/prepare/engines.py,
docs/data-scale.md): sorting by (user, time, line) and numbering each user's rows took 2.0 s in
Polars and 4.0 s in DuckDB. With the windows, Polars' concat_list of shifted columns took 11.6-15.5 s,
DuckDB's one window query (`list() OVER (ROWS 5 PRECEDING)`) 5.9-9.6 s, and a Polars sort with the
Arrow list array built from offsets and one `take` 2.7-5.9 s, without a Python object per row.
So Polars sorts and Arrow builds the windows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

BLOCK = 1 << 20  # rows per history block: at most 5 Mi values, 20 MiB of offsets


def user_timeline(user_id: pd.Series, timestamp: pd.Series, line: pd.Series) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(order, pos, count): the row order by (user, time, line), each row's place in its user's
    timeline, and that user's row count, all in the new order.

    Ties on all three keep input order (the row number is the last key), as a stable sort would;
    missing values go last, as in pandas.
    """
    frame = pl.DataFrame({"user": _text_rank(user_id), "time": pl.from_pandas(timestamp),
                          "line": pl.from_pandas(line)})
    frame = frame.with_row_index("row").sort(["user", "time", "line", "row"], nulls_last=True)
    group = pl.col("user").rle_id()  # sorted, so each user is one run
    out = frame.select("row", pos=pl.int_range(pl.len()).over(group), count=pl.len().over(group))
    return (out["row"].to_numpy().astype(np.int64, copy=False), out["pos"].to_numpy().astype(np.int64, copy=False),
            out["count"].to_numpy().astype(np.int64, copy=False))


def _text_rank(values: pd.Series) -> np.ndarray:
    """Each value's rank among the distinct values in UTF-8 byte order (that is, Python's str
    order): sorting these integers sorts the text, at a fraction of the memory of sorting strings."""
    text = pa.array(values, type=pa.large_string())
    encoded = pc.dictionary_encode(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text)
    rank = np.empty(len(encoded.dictionary), dtype=np.int32)
    rank[pc.sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(rank), dtype=np.int32)
    return rank[encoded.indices.to_numpy(zero_copy_only=False)]


def last_k_windows(items: pa.Array | pa.ChunkedArray, pos: np.ndarray, k: int) -> pa.ChunkedArray:
    """Row r's list is items[r - min(pos[r], k) : r], oldest first: the up-to-k earlier items of the
    same user, given rows in timeline order and `pos` from `user_timeline`.

    Built in blocks of rows, so the index arrays are never longer than a block's values: at 20M
    rows whole-column ones were 0.7 GiB on top of the result."""
    if isinstance(items, pa.ChunkedArray):
        items = items.combine_chunks()
    chunks = []
    for lo in range(0, len(pos), BLOCK):
        lengths = np.minimum(pos[lo:lo + BLOCK], k)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # value j of row r is items[r - lengths[r] + j], j counted from the row's offset
        take = np.repeat(np.arange(lo, lo + len(lengths), dtype=np.int64) - lengths - offsets[:-1], lengths)
        take += np.arange(offsets[-1], dtype=np.int64)
        chunks.append(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), _narrow(items.take(take))))
    if len({c.type for c in chunks}) > 1:  # some block held over 2 GiB of text
        chunks = [c.cast(pa.list_(pa.large_string())) for c in chunks]
    return pa.chunked_array(chunks, type=chunks[0].type if chunks else pa.list_(pa.string()))


def _narrow(values: pa.Array) -> pa.Array:
    """Plain `string` values (what pyarrow infers for lists of str) unless they hold over 2 GiB of text."""
    if values.type == pa.string():
        return values
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        return values


def trim_to_last(pos: np.ndarray, count: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep, pos, count) after keeping each user's last n rows; the kept rows stay in order, so the
    new place is just shifted by the number of rows dropped before them."""
    keep = pos >= count - n
    dropped = np.maximum(count - n, 0)
    return keep, (pos - dropped)[keep], np.minimum(count, n)[keep]


def history_column(windows: pa.ChunkedArray) -> pd.Series:
    """The windows as a pandas column without converting them: each element still reads as a list of str."""
    return pd.Series(pd.arrays.ArrowExtensionArray(windows), name="history")
