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

Nothing here calls an LLM to generate text: explanations come from the store (and the committed
cache exports it imports when texts are missing); the LLM is known only by its model id, which
keys the store and is derived without loading the model (`reasonrec.llm.model_id_of`).
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from reasonrec.bench.spec import Experiment, Spec, card_fingerprint, run_hash
from reasonrec.data.prepare import Prepared, load_prepared, restrict_users
from reasonrec.errors import ReasonrecError
from reasonrec.llm.base import ModelIdOnly

DEFAULT_ENCODER_CACHE = Path("artifacts/cache/bench-encoders")
METRIC_NAMES = ("auc", "logloss", "rmse", "mae", "rmse_norm", "mae_norm")
RESULT_COLUMNS = ["spec", "id", "label", "tag", "kind", "model", "task", "seed", "slice", "users", "n_users",
                  "train_fraction", "explanations", "encoder", "variant", "profiles", "llm", "llm_name", "model_id",
                  "coverage", "n_train", "n_valid", "n_test", *[f"test_{m}" for m in METRIC_NAMES],
                  *[f"valid_{m}" for m in METRIC_NAMES], "tuned", "lr", "embed_dim", "fit_seconds",
                  "seconds_per_epoch", "best_epoch", "epochs_run", "encoder_seconds", "encoder_cached",
                  "compare_to", "hash", "predictions", "finished"]


class MissingExplanations(ReasonrecError):
    """An experiment's texts are not in the store; the message says which command writes them."""

    def __init__(self, message: str, short: str | None = None):
        super().__init__(message)
        self.short = short or message.splitlines()[0]


# --- slices --------------------------------------------------------------------------------------

def apply_train_fraction(samples: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Keep a seeded random `fraction` of the train rows; valid and test rows are untouched."""
    if fraction >= 1.0:
        return samples
    train_idx = np.flatnonzero((samples["split"] == "train").to_numpy())
    n_keep = max(1, int(round(fraction * len(train_idx))))
    chosen = np.random.default_rng([int(seed), 7919]).choice(train_idx, n_keep, replace=False)
    mask = np.array(samples["split"] != "train", dtype=bool)
    mask[chosen] = True
    return samples[mask].reset_index(drop=True)


# --- encoders --------------------------------------------------------------------------------------

class _MemoEncoder:
    """A fitted encoder whose encode() remembers each text's vector (the same texts are encoded for
    every seed and task of an experiment)."""

    def __init__(self, inner):
        self.inner = inner
        self.memo: dict[str, np.ndarray] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def name(self):
        return self.inner.name

    @property
    def dim(self):
        return self.inner.dim

    def encode(self, texts) -> np.ndarray:
        texts = list(texts)
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            self.memo.update(zip(new, np.asarray(self.inner.encode(new), dtype="float32")))
        if not texts:
            return np.zeros((0, self.dim), dtype="float32")
        return np.stack([self.memo[t] for t in texts])


@dataclass
class Explanations:
    table: pd.DataFrame
    info: dict          # text_columns, strip_prefixes, coverage, model_id, fingerprint


@dataclass
class PlannedRun:
    exp: Experiment
    task: str
    seed: int
    point: dict | None = None   # tune grid point; None for an untuned run, or a final run not chosen yet
    grid: bool = False          # a tuning run (the first seed at one grid point)

    @property
    def setup(self) -> Experiment:
        """The experiment with the grid point's values set: what is trained and hashed."""
        return self.exp.at(self.point)

    @property
    def label(self) -> str:
        return f"{self.task}-seed{self.seed}" + (f"-{point_slug(self.point)}" if self.point else "")


