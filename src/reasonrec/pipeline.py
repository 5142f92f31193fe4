"""Glue between the stages: explanations from the store for a prepared dataset, and seeded runs.

The store is the only source of explanation text here: nothing in this module calls an LLM, so
training and benchmarks never pay for generation (run `reasonrec explain` for what is missing).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from reasonrec.data.prepare import Prepared
from reasonrec.errors import ReasonrecError
from reasonrec.explain import MAX_MISSING

DEFAULT_STORE = Path("artifacts/store/explanations.sqlite")


def explainer_for(data: Prepared, llm: str = "embedded", variant: str = "contrastive", profiles: bool = True,
                  store: str | Path = DEFAULT_STORE, backend=None, **config):
    from reasonrec.explain.generate import ExplainConfig, Explainer
    from reasonrec.explain.store import ExplanationStore
    from reasonrec.explain.templates import load_templates
    from reasonrec.llm import get_backend

    return Explainer(backend or get_backend(llm), ExplanationStore(store), load_templates(data.card.get("domain", "movie")),
                     ExplainConfig(variant=variant, profiles=profiles, **config))


def store_reader(data: Prepared, llm: str = "embedded", variant: str = "contrastive", profiles: bool = True,
                 store: str | Path = DEFAULT_STORE):
    """An Explainer for looking texts up: no weights are loaded, no server is contacted."""
    from reasonrec.llm import model_id_of
    from reasonrec.llm.base import ModelIdOnly

    return explainer_for(data, llm, variant, profiles, store, backend=ModelIdOnly(model_id_of(llm)))


def load_explanations(data: Prepared, llm: str = "embedded", variant: str = "contrastive", profiles: bool = True,
                      store: str | Path = DEFAULT_STORE, max_missing: float = MAX_MISSING) -> tuple[pd.DataFrame, dict]:
    """The variant's texts for every sample, plus what the recommender needs to read them.

    Returns (table with sample_id + one column per task, {"text_columns", "strip_prefixes",
    "coverage"}). Raises when more than `max_missing` of the samples lack a text (see MAX_MISSING)."""
    explainer = store_reader(data, llm, variant, profiles, store)
    tasks = explainer.templates.variant_tasks(variant)
    table = explainer.lookup(data.samples, data.items)
    lacking = int(table[tasks].isna().any(axis=1).sum())
    missing = lacking / len(table) if len(table) else 1.0
    if missing > max_missing:
        raise ReasonrecError(
            f"{lacking:,} of {len(table):,} samples ({missing:.2%}) have no '{variant}' explanations from "
            f"{explainer.model_id} in {store} (tolerated: {max_missing:.2%}); generate them with "
            f"`reasonrec explain --variant {variant}{'' if profiles else ' --no-profiles'}` (or import the "
            f"committed cache with `reasonrec cache import`)")
    info = {"text_columns": tuple(tasks),
            "strip_prefixes": explainer.templates.strip_prefixes(variant),
            "coverage": round(1.0 - float(missing), 4), "model_id": explainer.model_id}
    return table, info


def run_seeds(data: Prepared, config, seeds=(0, 1, 2, 3, 4), explanations: pd.DataFrame | None = None,
              out: str | Path | None = None, progress: bool = False, keep_predictions: bool = False):
    """Fit one model per seed; score validation and test with the early-stopped weights.

    Returns a DataFrame (one row per seed) and, if asked, the test predictions per seed."""
    from reasonrec.estimator import Recommender
    from reasonrec.train import distributed

    rows, preds = [], {}
    test = data.samples[data.samples["split"] == "test"]
    for seed in seeds:
        cfg = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
        started = time.perf_counter()
        rec = Recommender(cfg).fit(data, explanations, progress=progress)
        row = {"seed": seed, "model": cfg.model, "task": cfg.task, "explanations": cfg.explanations,
               "encoder": cfg.encoder if cfg.explanations == "text" else None,
               **{f"test_{k}": v for k, v in rec.evaluate(data, explanations, "test").items()},
               **{f"valid_{k}": v for k, v in rec.fit_result.best_valid.items()},
               "best_epoch": rec.fit_result.best_epoch, "epochs_run": rec.fit_result.epochs_run,
               "dead_units": rec.fit_result.dead_units, "constant_output": rec.fit_result.constant_output,
               "encoder_params": getattr(rec.encoder, "n_params", None),
               "seconds_per_epoch": round(rec.fit_result.seconds_per_epoch, 3),
               "encoder_seconds": round(getattr(rec, "encoder_seconds", 0.0), 2),
               "fit_seconds": round(time.perf_counter() - started, 2)}
        rows.append(row)
        if keep_predictions:
            preds[seed] = rec.predict(test, explanations)
        if out is not None and distributed.is_leader():
            rec.save(Path(out) / f"seed-{seed}")
    frame = pd.DataFrame(rows)
    return (frame, preds) if keep_predictions else frame


def mean_std(frame: pd.DataFrame, metrics: list[str]) -> dict:
    return {m: (float(frame[m].mean()), float(frame[m].std(ddof=1)) if len(frame) > 1 else 0.0)
            for m in metrics if m in frame}


def paired_test(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired t-test across seeds (same seeds, same data) and the mean difference."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return {"diff": float(np.mean(a - b)), "t": float("nan"), "p": float("nan")}
    t, p = stats.ttest_rel(a, b)
    return {"diff": float(np.mean(a - b)), "t": float(t), "p": float(p)}
