"""Parity with peer libraries: reasonrec's exact split as RecBole atomic files, and the zoo at defaults.

`reasonrec bench parity` prepares full MovieLens-100K, trains every zoo model and LR-Recsys without
explanations at their defaults over the given seeds, and writes `benchmarks/parity/` (results.csv,
REPORT.md) plus the split as RecBole atomic files, so a peer library can be trained on the very
same rows (recipe: docs/parity.md).

Atomic files (RecBole's `benchmark_filename: [train, valid, test]`):
  <name>.train.inter / .valid.inter / .test.inter   user_id, item_id, label:float, ctx_* tokens
  <name>.user                                       user_id and the user side fields
  <name>.item                                       item_id, the item side fields, genres as token_seq
History windows are not exported: RecBole's context-aware models do not read them.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pandas as pd

from reasonrec.data.prepare import Prepared
from reasonrec.errors import ReasonrecError

SPLITS = ("train", "valid", "test")


def _clean(value) -> str:
    # atomic files are tab-separated with space-separated sequences: neither may occur inside a token
    return str(value).replace("\t", " ").replace(" ", "_") if pd.notna(value) else ""


def _write_atomic(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def export_recbole(data: Prepared, out_dir: Path, name: str = "reasonrec") -> Path:
    """Write `data`'s split as RecBole atomic files under `out_dir/name/`; returns that directory."""
    target = Path(out_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    s = data.samples
    ctx = [c for c in s.columns if c.startswith("ctx_")]
    header = ["user_id:token", "item_id:token", "label:float", *[f"{c}:token" for c in ctx]]
    for split in SPLITS:
        part = s[s["split"] == split]
        rows = zip(part["user_id"], part["item_id"], part["label"].astype(float), *[part[c] for c in ctx])
        _write_atomic(target / f"{name}.{split}.inter", header, ([_clean(v) for v in row] for row in rows))
    ufeat = [c for c in data.users.columns if c.startswith("feat_")]
    _write_atomic(target / f"{name}.user", ["user_id:token", *[f"{c.removeprefix('feat_')}:token" for c in ufeat]],
                  ([_clean(v) for v in row] for row in data.users[["user_id", *ufeat]].itertuples(index=False)))
    ifeat = [c for c in data.items.columns if c.startswith("feat_")]

    def item_row(row) -> list[str]:
        genres = " ".join(_clean(g.strip()) for g in str(row[-1] or "").split(",") if g.strip())
        return [*[_clean(v) for v in row[:-1]], genres]

    _write_atomic(target / f"{name}.item",
                  ["item_id:token", *[f"{c.removeprefix('feat_')}:token" for c in ifeat], "genre:token_seq"],
                  (item_row(row) for row in data.items[["item_id", *ifeat, "categories"]].itertuples(index=False)))
    return target


def _config_json(cfg) -> str:
    return json.dumps(cfg.model_dump(mode="json", exclude={"text_columns", "strip_prefixes"}), sort_keys=True)


def _stored_config(stored) -> str | None:
    from reasonrec.config import validate

    try:
        return _config_json(validate(json.loads(stored)))
    except (TypeError, ValueError, ReasonrecError):     # none stored, or an option since removed
        return None


def run_parity(data: Prepared, models: list[str], seeds: list[int], out: Path, overrides: dict | None = None,
               progress: bool = False, echo=print) -> pd.DataFrame:
    """Every model without explanations at its defaults (plus `overrides`), one row per seed;
    results.csv is rewritten after each fit. A fit already in it is not run again unless its stored
    config differs from what the defaults resolve to now (then it is refitted, so no row of the
    report describes settings that are no longer the defaults). An option added since a fit reads
    as its field default in the stored config: that is what the fit had."""
    from reasonrec.estimator import Recommender

    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.csv"
    done = pd.read_csv(results) if results.is_file() else pd.DataFrame()
    rows = done.to_dict("records")
    key = json.dumps(overrides or {}, sort_keys=True)
    for model in models:
        for seed in seeds:
            rec = Recommender(**{**(overrides or {}), "model": model, "explanations": "none", "seed": seed})
            config = _config_json(rec.config)
            same = [r for r in rows if (r["model"], int(r["seed"]), r.get("overrides", "{}")) == (model, seed, key)]
            if same and all(_stored_config(r.get("config")) == config for r in same):
                continue
            if same:
                echo(f"{model} seed {seed}: the defaults changed since the stored fit; refitting")
                rows = [r for r in rows if not any(r is x for x in same)]
            started = time.perf_counter()
            rec.fit(data, progress=progress)
            test = rec.evaluate(data)
            fr = rec.fit_result
            row = {"model": model, "seed": seed, "overrides": key, "test_auc": test["auc"],
                   "test_logloss": test["logloss"], "valid_auc": fr.best_valid.get("auc"),
                   "best_epoch": fr.best_epoch, "epochs_run": fr.epochs_run,
                   "seconds_per_epoch": round(fr.seconds_per_epoch, 3), "fit_seconds": round(time.perf_counter() - started, 1),
                   "dead_units": fr.dead_units, "constant_output": fr.constant_output, "config": config}
            rows.append(row)
            pd.DataFrame(rows).to_csv(results, index=False)
            echo(f"{model} seed {seed}: test AUC {test['auc']:.4f}, LogLoss {test['logloss']:.4f}, "
                 f"best epoch {fr.best_epoch}, {fr.seconds_per_epoch:.2f} s/epoch")
    return pd.DataFrame(rows)


def _mean_sd(values: pd.Series) -> str:
    return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"


def render(results: pd.DataFrame, peers: pd.DataFrame | None, out: Path, card: dict, command: str) -> Path:
    """REPORT.md: per model mean ± std of test AUC / LogLoss, best epochs, s/epoch, dead units; the
    peer library's rows (measured with the recipe in docs/parity.md) beside them."""
    sizes = card.get("split_sizes", {})
    split = " / ".join(f"{sizes.get(k, 0):,} {k}" for k in SPLITS)
    lines = ["# Parity: every model at its defaults, on rows a peer library can train on too", "",
             f"Dataset `{card.get('dataset')}` ({card.get('interactions', 0):,} interactions, {card.get('users', 0):,} "
             f"users; split per user by time: {split}; label = rating >= {card.get('label_threshold')}). Side "
             "features and context on for every model, no explanations. Each model runs at its defaults "
             "(`reasonrec.config` + the model's DEFAULTS); early stopping on validation AUC; test scored once "
             "with the best-validation weights. Rows labelled with settings ran with `--set KEY=VALUE`. The "
             f"fits are kept in results.csv, so a rerun only adds what is missing; the last run: `{command}`.", "",
             "| model | seeds | test AUC | test LogLoss | valid AUC | best epochs | s/epoch | dead units |",
             "|---|---|---|---|---|---|---|---|"]
    results = results.assign(row=[m if o in ("{}", None) else f"{m} {o}" for m, o in
                                  zip(results["model"], results["overrides"].fillna("{}"))])
    for name, g in results.groupby("row", sort=False):
        dead = g["dead_units"].dropna()
        lines.append(f"| {name} | {len(g)} | {_mean_sd(g['test_auc'])} | {_mean_sd(g['test_logloss'])} | "
                     f"{g['valid_auc'].mean():.4f} | {', '.join(str(int(e)) for e in g['best_epoch'])} | "
                     f"{g['seconds_per_epoch'].mean():.2f} | {f'{dead.max():.0%}' if len(dead) else '—'} |")
    if peers is not None and len(peers):
        lines += ["", "## RecBole 1.2.1 on the same rows (its own venv; docs/parity.md)", "",
                  "| model | setting | seeds | test AUC | test LogLoss | best valid AUC | best epochs | s/epoch |",
                  "|---|---|---|---|---|---|---|---|"]
        for (model, setting), g in peers.groupby(["model", "setting"], sort=False):
            lines.append(f"| {model} | {setting} | {len(g)} | {_mean_sd(g['test_auc'])} | "
                         f"{g['test_logloss'].mean():.4f} | {g['valid_auc'].mean():.4f} | "
                         f"{', '.join(str(int(e)) for e in g['best_epoch'])} | {g['seconds_per_epoch'].mean():.2f} |")
    target = Path(out) / "REPORT.md"
    target.write_text("\n".join(lines) + "\n")
    return target
