"""Which runs a spec asks for: experiments x tasks x seeds (x tune grid points), each run's hash
and file name, and the grid point a tuned experiment's final seeds use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reasonrec.bench.spec import Experiment, run_hash
from reasonrec.bench.texts import Explanations
from reasonrec.errors import ReasonrecError


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


class Planner:
    """Planning and run identity (mixed into BenchRunner)."""

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


def _with(path: Path, ext: str) -> Path:
    """`path` + `ext`; not with_suffix, which would eat a grid point's decimals (lr0.01+...)."""
    return path.parent / f"{path.name}{ext}"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


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
