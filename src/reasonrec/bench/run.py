"""`reasonrec bench run`: a spec's experiments x tasks x seeds, each run cached by a hash.

A run's hash covers the resolved experiment (display keys aside), the task, the seed, the spec
version, the dataset card and a fingerprint of the explanation texts it reads, so a rerun skips
finished runs and editing one experiment (or regenerating its texts) reruns only that experiment.

Layout under `benchmarks/results/<spec>/`:
    runs/<experiment>/<task>-seed<seed>-<hash>.json   metrics, timings, what was read (written last)
    runs/<experiment>/<task>-seed<seed>-<hash>.npz    test predictions (+ attention shares for
                                                       LR-Recsys with text): sample_id, pred,
                                                       label, rating[, attention, attention_names]
    runs/<experiment>/<task>-seed<seed>-<point>-<hash>.*   the same for a tuned experiment's run at
                                                       one grid point, e.g. `lr0.01+embed_dim16`
    results.csv      one row per finished run of the current spec (the tidy table); for a tuned
                     experiment only its runs at the chosen point (columns `tuned`, `lr`, `embed_dim`)
    grid.csv         a tuned experiment's runs at every grid point (first seed), `chosen` marking the
                     winner: the validation metrics the choice read; not used by the report's tables
    spec.json        the resolved spec and the slices, for the report
    status.json      per experiment: done / skipped (why, and the command that fixes it) / failed
    insights.json    section 5.5.3 keywords of the most-explained test items
    texts.csv        per slice x LLM x variant x text column: how many samples have a text, how
                     varied the texts are (a generator that writes one sentence for everyone
                     cannot help a recommender, whatever its size)

The runner is assembled from one mixin per job: texts.py (dataset, slices, explanation texts),
plan.py (which runs, hashes, tuning choice), encoders.py (fitted encoders), collect.py (results.csv
and the side files); this module executes one run and loops over the plan. Nothing here calls an
LLM to generate text.
"""

from __future__ import annotations

import json
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from reasonrec.bench import controls
from reasonrec.bench.collect import Collector
from reasonrec.bench.encoders import DEFAULT_ENCODER_CACHE, Encoders
from reasonrec.bench.plan import Planner, PlannedRun, _canonical, _with, apply_train_fraction, point_slug
from reasonrec.bench.spec import Spec
from reasonrec.bench.texts import Explanations, MissingExplanations, TextSource
from reasonrec.data.prepare import Prepared