class BenchRunner:
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
        self._encoders: dict = {}
        self._imported = False
        self._chosen: dict = {}
        self.status: dict[str, dict] = {}

    # --- inputs ------------------------------------------------------------------------------

    @property
    def out(self) -> Path:
        return self.spec.results_dir

    def dataset(self) -> Prepared:
        if self._data is None:
            d = self.spec.dataset_dir
            if not (d / "samples.parquet").is_file():
                if not self.spec.prepare:
                    raise ReasonrecError(f"no prepared dataset at {d} and the spec says nothing under "
                                         "dataset.prepare; run `reasonrec data prepare --out {d}` first")
                from reasonrec.data.prepare import PrepareConfig, prepare
                from reasonrec.data.readers import read

                opts = dict(self.spec.prepare)
                name, path = opts.pop("dataset", "ml-100k"), opts.pop("path", None)
                reader = opts.pop("reader", {}) or {}
                self.echo(f"preparing {name} into {d} ({opts})")
                prepare(read(name, path, **reader), PrepareConfig(**opts)).save(d)
            self._data = load_prepared(d)
            self.dataset_fp = card_fingerprint(self._data.card)
        return self._data

    def slice(self, users: int | None) -> Prepared:
        if users not in self._slices:
            self._slices[users] = restrict_users(self.dataset(), users, self.spec.subslice_seed)
        return self._slices[users]

    def slice_dir(self, users: int | None) -> Path:
        """A prepared dataset directory holding exactly the slice (made on demand) — what
        `reasonrec explain --dataset` needs to generate texts for a sub-slice only."""
        if users is None:
            return self.spec.dataset_dir
        base = self.spec.dataset_dir
        suffix = f"-u{users}" + (f"s{self.spec.subslice_seed}" if self.spec.subslice_seed else "")
        target = base.parent / f"{base.name}{suffix}"
        self.slice(users).save(target)  # rewritten each time: a stale copy would name other users
        return target

    def model_id(self, llm: str) -> str:
        """The id that keys the LLM's rows in the store: pinned in the spec (`model_ids`), else
        derived from the backend spec without loading the model (nothing is generated here)."""
        if llm not in self._model_ids and llm in self.spec.model_ids:
            self._model_ids[llm] = self.spec.model_ids[llm]
        if llm not in self._model_ids:
            if self._factory is not None:
                self._model_ids[llm] = self._factory(llm).model_id
            else:
                from reasonrec.llm import model_id_of

                self._model_ids[llm] = model_id_of(llm)
        return self._model_ids[llm]

    def explain_command(self, exp: Experiment) -> str:
        parts = ["reasonrec explain", f"--dataset {self.slice_dir(exp.users)}", f"--llm {exp.llm}",
                 f"--variant {exp.variant}"]
        if not exp.profiles:
            parts.append("--no-profiles")
        if str(self.spec.store) != "artifacts/store/explanations.sqlite":
            parts.append(f"--store {self.spec.store}")
        return " ".join(parts)

    def explanations(self, exp: Experiment) -> Explanations:
        """The texts an experiment reads, for its user slice; MissingExplanations when more than
        `max_missing` of its samples have none."""
        key = (exp.users, exp.llm, exp.variant, exp.profiles)
        if key in self._expl:
            found = self._expl[key]
            if isinstance(found, Exception):
                raise found
            return found
        try:
            found = self._lookup(exp)
            if found.info["coverage"] < 1.0 - self.spec.max_missing and self._import_cache():
                found = self._lookup(exp)
            if found.info["coverage"] < 1.0 - self.spec.max_missing:
                data = self.slice(exp.users)
                short = (f"{1 - found.info['coverage']:.1%} of the {len(data.samples):,} samples of slice "
                         f"'{exp.slice_name}' have no usable '{exp.variant}' explanations"
                         f"{'' if exp.profiles else ' (without profiles)'} from {found.info['model_id']} in "
                         f"{self.spec.store} (tolerated: {self.spec.max_missing:.1%})")
                raise MissingExplanations(
                    f"{short} (never generated, or generated and failed clean-up: `reasonrec cache stats` "
                    f"counts failures; a rerun keeps them unless given --retry-failed). Generate missing ones with:\n"
                    f"    {self.explain_command(exp)}\n"
                    f"or import a cache export with `reasonrec cache import FILE --store {self.spec.store}`", short)
        except Exception as err:  # no backend, no store, bad template: the run is skipped, not the spec
            if not isinstance(err, MissingExplanations):
                err = MissingExplanations(f"explanations for '{exp.id}' unavailable: {type(err).__name__}: {err}")
            self._expl[key] = err
            raise err
        self._expl[key] = found
        return found

    def _lookup(self, exp: Experiment) -> Explanations:
        from reasonrec.explain.generate import ExplainConfig, Explainer
        from reasonrec.explain.store import ExplanationStore
        from reasonrec.explain.templates import load_templates

        if not Path(self.spec.store).is_file() and not self._import_cache():
            raise MissingExplanations(f"no explanation store at {self.spec.store}. Generate texts with:\n"
                                      f"    {self.explain_command(exp)}\n"
                                      "or import the committed cache with `reasonrec cache import FILE`",
                                      f"no explanation store at {self.spec.store}")
        data = self.slice(exp.users)
        model_id = self.model_id(exp.llm)
        templates = load_templates(data.card.get("domain", "movie"))
        explainer = Explainer(ModelIdOnly(model_id), ExplanationStore(self.spec.store), templates,
                              ExplainConfig(variant=exp.variant, profiles=exp.profiles))
        tasks = templates.variant_tasks(exp.variant)
        table = explainer.lookup(data.samples, data.items)
        for t in tasks:
            if t not in table.columns:
                table[t] = None
        table = table[["sample_id", *tasks]].sort_values("sample_id").reset_index(drop=True)
        missing = float(table[tasks].isna().any(axis=1).mean()) if len(table) else 1.0
        digest = hashlib.sha256(model_id.encode())
        digest.update(pd.util.hash_pandas_object(table.fillna("\x00"), index=False).to_numpy().tobytes())
        info = {"text_columns": tuple(tasks),
                "strip_prefixes": templates.strip_prefixes(exp.variant),
                "coverage": round(1.0 - missing, 4), "model_id": model_id, "fingerprint": digest.hexdigest()[:16],
                "explainer": explainer}
        return Explanations(table, info)

    def _import_cache(self) -> bool:
        """Import the spec's committed cache exports into the store, once per runner."""
        if self._imported or not self.spec.cache:
            return False
        self._imported = True
        from reasonrec.explain.store import ExplanationStore

        files = sorted({f for pattern in self.spec.cache for f in Path().glob(str(pattern))})
        added = 0
        for f in files:
            n = ExplanationStore(self.spec.store).import_parquet(f)
            added += n
            self.echo(f"imported {n:,} rows from {f} into {self.spec.store}")
        self._expl = {k: v for k, v in self._expl.items() if not isinstance(v, Exception)}
        return added > 0

    # --- planning ----------------------------------------------------------------------------

    def plan(self, only=None, seeds=None) -> list[PlannedRun]:
        exps = self.spec.experiments
        if only:
            unknown = [o for o in only if o not in {e.id for e in exps}]
            if unknown:
                raise ReasonrecError(f"--only: no experiment(s) {unknown} in spec '{self.spec.name}'; "
                                     f"have {[e.id for e in exps]}")
            exps = [e for e in exps if e.id in set(only)]
        runs = []
        for exp in exps:
            exp_seeds = list(seeds or exp.seeds or self.spec.seeds)
            if exp.kind == "llm_direct":   # deterministic: one run stands for every seed
                exp_seeds = exp_seeds[:1]
            for task in exp.tasks:
                if not exp.tune:
                    runs += [PlannedRun(exp, task, seed) for seed in exp_seeds]
                    continue
                # grid first; the final seeds' point is chosen when they come up. The grid seeds'
                # runs at the chosen point are grid runs, so they are not planned twice.
                gseeds = self.grid_seeds(exp)
                runs += [PlannedRun(exp, task, seed, point, grid=True) for point in exp.grid() for seed in gseeds]
                runs += [PlannedRun(exp, task, seed) for seed in exp_seeds if seed not in gseeds]
        return runs

    def grid_seeds(self, exp: Experiment) -> list[int]:
        """The seeds a tuned experiment's grid runs on: the spec's first `tune_seeds` (never --seeds,
        so the choice stays a property of the spec, not of an invocation). The choice reads their
        mean validation metric: one seed's luck never picks a point."""
        return list((exp.seeds or self.spec.seeds)[:self.spec.tune_seeds])

    def run_path(self, run: PlannedRun, digest: str) -> Path:
        return self.out / "runs" / run.exp.id / f"{run.label}-{digest}"

    def _digest(self, run: PlannedRun, expl: Explanations | None) -> str:
        return run_hash(run.setup.resolved(), run.task, run.seed, self.spec.version, self.dataset_fp,
                        expl.info["fingerprint"] if expl else None)

    def choose(self, exp: Experiment, task: str, expl: Explanations | None) -> tuple[dict | None, str]:
        """The grid point a tuned experiment's final runs use, from its finished grid runs (by
        their hashes: a grid run left over from other texts or another spec version never counts)."""
        key = (exp.id, task)
        if key not in self._chosen:
            points = exp.grid()
            metrics = []
            for point in points:
                per_seed = []
                for seed in self.grid_seeds(exp):
                    run = PlannedRun(exp, task, seed, point, grid=True)
                    f = _with(self.run_path(run, self._digest(run, expl)), ".json")
                    per_seed.append(json.loads(f.read_text())["metrics"] if f.is_file() else None)
                metrics.append(per_seed)
            best, note = choose_point(task, metrics)
            if best is None:   # not cached: a later invocation may have finished the grid
                self.echo(f"skip {exp.id} {task} final seeds: cannot choose a grid point ({note})")
                return None, note
            self._chosen[key] = (points[best], note)
            self.echo(f"      tuned {exp.id} {task}: {point_slug(points[best])} ({note})")
        return self._chosen[key]

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
                    expl = self.explanations(exp)
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

    def _execute(self, run: PlannedRun, expl: Explanations | None) -> tuple[dict, dict]:
        exp = run.setup
        data = self.slice(exp.users)
        fraction_seed = run.seed if exp.fraction_seed == "run" else int(exp.fraction_seed)
        samples = apply_train_fraction(data.samples, exp.train_fraction, fraction_seed)
        data = Prepared(samples, data.items, data.users, data.card)
        if exp.kind == "llm_direct":
            return self._direct(run, data, expl)
        return self._train(run, data, expl)

    def _train(self, run: PlannedRun, data: Prepared, expl: Explanations | None) -> tuple[dict, dict]:
        from reasonrec.estimator import Recommender
        from reasonrec.train.metrics import metrics_for

        exp = run.setup
        cfg = exp.config(run.task, run.seed)
        table = None
        if expl is not None:
            cfg = cfg.model_copy(update={"text_columns": tuple(expl.info["text_columns"]),
                                         "strip_prefixes": tuple(expl.info["strip_prefixes"])})
            table = expl.table
        rec = Recommender(cfg)
        encoder, enc_seconds, enc_cached = None, 0.0, False
        if rec.uses_text:
            encoder, enc_seconds, enc_cached = self._encoder(rec, data, table)
        started = time.perf_counter()
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
        record.update(self._common(run, data, expl))
        arrays = _arrays(test, pred)
        if attention is not None:
            arrays["attention"] = attention
            arrays["attention_names"] = np.array(names)
        return record, arrays

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
            out["explanations_info"] = {"llm": exp.llm, "model_id": expl.info["model_id"], "variant": exp.variant,
                                        "profiles": exp.profiles, "coverage": expl.info["coverage"],
                                        "fingerprint": expl.info["fingerprint"]}
        return out

    def _encoder(self, rec, data: Prepared, table: pd.DataFrame) -> tuple[object, float, bool]:
        """A fitted text encoder for this train/valid split, reused across seeds, tasks and
        experiments that read the same texts (in memory, and on disk under `encoder_cache`)."""
        from reasonrec.encode import get_encoder, load_encoder, save_encoder

        cfg = rec.config
        s = data.samples
        train_texts = [t for col in rec._texts(s[s["split"] == "train"], table) for t in col]
        valid_texts = [t for col in rec._texts(s[s["split"] == "valid"], table) for t in col]
        h = hashlib.sha256(json.dumps([cfg.encoder, cfg.encoder_options], sort_keys=True, default=str).encode())
        for group in (train_texts, valid_texts):
            h.update(b"\x01")
            for t in group:
                h.update(t.encode())
                h.update(b"\x00")
        key = h.hexdigest()[:20]
        if key in self._encoders:
            return self._encoders[key], 0.0, True
        disk = self.encoder_cache / key if self.encoder_cache else None
        if disk is not None and (disk / "encoder.json").is_file():
            enc, seconds, cached = load_encoder(disk), 0.0, True
        else:
            started = time.perf_counter()
            enc = get_encoder(cfg.encoder, **cfg.encoder_options)
            enc.fit(train_texts, valid_texts, progress=self.progress)
            seconds, cached = time.perf_counter() - started, False
            self.echo(f"      fitted the {cfg.encoder} encoder on {len(train_texts):,} texts in {seconds:.1f} s")
            if disk is not None:
                tmp = disk.parent / f".{key}.tmp"
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
                save_encoder(enc, tmp)
                shutil.rmtree(disk, ignore_errors=True)
                tmp.rename(disk)
        wrapped = _MemoEncoder(enc)
        self._encoders[key] = wrapped
        return wrapped, seconds, cached

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

    # --- outputs -----------------------------------------------------------------------------

    def collect(self) -> pd.DataFrame:
        """results.csv: one row per finished run whose resolved experiment matches the spec now; for a
        tuned experiment only the runs at the point its grid chose (grid runs go to grid.csv)."""
        self.dataset()
        current = {e.id: e for e in self.spec.experiments}
        # id -> {resolved experiment at a grid point (or untuned): that point}
        points = {e.id: {_canonical(e.at(p).resolved()): p for p in e.grid() or [None]} for e in current.values()}
        found: dict = {}     # (id, task) -> [(record, point)]
        for f in sorted((self.out / "runs").glob("*/*.json")):
            rec = json.loads(f.read_text())
            exp = current.get(rec.get("id"))
            if (exp is None or rec.get("resolved") not in points[exp.id] or rec.get("spec_version") != self.spec.version
                    or rec.get("dataset_fp") != self.dataset_fp or rec.get("task") not in exp.tasks):
                continue
            found.setdefault((exp.id, rec["task"]), []).append((rec, points[exp.id][rec["resolved"]]))
        rows, grid_rows = [], []
        for (exp_id, task), recs in found.items():
            exp = current[exp_id]
            recs.sort(key=lambda rp: rp[0].get("finished") or "")
            if not exp.tune:
                rows += [_row(rec, exp, self.spec) for rec, _ in recs]
                continue
            gseeds = self.grid_seeds(exp)
            at_point = {(_canonical(p), rec["seed"]): rec for rec, p in recs if rec["seed"] in gseeds}  # newest wins
            grid = exp.grid()
            best, _ = choose_point(task, [[(at_point.get((_canonical(p), s)) or {}).get("metrics") for s in gseeds]
                                          for p in grid])
            chosen = None if best is None else grid[best]
            grid_rows += [{**_row(rec, exp, self.spec, p), "grid_index": grid.index(p), "chosen": p == chosen}
                          for rec, p in recs if rec["seed"] in gseeds]
            rows += [_row(rec, exp, self.spec, p) for rec, p in recs if chosen is not None and p == chosen]
        self.out.mkdir(parents=True, exist_ok=True)
        frame = self._table(rows, ["id", "task", "seed"])
        frame.to_csv(self.out / "results.csv", index=False)
        tuning = self._table(grid_rows, ["id", "task", "tuned", "seed"], extra=["grid_index", "chosen"],
                             by=["grid_index", "seed"])
        if len(tuning) or (self.out / "grid.csv").is_file():
            tuning.to_csv(self.out / "grid.csv", index=False)
        return frame

    def _table(self, rows: list[dict], key: list[str], extra: list[str] = (), by: str = "seed") -> pd.DataFrame:
        """Rows in spec order, then task, then `by`; the newest run per `key` (an older copy may
        linger under another name)."""
        order = {e.id: i for i, e in enumerate(self.spec.experiments)}
        frame = pd.DataFrame(rows, columns=[*RESULT_COLUMNS, *extra])
        if len(frame):
            frame = (frame.sort_values("finished").drop_duplicates(key, keep="last")
                     .assign(_o=lambda d: d["id"].map(order)).sort_values(["_o", "task", *np.atleast_1d(by)])
                     .drop(columns="_o").reset_index(drop=True))
        return frame

    def _write_status(self, runs: list[PlannedRun]):
        f = self.out / "status.json"
        old = json.loads(f.read_text()) if f.is_file() else {}
        old.update(self.status)
        keep = {e.id for e in self.spec.experiments}
        f.write_text(json.dumps({k: v for k, v in old.items() if k in keep}, indent=1))

    def _write_spec_json(self):
        data = self.dataset()
        slices = {}
        for users in sorted({e.users for e in self.spec.experiments}, key=lambda u: -1 if u is None else u):
            part = self.slice(users)
            name = "all" if users is None else f"u{users}"
            sizes = part.samples["split"].value_counts()
            slices[name] = {"users": int(part.samples["user_id"].nunique()), "samples": int(len(part.samples)),
                            "test": int(sizes.get("test", 0)), "train": int(sizes.get("train", 0)),
                            "valid": int(sizes.get("valid", 0)),
                            "rule": "all users" if users is None else
                            f"first {users} users by sha1('{self.spec.subslice_seed}:<user_id>')"}
        card = {k: data.card.get(k) for k in ("dataset", "domain", "interactions", "users", "items", "rating_scale",
                                               "label_threshold", "label_rate", "split_sizes", "config")}
        out = {**self.spec.summary(), "card": card, "dataset_fp": self.dataset_fp, "slices": slices,
               "model_ids": dict(self._model_ids)}
        f = self.out / "spec.json"
        if f.is_file():   # keep model ids learned by earlier invocations
            old = json.loads(f.read_text())
            out["model_ids"] = {**old.get("model_ids", {}), **out["model_ids"]}
        f.write_text(json.dumps(out, indent=1, default=str))

    def primary(self) -> Experiment | None:
        """The Table 2 LR-Recsys: tag ours, 100% of the training data, reading text, on all users
        or else on the largest slice such a row has."""
        rows = [e for e in self.spec.experiments
                if e.tag == "ours" and e.train_fraction >= 1.0 and e.explanations == "text"]
        return max(rows, key=lambda e: float("inf") if e.users is None else e.users, default=None)

    def write_insights(self, n_items: int = 3, top: int = 10) -> dict | None:
        """Section 5.5.3 keywords for the most-explained test items, from the primary experiment's
        texts; recomputed only when those texts changed."""
        from reasonrec.bench.insights import insights_for, profiles_of, top_items

        exp = self.primary()
        if exp is None:
            return None
        f = self.out / "insights.json"
        old = json.loads(f.read_text()) if f.is_file() else None
        key = (exp.users, exp.llm, exp.variant, exp.profiles)
        if key not in self._expl and old is not None:
            return old                     # texts not loaded in this invocation: keep what is there
        try:
            expl = self.explanations(exp)
        except MissingExplanations:
            return old
        if old and old.get("fingerprint") == expl.info["fingerprint"] and old.get("top") == top:
            return old
        data = self.slice(exp.users)
        items = top_items(data.samples, expl.table, n_items, column=expl.info["text_columns"][0])
        profiles = profiles_of(expl.info["explainer"], data.items, items) if exp.profiles else None
        out = {"experiment": exp.id, "model_id": expl.info["model_id"], "llm": exp.llm, "variant": exp.variant,
               "fingerprint": expl.info["fingerprint"], "top": top, "slice": exp.slice_name,
               "method": "weighted log-odds with an informative Dirichlet prior (z-score) vs all other items' "
                         "explanations of the same kind; stopwords and the prompts' fixed words removed",
               "items": insights_for(data.samples, data.items, expl.table, items, top,
                                     strip_prefixes=expl.info["strip_prefixes"], profiles=profiles)}
        f.write_text(json.dumps(out, indent=1))
        return out

    def write_text_stats(self) -> pd.DataFrame | None:
        """texts.csv for the texts read in this invocation; rows of texts not read now are kept."""
        f = self.out / "texts.csv"
        keys = ["slice", "llm", "variant", "profiles", "column"]
        rows = []
        for (users, llm, variant, profiles), found in self._expl.items():
            if isinstance(found, Exception):
                continue
            for column in found.info["text_columns"]:
                rows.append({"slice": "all" if users is None else f"u{users}", "llm": llm, "variant": variant,
                             "profiles": profiles, "column": column, **text_stats(found.table[column])})
        if not rows:
            return None
        new = pd.DataFrame(rows)
        if f.is_file():
            old = pd.read_csv(f)
            fresh = set(map(tuple, new[keys].astype(str).to_numpy()))
            old = old[[tuple(r) not in fresh for r in old[keys].astype(str).to_numpy()]]
            new = pd.concat([old, new], ignore_index=True)
        new = new.sort_values(keys).reset_index(drop=True)
        new.to_csv(f, index=False)
        return new

    def explanation_plan(self, only=None) -> list[dict]:
        """Per text-reading experiment: slice, coverage in the store, and the command that fills it."""
        rows = []
        for exp in self.spec.experiments:
            if (only and exp.id not in only) or not exp.uses_text:
                continue
            from reasonrec.explain.templates import load_templates

            data = self.slice(exp.users)
            tasks = load_templates(data.card.get("domain", "movie")).variant_tasks(exp.variant)
            row = {"id": exp.id, "slice": exp.slice_name, "llm": exp.llm, "variant": exp.variant,
                   "profiles": exp.profiles, "samples": len(data.samples), "prompts": len(data.samples) * len(tasks)}
            try:
                row["coverage"] = self.explanations(exp).info["coverage"]
                row["ready"] = True
            except MissingExplanations as err:
                row["ready"] = False
                row["coverage"] = None
                row["message"] = err.short
            row["command"] = self.explain_command(exp)
            rows.append(row)
        return rows


