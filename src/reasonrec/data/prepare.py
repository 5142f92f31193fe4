"""RawDataset -> the samples contract: per-user temporal split, last-5 histories, labels, context.

Split (LR-Recsys section 5.1): for each user, interactions ordered by time; the first 80% are train,
the last 20% test; the last 10% of each user's train part is the validation split (early stopping
only ever looks at it). Histories are the up-to-5 items the user interacted with *before* each
interaction in the full timeline, oldest first, so a subsample (`last_n_per_user`) keeps real
histories instead of truncated ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from reasonrec.data.schema import FILE_ORDER, HISTORY_LEN, RawDataset, validate
from reasonrec.data.timeline import history_column, last_k_windows, trim_to_last, user_timeline
from reasonrec.errors import DataError

REJECTS_FILE = "rejects.csv"
REJECT_COLUMNS = ["file", "line", "field", "kind", "reason"]


@dataclass
class PrepareConfig:
    test_frac: float = 0.2
    valid_frac: float = 0.1          # of each user's train part
    history_len: int = HISTORY_LEN
    label_threshold: float | None = None  # None: the dataset's own (rating >= 4 for 1-5 scales)
    max_users: int | None = None     # deterministic subsample: users ranked by a seeded hash
    last_n_per_user: int | None = None
    seed: int = 0
    skip_bad_rows: bool = False
    context: bool = True             # hour-of-day and day-of-week wherever the source has real times
    duplicates: str = "first"        # repeated (user, item, timestamp): "first" keeps one and counts, "error"


@dataclass
class Prepared:
    samples: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    card: dict = field(default_factory=dict)
    rejects: pd.DataFrame | None = None  # every input line skipped or dropped, and why

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        # write-then-rename so an interrupted prepare never leaves a half-written table behind
        for name, frame in (("samples", self.samples), ("items", self.items), ("users", self.users)):
            tmp = out / f".{name}.parquet.tmp"
            pq.write_table(_as_table(frame), tmp)
            tmp.replace(out / f"{name}.parquet")
        rejects = self.rejects if self.rejects is not None else pd.DataFrame(columns=REJECT_COLUMNS)
        rejects.to_csv(out / REJECTS_FILE, index=False)
        (out / "card.json").write_text(json.dumps(self.card, indent=2, default=str))
        (out / "card.md").write_text(render_card(self.card))
        return out


def _as_table(frame: pd.DataFrame) -> pa.Table:
    """The frame as Arrow, with an Arrow-backed list column described to pandas as the plain
    object column of lists it stands for: pandas cannot rebuild `list<...>[pyarrow]` from the
    file's metadata, and readers of the file should not see which way the column was built."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = json.loads(table.schema.metadata[b"pandas"])
    for col in meta["columns"]:
        if col["name"] in frame.columns and isinstance(frame[col["name"]].dtype, pd.ArrowDtype) \
                and pa.types.is_list(frame[col["name"]].dtype.pyarrow_dtype):
            col["numpy_type"] = "object"
    return table.replace_schema_metadata({**table.schema.metadata, b"pandas": json.dumps(meta).encode()})


def load_prepared(path: str | Path) -> Prepared:
    path = Path(path)
    if not (path / "samples.parquet").is_file():
        raise DataError("no samples.parquet here; run `reasonrec data prepare` first", file=str(path))
    card = json.loads((path / "card.json").read_text()) if (path / "card.json").is_file() else {}
    samples = pd.read_parquet(path / "samples.parquet")
    samples["history"] = samples["history"].map(list)
    return Prepared(samples, pd.read_parquet(path / "items.parquet"), pd.read_parquet(path / "users.parquet"), card)