class BenchRunner(TextSource, Planner, Encoders, Collector):
    """Runs a spec: plans, looks up texts, trains and caches each run, collects results.csv."""

    def __init__(self, spec: Spec, *, backend_factory: Callable | None = None, echo: Callable = print,
                 strict: bool = False, progress: bool = False, encoder_cache: Path | None = DEFAULT_ENCODER_CACHE):
        self.spec = spec
        self.echo = echo
        self.strict = strict
        self.progress = progress
        self.encoder_cache = Path(encoder_cache) if encoder_cache else None
        self._factory = backend_factory
        self._model_ids: dict[str, str] = {}
        self._data: Prepared | None = None
        self._slices: dict = {}
        self._expl: dict = {}
        self._oracle: dict = {}         # (users, q) -> oracle Explanations
        self._probes: dict = {}         # probe key -> test AUC of the codes alone
        self._encoders: dict = {}
        self._imported = False
        self._chosen: dict = {}
        self.status: dict[str, dict] = {}


    # --- running -----------------------------------------------------------------------------

    def run(self, only=None, seeds=None) -> dict:
        data = self.dataset()
        runs = self.plan(only, seeds)
        self.out.mkdir(parents=True, exist_ok=True)
        counts = {"ran": 0, "cached": 0, "skipped": 0, "failed": 0}
        n_grid = sum(r.grid for r in runs)
        self.echo(f"spec '{self.spec.name}': {len(runs)} runs ({n_grid} of them tuning runs) over "
                  f"{len({r.exp.id for r in runs})} experiments on {self.spec.dataset_dir} "
                  f"({data.card.get('interactions', len(data.samples)):,} samples)")
        started = time.perf_counter()
        for i, run in enumerate(runs, start=1):
            exp = run.exp
            head = f"[{i:>3}/{len(runs)}] {exp.id:<28} {run.task:<14} seed {run.seed}"
            if run.point:
                head += f" {point_slug(run.point)}"
            expl = None
            if exp.uses_text:
                try:
                    expl = self.texts_for(exp, run.seed)
                except MissingExplanations as err:
                    if self.strict:
                        raise
                    if self.status.get(exp.id, {}).get("state") != "skipped":
                        self.echo(f"skip {exp.id}: {err}")
                    self.status[exp.id] = {"state": "skipped", "message": err.short,
                                           "command": self.explain_command(exp)}
                    counts["skipped"] += 1
                    continue
            if exp.tune and not run.grid:      # a final run: its point is chosen once the grid is done
                point, note = self.choose(exp, run.task, expl)
                if point is None:
                    if self.status.get(exp.id, {}).get("state") != "failed":
                        self.status[exp.id] = {"state": "skipped", "message": f"tuning {run.task}: {note}"}
                    counts["skipped"] += 1
                    continue
                run = PlannedRun(exp, run.task, run.seed, point)
                head += f" {point_slug(point)}"
            digest = self._digest(run, expl)
            path = self.run_path(run, digest)
            if _with(path, ".json").is_file():
                counts["cached"] += 1
                self.echo(f"{head}  cached")
                self._backfill_probe(run, expl, _with(path, ".json"))
                self.status.setdefault(exp.id, {"state": "done"})
                continue
            try:
                record, arrays = self._execute(run, expl)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # one broken run must not stop the spec
                if self.strict:
                    raise
                counts["failed"] += 1
                msg = f"{type(err).__name__}: {err}"
                self.echo(f"{head}  FAILED {msg}")
                self.status[exp.id] = {"state": "failed", "message": msg,
                                       "traceback": traceback.format_exc(limit=6)}
                continue
            record.update({"spec": self.spec.name, "spec_version": self.spec.version, "id": exp.id,
                           "task": run.task, "seed": run.seed, "hash": digest, "point": run.point,
                           "resolved": _canonical(run.setup.resolved()), "dataset_fp": self.dataset_fp,
                           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            self._save(path, record, arrays)
            counts["ran"] += 1
            if self.status.get(exp.id, {}).get("state") not in ("failed",):
                self.status[exp.id] = {"state": "done"}
            self.echo(f"{head}  {_metrics_line(record)}")
        self._write_status(runs)
        self._write_spec_json()
        self.write_insights()
        self.write_text_stats()
        table = self.collect()
        counts["seconds"] = round(time.perf_counter() - started, 1)
        counts["results"] = str(self.out / "results.csv")
        counts["rows"] = len(table)
        self.echo(f"done: {counts['ran']} ran, {counts['cached']} cached, {counts['skipped']} skipped, "
                  f"{counts['failed']} failed in {counts['seconds']} s; {len(table)} rows in {counts['results']}")
        return counts

    def _run_data(self, run: PlannedRun) -> Prepared:
        exp = run.setup
        data = self.slice(exp.users)
        fraction_seed = run.seed if exp.fraction_seed == "run" else int(exp.fraction_seed)
        samples = apply_train_fraction(data.samples, exp.train_fraction, fraction_seed)
        return Prepared(samples, data.items, data.users, data.card)

    def _execute(self, run: PlannedRun, expl: Explanations | None) -> tuple[dict, dict]:
        data = self._run_data(run)
        if run.setup.kind == "llm_direct":
            return self._direct(run, data, expl)
        return self._train(run, data, expl)

    def _recommender(self, run: PlannedRun, data: Prepared, expl: Explanations | None):
        """(unfitted Recommender, fitted text encoder or None, encoder seconds, encoder cached?)."""
        from reasonrec.estimator import Recommender

        cfg = run.setup.config(run.task, run.seed)
        if expl is not None:
            cfg = cfg.model_copy(update={"text_columns": tuple(expl.info["text_columns"]),
                                         "strip_prefixes": tuple(expl.info["strip_prefixes"])})
        rec = Recommender(cfg)
        if not rec.uses_text:
            return rec, None, 0.0, False
        return rec, *self._encoder(rec, data, expl.info.get("encoder_table", expl.table))

    def _backfill_probe(self, run: PlannedRun, expl: Explanations | None, json_path: Path) -> None:
        """A run stored before `probe_lift` existed gets it without a refit (no probe depends on
        the fit, and each is computed once per experiment)."""
        record = json.loads(json_path.read_text())
        if "probe_auc" not in record or "probe_lift" in record:
            return
        data = self._run_data(run)
        rec, encoder, _, _ = self._recommender(run, data, expl)
        record.update(self._probe(run, rec, data, expl, encoder))
        tmp = json_path.parent / f".{json_path.name}.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=_json_default))
        tmp.replace(json_path)

    def _train(self, run: PlannedRun, data: Prepared, expl: Explanations | None) -> tuple[dict, dict]:
        from reasonrec.train.metrics import metrics_for

        table = expl.table if expl is not None else None
        rec, encoder, enc_seconds, enc_cached = self._recommender(run, data, expl)
        started = time.perf_counter()
        probe = self._probe(run, rec, data, expl, encoder) if rec.uses_text else None
        rec.fit(data, table, progress=self.progress, encoder=encoder)
        fit_seconds = time.perf_counter() - started
        test = data.samples[data.samples["split"] == "test"]
        attention, names = None, None
        if rec.uses_text and getattr(rec.model, "input_names", None):
            pred, attn = rec.predict(test, table, return_attention=True)
            if attn is not None:
                attention = attn.mean(axis=1).astype("float32")        # eq. 24: attention each input receives
                names = list(rec.model.input_names)
        else:
            pred = rec.predict(test, table)
        scale = tuple(data.card.get("rating_scale", (1.0, 5.0)))
        y = test["label" if run.task == "classification" else "rating"].to_numpy(dtype=float)
        test_metrics = metrics_for(run.task, y, pred, scale)
        fr = rec.fit_result
        record = {"metrics": {**{f"test_{k}": v for k, v in test_metrics.items()},
                              **{f"valid_{k}": v for k, v in fr.best_valid.items()}},
                  "fit_seconds": round(fit_seconds, 2), "seconds_per_epoch": round(fr.seconds_per_epoch, 3),
                  "best_epoch": fr.best_epoch, "epochs_run": fr.epochs_run,
                  "encoder_seconds": round(enc_seconds, 2), "encoder_cached": enc_cached}
        if probe is not None:
            record.update(probe)
        record.update(self._common(run, data, expl))
        arrays = _arrays(test, pred)
        if attention is not None:
            arrays["attention"] = attention
            arrays["attention_names"] = np.array(names)
        return record, arrays

    def _probe(self, run: PlannedRun, rec, data: Prepared, expl: Explanations, encoder) -> dict:
        """How much the codes say about the label, alone and beyond the ids (controls.probe_auc,
        probe_lift), once per experiment, encoder and training subset: it does not depend on the
        seed, so later seeds reuse it."""
        exp = run.setup
        fraction_seed = run.seed if exp.fraction_seed == "run" else exp.fraction_seed
        key = (exp.id, _canonical([rec.config.encoder, rec.config.encoder_options]), exp.train_fraction,
               fraction_seed if exp.train_fraction < 1 else None)
        if key not in self._probes:
            s, table = data.samples, expl.info["probe_table"]

            def codes(split: str) -> np.ndarray:
                part = s[s["split"] == split]
                return np.hstack([encoder.encode(col) for col in rec._texts(part, table)])

            train, test = s[s["split"] == "train"], s[s["split"] == "test"]
            x_train, x_test = codes("train"), codes("test")
            self._probes[key] = {
                "probe_auc": round(controls.probe_auc(x_train, train["label"].to_numpy(), x_test, test["label"].to_numpy()), 6),
                "probe_lift": round(controls.probe_lift(train, x_train, test, x_test), 6)}
        return self._probes[key]

    def _direct(self, run: PlannedRun, data: Prepared, expl: Explanations) -> tuple[dict, dict]:
        """LLM-direct baseline: the stored rating is the prediction (AUC scores by it; RMSE/MAE
        compare it with the true rating; LogLoss is undefined). Unparsed ratings get the mean
        training rating."""
        from reasonrec.train.metrics import auc, regression_metrics

        col = expl.info["text_columns"][0]
        s = data.samples.merge(expl.table[["sample_id", col]], on="sample_id", how="left")
        rating = pd.to_numeric(s[col], errors="coerce")
        fill = float(s.loc[s["split"] == "train", "rating"].mean())
        s["pred"] = rating.fillna(fill).clip(*data.card.get("rating_scale", (1.0, 5.0)))
        scale = tuple(data.card.get("rating_scale", (1.0, 5.0)))
        metrics = {}
        for split in ("test", "valid"):
            part = s[s["split"] == split]
            if run.task == "classification":
                m = {"auc": auc(part["label"].to_numpy(float), part["pred"].to_numpy(float)), "logloss": float("nan")}
            else:
                m = regression_metrics(part["rating"].to_numpy(float), part["pred"].to_numpy(float), scale)
            metrics.update({f"{split}_{k}": v for k, v in m.items()})
        test = s[s["split"] == "test"]
        record = {"metrics": metrics, "fit_seconds": 0.0, "seconds_per_epoch": 0.0, "best_epoch": 0,
                  "epochs_run": 0, "encoder_seconds": 0.0, "encoder_cached": False,
                  "unparsed_ratings": int(rating.isna().sum())}
        record.update(self._common(run, data, expl))
        return record, _arrays(test, test["pred"].to_numpy(float))

    def _common(self, run: PlannedRun, data: Prepared, expl: Explanations | None) -> dict:
        exp = run.exp
        split = data.samples["split"]
        out = {"n_train": int((split == "train").sum()), "n_valid": int((split == "valid").sum()),
               "n_test": int((split == "test").sum()), "n_users": int(data.samples["user_id"].nunique())}
        if expl is not None:
            out["explanations_info"] = {"llm": expl.info.get("llm", exp.llm), "model_id": expl.info["model_id"], "variant": exp.variant,
                                        "profiles": exp.profiles, "coverage": expl.info["coverage"],
                                        "fingerprint": expl.info["fingerprint"]}
        return out

    def _save(self, path: Path, record: dict, arrays: dict):
        path.parent.mkdir(parents=True, exist_ok=True)
        npz = _with(path, ".npz")
        tmp = path.parent / f".{path.name}.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        tmp.replace(npz)
        record["predictions"] = str(npz.relative_to(self.out))
        tmp = path.parent / f".{path.name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=1, default=_json_default))
        tmp.replace(_with(path, ".json"))
        key = path.name.rsplit("-", 1)[0]                  # <task>-seed<seed>[-<point>]
        for old in path.parent.glob(key + "-*"):
            # superseded by this run; a prefix match alone would also take other grid points' runs
            if old.stem != path.name and old.stem.rsplit("-", 1)[0] == key and old.suffix in (".json", ".npz"):
                old.unlink(missing_ok=True)


def _arrays(test: pd.DataFrame, pred) -> dict:
    return {"sample_id": test["sample_id"].to_numpy("int64"), "pred": np.asarray(pred, dtype="float32"),
            "label": test["label"].to_numpy("int8"), "rating": test["rating"].to_numpy("float32")}


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def _metrics_line(record: dict) -> str:
    m = record["metrics"]
    shown = " ".join(f"{k[5:]} {m[k]:.4f}" for k in ("test_auc", "test_logloss", "test_rmse", "test_mae")
                     if k in m and m[k] == m[k])
    return (f"{shown}  (fit {record['fit_seconds']:.1f} s, {record['seconds_per_epoch']:.2f} s/epoch, "
            f"best epoch {record['best_epoch']}/{record['epochs_run']})")
