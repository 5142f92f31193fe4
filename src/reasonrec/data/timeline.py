"""prepare's heavy steps on whole columns: the per-user time order and the last-k history windows.

Engine, chosen by measurement (5M synthetic ML rows, 2 shared cores; benchmarks/prepare/engines.py,
docs/scale.md): sorting by (user, time, line) and numbering each user's rows takes 2.0 s in Polars
and 4.0 s in DuckDB (a window query). For the history windows, Polars' concat_list of shifted
columns takes 6.9 s and DuckDB's `list() OVER (ROWS 5 PRECEDING)` 9.6 s with the sort, while
building the Arrow list array directly from offsets and one `take` takes 2.5 s and never makes a
Python object per row. So Polars sorts and Arrow builds the windows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa


def user_timeline(user_id: pd.Series, timestamp: pd.Series, line: pd.Series) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(order, pos, count): the row order by (user, time, line), each row's place in its user's
    timeline, and that user's row count, all in the new order.

    Ties on all three keep input order (the row number is the last key), as a stable sort would;
    missing values go last, as in pandas.
    """
    frame = pl.DataFrame({"user": pa.array(user_id, type=pa.large_string()),
                          "time": pl.from_pandas(timestamp), "line": pl.from_pandas(line)})
    frame = frame.with_row_index("row").sort(["user", "time", "line", "row"], nulls_last=True)
    group = pl.col("user").rle_id()  # sorted, so each user is one run
    out = frame.select("row", pos=pl.int_range(pl.len()).over(group), count=pl.len().over(group))
    return (out["row"].to_numpy().astype(np.int64, copy=False), out["pos"].to_numpy().astype(np.int64, copy=False),
            out["count"].to_numpy().astype(np.int64, copy=False))


def last_k_windows(items: pa.Array | pa.ChunkedArray, pos: np.ndarray, k: int) -> pa.Array:
    """Row r's list is items[r - min(pos[r], k) : r], oldest first: the up-to-k earlier items of the
    same user, given rows in timeline order and `pos` from `user_timeline`."""
    if isinstance(items, pa.ChunkedArray):
        items = items.combine_chunks()
    lengths = np.minimum(pos, k)
    offsets = np.zeros(len(pos) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # value j of row r is items[r - lengths[r] + j]; j counts from each row's offset
    take = np.repeat(np.arange(len(pos), dtype=np.int64) - lengths - offsets[:-1], lengths)
    take += np.arange(offsets[-1], dtype=np.int64)
    values = _narrow(items.take(pa.array(take)))
    if offsets[-1] < 2**31:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values)


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


def history_column(windows: pa.Array, index: pd.Index | None = None) -> pd.Series:
    return pd.Series(pd.arrays.ArrowExtensionArray(windows), index=index, name="history")