def prepare(ds: RawDataset, config: PrepareConfig | None = None, *, release_raw: bool = False) -> Prepared:
    """`release_raw`: the caller is done with `ds.interactions`, so it is emptied as soon as the
    time-ordered copy exists; on 20M rows that copy and the raw table would otherwise coexist."""
    cfg = config or PrepareConfig()
    started = time.perf_counter()
    report = validate(ds, skip_bad_rows=cfg.skip_bad_rows, duplicates=cfg.duplicates)
    inter = ds.interactions.copy(deep=False)  # copy-on-write: the reader's columns are shared, not duplicated
    inter["user_id"] = inter["user_id"].astype(str)
    inter["item_id"] = inter["item_id"].astype(str)
    if "line" not in inter.columns:
        inter["line"] = np.arange(1, len(inter) + 1)
    n_raw_users = inter["user_id"].nunique()

    if cfg.max_users is not None:
        inter = inter[inter["user_id"].isin(set(user_subset(inter["user_id"].unique(), cfg.max_users, cfg.seed)))]

    # Order within a user by time; ties (same second) keep file order so the result is deterministic.
    order, pos, count = user_timeline(inter["user_id"], inter["timestamp"], inter["line"])
    inter = inter.take(order).reset_index(drop=True)
    del order
    if release_raw:
        ds.interactions = ds.interactions.iloc[:0].copy()  # a bare iloc slice would keep the columns alive
    windows = last_k_windows(pa.array(inter["item_id"]), pos, cfg.history_len)

    if cfg.last_n_per_user is not None:
        keep, pos, count = trim_to_last(pos, count, cfg.last_n_per_user)
        inter = inter[keep].reset_index(drop=True)
        windows = windows.filter(pa.array(keep))
    inter["history"] = history_column(windows)
    if len(inter) == 0:
        raise DataError("no interactions left after subsampling", file=ds.meta.get("source", ds.name))

    inter["split"] = _split(pos, count, cfg.test_frac, cfg.valid_frac)
    threshold = ds.label_threshold if cfg.label_threshold is None else cfg.label_threshold
    inter["label"] = (inter["rating"] >= threshold).astype("int8")
    if cfg.context and _real_time(ds):
        inter["ctx_hour"], inter["ctx_weekday"] = _hour_weekday(inter["timestamp"].to_numpy())

    ctx = [c for c in inter.columns if c.startswith("ctx_")]
    samples = inter[["user_id", "item_id", "rating", "label", "timestamp", "split", "history", *ctx]]
    samples.insert(0, "sample_id", np.arange(len(samples), dtype="int64"))

    item_table = ds.items
    if ds.derive_items is not None:
        item_table = ds.derive_items(inter[inter["split"] == "train"], item_table)
    items = _side_table(item_table, "item_id", _referenced_items(samples))
    users = _side_table(ds.users, "user_id", set(samples["user_id"].unique()))
    rejects = pd.DataFrame(list(ds.meta.get("rejects", [])) + report["rejects"], columns=REJECT_COLUMNS)
    card = make_card(ds, samples, items, users, cfg, threshold, report, n_raw_users)
    card["prepare_seconds"] = round(time.perf_counter() - started, 2)
    return Prepared(samples, items, users, card, rejects)


def _real_time(ds: RawDataset) -> bool:
    return ds.meta.get("time_source", "timestamp") != FILE_ORDER


def user_subset(user_ids, n: int | None, seed: int = 0) -> list[str]:
    """The first n users of a seeded hash ranking (sorted ids; all users if n is None).

    Deterministic, independent of input order, and nested: the 50-user subset lies inside the
    250-user one, so `--max-users`, the bench sub-slices and the ExpCTR sub-slice share their
    users and therefore their cached explanations."""
    ranked = sorted({str(u) for u in user_ids}, key=lambda u: hashlib.sha1(f"{seed}:{u}".encode()).hexdigest())
    return sorted(ranked if n is None else ranked[:n])


def restrict_users(data: "Prepared", n: int | None, seed: int = 0) -> "Prepared":
    """A prepared dataset cut to `user_subset(..., n, seed)`; the card is recounted."""
    if n is None:
        return data
    keep = set(user_subset(data.samples["user_id"].unique(), n, seed))
    samples = data.samples[data.samples["user_id"].astype(str).isin(keep)].reset_index(drop=True)
    card = dict(data.card)
    sizes = samples["split"].value_counts().reindex(["train", "valid", "test"], fill_value=0)
    card.update({"interactions": int(len(samples)), "users": int(samples["user_id"].nunique()),
                 "items": int(samples["item_id"].nunique()),
                 "split_sizes": {k: int(v) for k, v in sizes.items()},
                 "split_fractions": {k: round(int(v) / max(len(samples), 1), 4) for k, v in sizes.items()},
                 "bench_slice": {"users": n, "seed": seed, "of": data.card.get("dataset")}})
    return Prepared(samples, data.items, data.users, card)