# --- helpers -----------------------------------------------------------------------------------------

def text_stats(texts: pd.Series) -> dict:
    """Coverage and variety of one text column: distinct ratio, mean words, the commonest text's share."""
    present = texts.dropna().astype(str)
    counts = present.value_counts()
    n = len(present)
    return {"samples": len(texts), "with_text": n,
            "distinct_ratio": round(len(counts) / n, 4) if n else None,
            "mean_words": round(float(present.str.split().str.len().mean()), 2) if n else None,
            "top_share": round(float(counts.iloc[0]) / n, 4) if n else None,
            "top_text": counts.index[0] if n else None}


def _arrays(test: pd.DataFrame, pred) -> dict:
    return {"sample_id": test["sample_id"].to_numpy("int64"), "pred": np.asarray(pred, dtype="float32"),
            "label": test["label"].to_numpy("int8"), "rating": test["rating"].to_numpy("float32")}


def _with(path: Path, ext: str) -> Path:
    """`path` + `ext`; not with_suffix, which would eat a grid point's decimals (lr0.01+...)."""
    return path.parent / f"{path.name}{ext}"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


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


def point_slug(point: dict) -> str:
    """A grid point as a file-name part: {lr: 0.01, embed_dim: 16} -> lr0.01+embed_dim16."""
    return "+".join(f"{k}{v}" for k, v in point.items())


