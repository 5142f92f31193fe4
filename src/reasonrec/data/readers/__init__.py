"""Readers: one module per source format, each returning a validated-shape RawDataset.

`read(name, path)` dispatches by dataset name. Modules are imported lazily so that reading
MovieLens never pays for the Amazon parser.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from reasonrec.data.schema import RawDataset
from reasonrec.errors import DataError

# dataset name -> (module, function). `path` is the file or directory the user gives.
READERS: dict[str, tuple[str, str]] = {
    "ml-100k": ("movielens", "read_embedded_ml100k"),   # embedded default, no path needed
    "movielens": ("movielens", "read_grouplens"),       # ml-100k / ml-1m / ml-20m / ml-latest layouts
    "amazon": ("amazon", "read_amazon"),                # 2018 reviews_*.json(.gz)+meta, 2023 JSONL
    "yelp": ("yelp", "read_yelp"),                      # academic dataset review + business JSON
    "tripadvisor": ("tripadvisor", "read_tripadvisor"), # PETER/Li et al. reviews.pickle, or JSON lines
    "bookcrossing": ("bookcrossing", "read_bookcrossing"),
    "csv": ("generic", "read_table"),                   # any CSV/Parquet with a column mapping
}


def read(name: str, path: str | Path | None = None, **options) -> RawDataset:
    if name not in READERS:
        raise DataError(f"unknown dataset '{name}'; choose one of {sorted(READERS)}")
    module, func = READERS[name]
    reader = getattr(importlib.import_module(f"reasonrec.data.readers.{module}"), func)
    if name == "ml-100k" and path is None:
        return reader(**options)
    if path is None:
        raise DataError(f"dataset '{name}' needs --path pointing at its files")
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or directory", file=str(path))
    return reader(path, **options)