def _referenced_items(samples: pd.DataFrame) -> set[str]:
    """Every item a sample names, as its target or in its history."""
    history = pa.array(samples["history"])  # Arrow-backed: prepare builds it so
    # distinct values first: a few thousand ids, not one Python object per history entry
    named = set(pc.unique(pa.array(samples["item_id"])).to_pylist())
    return named | set(pc.unique(pc.list_flatten(history)).to_pylist())


def _history_lengths(history: pd.Series) -> pd.Series:
    if isinstance(history.dtype, pd.ArrowDtype):
        return history.list.len()
    return history.map(len)


def _hour_weekday(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTC hour of day and weekday (Monday 0) of epoch seconds, by arithmetic: no datetime column.
    Floor division keeps times before 1970 right; 1970-01-01 was a Thursday (3)."""
    days = seconds // 86_400
    return ((seconds // 3_600) % 24).astype("int16"), ((days + 3) % 7).astype("int16")


SPLIT_NAMES = pa.array(["train", "valid", "test"], type=pa.large_string())


def _split(pos: np.ndarray, count: np.ndarray, test_frac: float, valid_frac: float) -> pd.Series:
    n_test = np.floor(count * test_frac + 0.5).astype(int)
    n_test = np.where((count >= 2) & (n_test == 0), 1, n_test)
    n_train = count - n_test
    n_valid = np.floor(n_train * valid_frac + 0.5).astype(int)
    n_valid = np.where((n_train >= 3) & (n_valid == 0), 1, n_valid)
    code = np.zeros(len(pos), dtype=np.int8)
    code[pos >= n_train - n_valid] = 1
    code[pos >= n_train] = 2
    # decoded by Arrow from one-byte codes: 20M Python str pointers would cost 160 MB and a pass each
    names = pa.DictionaryArray.from_arrays(pa.array(code), SPLIT_NAMES).cast(pa.large_string())
    return pd.Series(names.to_pandas(types_mapper={pa.large_string(): pd.StringDtype("pyarrow", np.nan)}.get))


def _side_table(frame: pd.DataFrame, key: str, ids: set) -> pd.DataFrame:
    frame = frame.copy()
    frame[key] = frame[key].astype(str)
    frame = frame.drop_duplicates(subset=[key], keep="first")
    frame = frame[frame[key].isin(ids)].reset_index(drop=True)
    missing = sorted(ids - set(frame[key]))
    if missing:
        filler = {key: missing}
        if key == "item_id":
            filler.update(title=missing, categories="", description="")
        frame = pd.concat([frame, pd.DataFrame(filler)], ignore_index=True)
    for col in frame.columns:
        if col.startswith("feat_") and _numeric(frame[col]):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")  # NaN = missing
        elif col.startswith("feat_") or col in ("title", "categories", "description"):
            frame[col] = frame[col].fillna("").astype(str)
    return frame.sort_values(key, kind="stable").reset_index(drop=True)


def _numeric(values: pd.Series) -> bool:
    """Already numeric, or every present value parses as a number (a reader that kept "1995" as text)."""
    if pd.api.types.is_bool_dtype(values):
        return False
    if pd.api.types.is_numeric_dtype(values):
        return True
    present = values.dropna()
    present = present[present.astype(str).str.strip() != ""]
    if not len(present):
        return False
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def make_card(ds, samples, items, users, cfg, threshold, report, n_raw_users) -> dict:
    split_sizes = samples["split"].value_counts().reindex(["train", "valid", "test"], fill_value=0)
    hist_len = _history_lengths(samples["history"])
    per_user_test = samples["split"].eq("test").groupby(samples["user_id"], sort=False).mean()
    return {
        "dataset": ds.name,
        "domain": ds.domain,
        "source": ds.meta.get("source"),
        "time_source": ds.meta.get("time_source", "timestamp"),
        "interactions": int(len(samples)),
        "users": int(samples["user_id"].nunique()),
        "items": int(samples["item_id"].nunique()),
        "items_in_table": int(len(items)),
        "users_before_subsampling": int(n_raw_users),
        "rating_scale": list(ds.rating_scale),
        "rating_mean": round(float(samples["rating"].mean()), 4),
        "label_threshold": threshold,
        "label_rate": round(float(samples["label"].mean()), 4),
        "label_rate_by_split": {s: round(float(r), 4) for s, r in samples.groupby("split")["label"].mean().items()},
        "split_sizes": {k: int(v) for k, v in split_sizes.items()},
        "split_fractions": {k: round(int(v) / len(samples), 4) for k, v in split_sizes.items()},
        "test_fraction_per_user_mean": round(float(per_user_test.mean()), 4),
        "history_full_5": round(float((hist_len >= cfg.history_len).mean()), 4),
        "history_mean_len": round(float(hist_len.mean()), 3),
        "history_empty": int((hist_len == 0).sum()),
        "context_columns": [c for c in samples.columns if c.startswith("ctx_")],
        "item_features": [c for c in items.columns if c.startswith("feat_")],
        "user_features": [c for c in users.columns if c.startswith("feat_")],
        "time_range": _time_range(ds, samples),
        "bad_rows_skipped": int(ds.meta.get("bad_rows", 0)) + report.get("bad_rows", 0),
        "duplicates_dropped": report.get("duplicates", 0),
        "dropped": _drops(ds, report),
        "rejects_file": REJECTS_FILE,
        "decoded_with_fallback": dict(ds.meta.get("decoded_with_fallback", {})),
        "config": asdict(cfg),
    }


def _time_range(ds: RawDataset, samples: pd.DataFrame) -> list[str] | None:
    """None when the order is the file's: its "timestamps" are line numbers, not dates."""
    if not _real_time(ds):
        return None
    return [_day(samples["timestamp"].min()), _day(samples["timestamp"].max())]


def _day(seconds) -> str:
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).date().isoformat()