def choose_point(task: str, metrics: list[list[dict | None]]) -> tuple[int | None, str]:
    """Index of the grid point whose runs (one per tuning seed) have the best *mean validation*
    metric (classification: highest AUC; regression: lowest RMSE), and a note. Test metrics are
    never read: choosing on them would leak the test split into the model. Ties go to the first
    point in grid order; a missing run (None) means no choice yet, so a late grid run cannot
    silently change a reported point; a point with a non-finite seed is never chosen."""
    key, larger = ("valid_auc", True) if task == "classification" else ("valid_rmse", False)
    flat = [m for runs in metrics for m in runs]
    missing = sum(m is None for m in flat)
    if missing or not flat:
        return None, f"{missing} of {len(flat)} grid runs not finished"
    best, best_v = None, None
    for i, runs in enumerate(metrics):
        values = [m.get(key) for m in runs]
        if any(v is None or not np.isfinite(v) for v in values):
            continue
        v = float(np.mean(values))
        if best_v is None or (v > best_v if larger else v < best_v):
            best, best_v = i, float(v)
    if best is None:
        return None, f"no grid run has a finite {key}"
    return best, f"mean {key} {best_v:.4f} over {len(metrics[0])} seeds, best of {len(metrics)} grid points"


def _effective(exp: Experiment) -> dict:
    """The lr and embed_dim a run trained with (spec value, else the library default)."""
    if exp.kind != "train":
        return {"lr": None, "embed_dim": None}
    cfg = exp.config("classification")
    return {"lr": cfg.train.lr, "embed_dim": cfg.embed_dim}


