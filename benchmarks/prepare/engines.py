"""Polars vs DuckDB on prepare's heavy steps (time sort, per-user positions, last-5 windows).

Run (needs `pip install duckdb`, which reasonrec itself does not use):
PYTHONPATH=src python benchmarks/prepare/engines.py DIR  (DIR holds a ratings.csv, e.g. from
`reasonrec bench prepare --rows 5000000`). Each variant gets the same Arrow table and returns
(row order, pos, count, history) as Arrow; the timings in docs/data-scale.md come from this script.
"""

from __future__ import annotations

import resource
import sys
import time

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from reasonrec.data.timeline import last_k_windows, user_timeline

K = 5


def with_polars(table: pa.Table) -> pa.Table:
    df = pl.from_arrow(table).with_row_index("row")
    df = df.sort(["user_id", "timestamp", "line", "row"])
    grp = pl.col("user_id").rle_id()
    pos = pl.int_range(pl.len()).over(grp)
    shifted = [pl.when(pl.col("pos") >= j).then(pl.col("item_id").shift(j)) for j in range(K, 0, -1)]
    out = (df.with_columns(pos=pos, count=pl.len().over(grp))
             .with_columns(history=pl.concat_list(shifted).list.drop_nulls())
             .select("row", "pos", "count", "history"))
    return out.to_arrow()


def with_duckdb(table: pa.Table) -> pa.Table:
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    con.register("inter", table.append_column("row", pa.array(range(len(table)), pa.int64())))
    w = "PARTITION BY user_id ORDER BY timestamp, line, row"
    return con.sql(f"""
        SELECT row, row_number() OVER ({w}) - 1 AS pos, count(*) OVER (PARTITION BY user_id) AS count,
               coalesce(list(item_id) OVER ({w} ROWS BETWEEN {K} PRECEDING AND 1 PRECEDING), []) AS history
        FROM inter ORDER BY user_id, timestamp, line, row""").to_arrow_table()  # the empty window is NULL in SQL


def with_polars_and_arrow(table: pa.Table) -> pa.Table:
    """What prepare uses: Polars sorts integer ranks of the user ids, Arrow builds the windows."""
    frame = table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow", np.nan)}.get)
    order, pos, count = user_timeline(frame["user_id"], frame["timestamp"], frame["line"])
    history = last_k_windows(table["item_id"].take(pa.array(order)), pos, K)
    return pa.table({"row": order, "pos": pos, "count": count, "history": history})


def main(path: str) -> None:
    raw = pacsv.read_csv(f"{path}/ratings.csv", convert_options=pacsv.ConvertOptions(
        column_types={"userId": pa.string(), "movieId": pa.string()}))
    table = pa.table({"user_id": raw["userId"], "item_id": raw["movieId"], "timestamp": raw["timestamp"],
                      "line": pa.array(range(2, len(raw) + 2), pa.int64())})
    del raw
    results = {}
    for name, fn in (("polars+arrow", with_polars_and_arrow), ("polars", with_polars), ("duckdb", with_duckdb)):
        started = time.perf_counter()
        out = fn(table)
        results[name] = out
        print(f"{name}: {time.perf_counter() - started:.2f} s for {len(out):,} rows; "
              f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)
    first = results["polars+arrow"].slice(0, 200_000)
    for name in ("polars", "duckdb"):
        other = results[name].slice(0, 200_000)
        same = all(first[c].to_pylist() == other[c].to_pylist() for c in ("row", "pos", "count", "history"))
        print(f"{name} agrees with polars+arrow on the first 200k rows:", same)


if __name__ == "__main__":
    main(sys.argv[1])