def _drops(ds: RawDataset, report: dict) -> dict[str, int]:
    """Every reason an input line is not in the samples, with its count (zero counts omitted)."""
    out = {reason: int(n) for reason, n in ds.meta.get("dropped", {}).items() if n}
    bad = int(ds.meta.get("bad_rows", 0)) + report.get("bad_rows", 0)
    for reason, n in (("bad row (skipped)", bad), ("duplicate", report.get("duplicates", 0))):
        if n:
            out[reason] = out.get(reason, 0) + int(n)
    return out


def _drops_text(card: dict) -> str:
    drops = card.get("dropped") or {}
    if not drops:
        return "nothing"
    return f"{', '.join(f'{k}: {v:,}' for k, v in drops.items())} (each line listed in {card.get('rejects_file')})"


def _range_text(time_range) -> str:
    return f"{time_range[0]} .. {time_range[1]}" if time_range else "no dates"


def render_card(card: dict) -> str:
    sizes, fr = card["split_sizes"], card["split_fractions"]
    lines = [
        f"# Dataset card: {card['dataset']} ({card['domain']})",
        "",
        "| | |",
        "|---|---|",
        f"| interactions | {card['interactions']:,} |",
        f"| users | {card['users']:,} |",
        f"| items | {card['items']:,} (item table: {card['items_in_table']:,}) |",
        f"| ratings | scale {card['rating_scale'][0]:g}-{card['rating_scale'][1]:g}, mean {card['rating_mean']} |",
        f"| label | rating >= {card['label_threshold']:g}; positive rate {card['label_rate']:.2%} |",
        f"| split | train {sizes['train']:,} ({fr['train']:.1%}), valid {sizes['valid']:,} ({fr['valid']:.1%}), "
        f"test {sizes['test']:,} ({fr['test']:.1%}) |",
        f"| label rate by split | {', '.join(f'{k} {v:.2%}' for k, v in card['label_rate_by_split'].items())} |",
        f"| history | {card['history_full_5']:.1%} with all 5; mean length {card['history_mean_len']}; "
        f"{card['history_empty']:,} empty |",
        f"| time | {_range_text(card.get('time_range'))} (order from {card['time_source']}) |",
        f"| context | {', '.join(card['context_columns']) or '-'} |",
        f"| features | items: {', '.join(card['item_features']) or '-'}; users: {', '.join(card['user_features']) or '-'} |",
        f"| bad rows skipped / duplicates dropped | {card['bad_rows_skipped']} / {card['duplicates_dropped']} |",
        f"| dropped | {_drops_text(card)} |",
    ]
    decoded = card.get("decoded_with_fallback") or {}
    if decoded:
        lines.append(f"| not UTF-8, read as cp1252 | {', '.join(f'{k}: {v:,} line(s)' for k, v in decoded.items())} |")
    if card.get("prepare_seconds") is not None:
        lines.append(f"| prepare time | {card['prepare_seconds']} s |")
    return "\n".join(lines) + "\n"