def _row(rec: dict, exp: Experiment, spec: Spec, point: dict | None = None) -> dict:
    info = rec.get("explanations_info") or {}
    row = {"spec": spec.name, "id": exp.id, "label": exp.label, "tag": exp.tag, "kind": exp.kind, "model": exp.model,
           "task": rec["task"], "seed": rec["seed"], "slice": exp.slice_name, "users": exp.users,
           "n_users": rec.get("n_users"), "train_fraction": exp.train_fraction, "explanations":
           "llm_direct" if exp.kind == "llm_direct" else exp.explanations,
           "encoder": exp.encoder if exp.explanations == "text" and exp.kind == "train" else None,
           "variant": info.get("variant"), "profiles": info.get("profiles"), "llm": info.get("llm"),
           "llm_name": spec.llm_name(info["llm"]) if info.get("llm") else None, "model_id": info.get("model_id"),
           "coverage": info.get("coverage"), "n_train": rec.get("n_train"), "n_valid": rec.get("n_valid"),
           "n_test": rec.get("n_test"), "compare_to": exp.compare_to or None, "hash": rec["hash"],
           "predictions": rec.get("predictions"), "finished": rec.get("finished")}
    for m in METRIC_NAMES:
        row[f"test_{m}"] = rec["metrics"].get(f"test_{m}")
        row[f"valid_{m}"] = rec["metrics"].get(f"valid_{m}")
    for k in ("fit_seconds", "seconds_per_epoch", "best_epoch", "epochs_run", "encoder_seconds", "encoder_cached"):
        row[k] = rec.get(k)
    row["tuned"] = json.dumps(point) if point else None
    row.update(_effective(exp.at(point)))
    return row
