"""What a spec's finished runs add up to: results.csv (and grid.csv for tuned experiments) from the
run files, status.json, spec.json and insights.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from reasonrec.bench.plan import PlannedRun, _canonical, choose_point
from reasonrec.bench.spec import Experiment, Spec
from reasonrec.bench.texts import MissingExplanations


METRIC_NAMES = ("auc", "logloss", "rmse", "mae", "rmse_norm", "mae_norm")
RESULT_COLUMNS = ["spec", "id", "label", "tag", "kind", "model", "task", "seed", "slice", "users", "n_users",
                  "train_fraction", "explanations", "encoder", "variant", "profiles", "llm", "llm_name", "model_id",
                  "coverage", "n_train", "n_valid", "n_test", *[f"test_{m}" for m in METRIC_NAMES],
                  *[f"valid_{m}" for m in METRIC_NAMES], "tuned", "lr", "embed_dim", "fit_seconds",
                  "seconds_per_epoch", "best_epoch", "epochs_run", "encoder_seconds", "encoder_cached",
                  "control", "q", "probe_auc", "probe_lift", "compare_to", "hash", "predictions", "finished"]


class Collector:
    """The runner's outputs (mixed into BenchRunner)."""

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
                if e.tag == "ours" and e.train_fraction >= 1.0 and e.explanations == "text" and not e.control]
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
    row["control"], row["q"] = exp.control, exp.q
    row["probe_auc"], row["probe_lift"] = rec.get("probe_auc"), rec.get("probe_lift")
    row["tuned"] = json.dumps(point) if point else None
    row.update(_effective(exp.at(point)))
    return row