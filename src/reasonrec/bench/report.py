"""`reasonrec bench report`: REPORT.md + PNG figures from a spec's results alone (no training).

Reads `benchmarks/results/<spec>/` (results.csv, spec.json, status.json, insights.json, texts.csv and the
runs' .npz predictions) and writes `benchmarks/<spec>/REPORT.md` and `benchmarks/<spec>/figures/`.

Significance: per-seed paired t-tests (one-sample t against a deterministic row such as
LLM-direct) decide the stars and the claims; DeLong's test on the seed-averaged test predictions
is reported beside every AUC comparison. *** p < 0.01, ** p < 0.05. Every comparison is made on
the samples both rows share (rows on a user sub-slice are compared with the reference run on the
same sub-slice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reasonrec.bench import stats
from reasonrec.bench.stats import METRICS

SHOWN = [("rmse", "RMSE ↓"), ("mae", "MAE ↓"), ("rmse_norm", "RMSE/4 ↓"), ("mae_norm", "MAE/4 ↓"),
         ("auc", "AUC ↑"), ("logloss", "LogLoss ↓")]
SHORT = [("rmse", "RMSE ↓"), ("mae", "MAE ↓"), ("auc", "AUC ↑"), ("logloss", "LogLoss ↓")]
CLAIM_METRICS = ("auc", "logloss", "rmse", "mae")
TABLE_TAGS = {
    "Table 4": ("Generator choice, profiles, summaries and LLM-direct (paper Table 4)",
                ["generator", "no_profiles", "summary", "llm_direct"]),
    "Table 5": ("Alternative generation tasks (paper Table 5)", ["aspects", "positive_only", "general"]),
    "Table 6": ("Ablations and robustness (paper Table 6)",
                ["free_vectors", "no_autoencoder", "alt_prompt", "ncf_backbone"]),
}


@dataclass
class Comparison:
    metric: str
    diff: float
    p: float
    test: str
    n: int
    delong_p: float = float("nan")
    delong_diff: float = float("nan")

    @property
    def sign(self) -> int:
        p = self.p
        if not np.isfinite(p) and self.metric == "auc":
            p = self.delong_p           # one seed: DeLong is the only test there is
        return stats.sign(self.diff, p, METRICS[self.metric][1])

    def text(self) -> str:
        p = f"p={_p(self.p)}" if np.isfinite(self.p) else "no seed test"
        extra = f", DeLong p={_p(self.delong_p)}" if np.isfinite(self.delong_p) else ""
        return f"{METRIC_LABEL[self.metric]} {self.diff:+.4f} ({p}{extra})"


METRIC_LABEL = {"auc": "AUC", "logloss": "LogLoss", "rmse": "RMSE", "mae": "MAE", "rmse_norm": "RMSE/4",
                "mae_norm": "MAE/4"}


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


class Results:
    def __init__(self, results_dir: Path):
        self.dir = Path(results_dir)
        f = self.dir / "results.csv"
        if not f.is_file():
            from reasonrec.errors import ReasonrecError

            raise ReasonrecError(f"no results at {f}; run `reasonrec bench run SPEC.yaml` first")
        self.df = pd.read_csv(f)
        self.spec = _read_json(self.dir / "spec.json") or {}
        self.status = _read_json(self.dir / "status.json") or {}
        self.insights = _read_json(self.dir / "insights.json")
        self.texts = pd.read_csv(self.dir / "texts.csv") if (self.dir / "texts.csv").is_file() else None
        self.meta = {e["id"]: e for e in self.spec.get("experiments", [])}
        for exp_id, g in self.df.groupby("id", sort=False):   # results.csv is the fallback for ids
            self.meta.setdefault(exp_id, {"id": exp_id, "label": g["label"].iloc[0], "tag": g["tag"].iloc[0],
                                          "users": None if pd.isna(g["users"].iloc[0]) else int(g["users"].iloc[0]),
                                          "train_fraction": float(g["train_fraction"].iloc[0]),
                                          "compare_to": g["compare_to"].iloc[0] if "compare_to" in g else None,
                                          "model": g["model"].iloc[0], "explanations": g["explanations"].iloc[0]})
        self.grid = pd.read_csv(self.dir / "grid.csv") if (self.dir / "grid.csv").is_file() else None
        self._preds: dict = {}
        scale = (self.spec.get("card") or {}).get("rating_scale") or [1.0, 5.0]
        self.width = float(scale[1]) - float(scale[0])

    # --- lookups ---------------------------------------------------------------------------

    def has(self, exp_id: str, task: str | None = None) -> bool:
        d = self.df[self.df["id"] == exp_id]
        return len(d) > 0 if task is None else bool((d["task"] == task).any())

    def ids(self, tag: str | None = None, users="any", full_data: bool | None = None) -> list[str]:
        out = []
        for exp_id, e in self.meta.items():
            if tag is not None and e.get("tag") != tag:
                continue
            if users != "any" and _users(e) != users:
                continue
            if full_data is not None and (float(e.get("train_fraction", 1.0)) >= 1.0) != full_data:
                continue
            out.append(exp_id)
        return out

    def label(self, exp_id: str) -> str:
        return str(self.meta.get(exp_id, {}).get("label") or exp_id)

    def values(self, exp_id: str, metric: str) -> pd.Series:
        task = METRICS[metric][0]
        d = self.df[(self.df["id"] == exp_id) & (self.df["task"] == task)]
        return d.set_index("seed")[f"test_{metric}"].astype(float).dropna()

    def mean_std(self, exp_id: str, metric: str) -> tuple[float, float, int]:
        v = self.values(exp_id, metric)
        if not len(v):
            return float("nan"), float("nan"), 0
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)

    def hparams(self, exp_id: str, task: str | None = None) -> str:
        """The lr and embed_dim an experiment's runs trained with, plus whatever its grid chose."""
        d = self.df[(self.df["id"] == exp_id) & ((self.df["task"] == task) if task else True)]
        if not len(d) or "lr" not in d or d["lr"].isna().all():
            return "—"
        values = {"lr": d["lr"].iloc[0], "embed_dim": d["embed_dim"].iloc[0]}
        tuned = d["tuned"].dropna()
        if len(tuned):
            values.update(json.loads(tuned.iloc[0]))
        return ", ".join(f"{k} {float(v):g}" for k, v in values.items()) + (" (tuned)" if len(tuned) else "")

    def seconds_per_epoch(self, exp_id: str, task: str) -> float:
        d = self.df[(self.df["id"] == exp_id) & (self.df["task"] == task)]
        return float(d["seconds_per_epoch"].mean()) if len(d) else float("nan")

    def explanation_pairs(self) -> list[tuple[str, str]]:
        """(without, with) experiment pairs: the same trained model on the same slice and training
        data, once without explanations and once reading them (text or free vectors)."""
        def key(e):
            return e.get("model"), _users(e), float(e.get("train_fraction", 1.0))

        trained = [e for e in self.meta.values() if e.get("kind", "train") == "train" and e.get("model")]
        plain = {key(e): e["id"] for e in trained if e.get("explanations") == "none"}
        return [(plain[key(e)], e["id"]) for e in trained
                if e.get("explanations") in ("text", "free") and key(e) in plain]

    def row_info(self, exp_id: str) -> dict:
        d = self.df[self.df["id"] == exp_id]
        e = self.meta.get(exp_id, {})
        slice_name = "all" if _users(e) is None else f"u{_users(e)}"
        frac = float(e.get("train_fraction", 1.0))
        llm = d["llm_name"].dropna().iloc[0] if len(d) and d["llm_name"].notna().any() else "—"
        seeds = sorted(d["seed"].unique().tolist()) if len(d) else []
        return {"slice": slice_name + (f", train {frac:.0%}" if frac < 1 else ""), "llm": llm,
                "seeds": _seed_text(seeds), "n_test": int(d["n_test"].max()) if len(d) else 0}

    def predictions(self, exp_id: str, task: str) -> pd.DataFrame | None:
        """Seed-averaged test predictions (sample_id, pred, label, rating) and the mean attention
        shares when the runs stored them."""
        key = (exp_id, task)
        if key not in self._preds:
            d = self.df[(self.df["id"] == exp_id) & (self.df["task"] == task)]
            frames, attn, names = [], [], None
            for rel in d["predictions"].dropna():
                f = self.dir / rel
                if not f.is_file():
                    continue
                z = np.load(f, allow_pickle=False)
                frames.append(pd.DataFrame({"sample_id": z["sample_id"], "pred": z["pred"].astype(float),
                                            "label": z["label"], "rating": z["rating"].astype(float)}))
                if "attention" in z:
                    names = [str(n) for n in z["attention_names"]]
                    a = pd.DataFrame(z["attention"].astype(float), columns=names)
                    a.insert(0, "sample_id", z["sample_id"])
                    attn.append(a)
            if not frames:
                self._preds[key] = None
            else:
                p = pd.concat(frames).groupby("sample_id", sort=True).agg(
                    pred=("pred", "mean"), label=("label", "first"), rating=("rating", "first"),
                    n=("pred", "size")).reset_index()
                if attn:
                    a = pd.concat(attn).groupby("sample_id", sort=True).mean().reset_index()
                    p = p.merge(a, on="sample_id", how="left")
                    p.attrs["attention_names"] = names
                self._preds[key] = p
        return self._preds[key]

    # --- comparisons -----------------------------------------------------------------------

    def compare(self, a: str, b: str, metric: str) -> Comparison | None:
        va, vb = self.values(a, metric), self.values(b, metric)
        if not len(va) or not len(vb):
            return None
        if len(vb) == 1 and len(va) > 1:
            res = stats.compare_seeds(va.to_numpy(), vb.to_numpy())
        elif len(va) == 1 and len(vb) > 1:
            res = stats.compare_seeds(vb.to_numpy(), va.to_numpy())
            res["diff"] = -res["diff"]
        else:
            common = va.index.intersection(vb.index)
            res = stats.compare_seeds(va.loc[common].to_numpy(), vb.loc[common].to_numpy()) if len(common) else \
                stats.compare_seeds(va.to_numpy()[:1], vb.to_numpy()[:1])
        out = Comparison(metric, res["diff"], res["p"], res["test"], res["n"])
        if metric == "auc":
            dl = self.delong(a, b)
            if dl:
                out.delong_p, out.delong_diff = dl["p"], dl["diff"]
        return out

    def delong(self, a: str, b: str) -> dict | None:
        pa, pb = self.predictions(a, "classification"), self.predictions(b, "classification")
        if pa is None or pb is None:
            return None
        m = pa[["sample_id", "pred", "label"]].merge(pb[["sample_id", "pred"]], on="sample_id", suffixes=("_a", "_b"))
        if len(m) < 3 or m["label"].nunique() < 2:
            return None
        res = stats.delong_test(m["label"].to_numpy(), m["pred_a"].to_numpy(), m["pred_b"].to_numpy())
        res["n"] = len(m)
        return res

    def reference(self, exp_id: str) -> str | None:
        e = self.meta.get(exp_id, {})
        if e.get("compare_to") and isinstance(e["compare_to"], str):
            return e["compare_to"]
        users = _users(e)
        default_llm = self.spec.get("llm")
        cands = [i for i in self.ids("ours", users=users, full_data=True) if i != exp_id]
        cands.sort(key=lambda i: (self.meta[i].get("explanations") != "text", self.meta[i].get("llm") != default_llm,
                                  self.meta[i].get("variant") != "contrastive", not self.meta[i].get("profiles", True)))
        return cands[0] if cands else None

    def best_baseline(self, metric: str, users=None) -> str | None:
        larger = METRICS[metric][1]
        best, best_v = None, None
        for i in self.ids("baseline", users=users, full_data=True):
            m, _, n = self.mean_std(i, metric)
            if n and np.isfinite(m) and (best_v is None or (m > best_v if larger else m < best_v)):
                best, best_v = i, m
        return best


def _users(e: dict):
    u = e.get("users")
    if u is None or (isinstance(u, float) and np.isnan(u)):
        return None
    return int(u)


def _seed_text(seeds: list) -> str:
    if not seeds:
        return "—"
    seeds = [int(s) for s in seeds]
    if seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{len(seeds)} ({seeds[0]}–{seeds[-1]})"
    return f"{len(seeds)} ({', '.join(map(str, seeds))})"


def _grid_text(tune: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in tune.items()) + "}"


def _read_json(f: Path):
    return json.loads(f.read_text()) if f.is_file() else None


def _cell(mean: float, std: float, n: int, mark: str = "") -> str:
    if not n or not np.isfinite(mean):
        return "—"
    return f"{mean:.4f} ± {std:.4f}{mark}" if n > 1 else f"{mean:.4f}{mark}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --- the report --------------------------------------------------------------------------------------

class Report:
    def __init__(self, results: Results, report_dir: Path):
        self.r = results
        self.dir = Path(report_dir)
        self.fig_dir = self.dir / "figures"
        self.claims: list[tuple[str, str, str]] = []    # (claim, verdict, evidence)
        self.figures: list[str] = []
        self.facts: dict = {}
        self.main = self._main_slice()

    # -- helpers --

    def _main_slice(self):
        """The slice of the headline comparisons (Table 3, figures, claims): all users when an
        LR-Recsys row ran on them, else the largest sub-slice an LR-Recsys row ran on."""
        sizes = {_users(self.r.meta[i]) for i in self.r.ids("ours") if self.r.has(i)}
        if not sizes or None in sizes:
            return None
        return max(sizes)

    def caption(self, ids: list[str]) -> str:
        spec = self.r.spec
        card = spec.get("card") or {}
        infos = [self.r.row_info(i) for i in ids if self.r.has(i)]
        slices = sorted({i["slice"] for i in infos})
        llms = sorted({i["llm"] for i in infos if i["llm"] != "—"})
        seeds = sorted({i["seeds"] for i in infos})
        ds = f"{card.get('dataset', '?')} (`{spec.get('dataset_dir', '?')}`)"
        return (f"*Dataset: {ds}; slice: {' / '.join(slices) or '—'}; LLM: {' / '.join(llms) or 'none'}; "
                f"seeds: {' / '.join(seeds) or '—'}.*")

    def metric_row(self, exp_id: str, label: str, metrics, marks: dict | None = None) -> list[str]:
        info = self.r.row_info(exp_id)
        cells = [label, info["slice"], info["llm"], info["seeds"]]
        for m, _ in metrics:
            mean, std, n = self.r.mean_std(exp_id, m)
            cells.append(_cell(mean, std, n, (marks or {}).get(m, "")))
        return cells

    def not_run(self, ids: list[str]) -> list[str]:
        lines = []
        for i in ids:
            if self.r.has(i):
                continue
            st = self.r.status.get(i, {})
            msg = (st.get("message") or "not run yet").splitlines()[0]
            cmd = st.get("command")
            lines.append(f"- `{i}` ({self.r.label(i)}): {st.get('state', 'not run')} — {msg}"
                         + (f"; generate with `{cmd}`" if cmd else ""))
        return lines

    def claim(self, text: str, verdict: str, evidence: str):
        self.claims.append((text, verdict, evidence))

    def compare_all(self, a: str, b: str, metrics=CLAIM_METRICS) -> list[Comparison]:
        out = []
        for m in metrics:
            c = self.r.compare(a, b, m)
            if c is not None and np.isfinite(c.diff):
                out.append(c)
        return out

    def claim_better(self, text: str, a: str | None, b: str | None):
        if not a or not b or not self.r.has(a) or not self.r.has(b):
            self.claim(text, "inconclusive", f"missing results ({a or '?'} vs {b or '?'})")
            return
        comps = self.compare_all(a, b)
        self.claim(text, stats.verdict_better([c.sign for c in comps]),
                   f"{self.r.label(a)} vs {self.r.label(b)}: " + "; ".join(c.text() for c in comps))

    def claim_beats_best(self, text: str, exp_id: str):
        """`exp_id` against the best baseline of its own slice, metric by metric."""
        users = _users(self.r.meta.get(exp_id, {}))
        if not self.r.has(exp_id):
            self.claim(text, "inconclusive", f"missing results ({exp_id})")
            return
        comps, against = [], []
        for m in CLAIM_METRICS:
            b = self.r.best_baseline(m, users)
            c = self.r.compare(exp_id, b, m) if b else None
            if c is not None and np.isfinite(c.diff):
                comps.append(c)
                against.append(f"{c.text()} vs {self.r.label(b)}")
        self.claim(text, stats.verdict_better([c.sign for c in comps]), "; ".join(against) or "no baselines")

    # -- sections --

    def header(self) -> str:
        spec = self.r.spec
        card = spec.get("card") or {}
        df = self.r.df
        lines = [f"# Benchmark report: `{spec.get('name', self.r.dir.name)}`", ""]
        if spec.get("description"):
            lines += [spec["description"].strip(), ""]
        lines += [
            f"Generated by `reasonrec bench report --spec {spec.get('name', self.r.dir.name)}` from `{self.r.dir}` only "
            f"(results.csv, the runs' .npz predictions, spec.json, status.json, insights.json); nothing is trained. "
            f"Runs: {len(df)} rows from {df['id'].nunique() if len(df) else 0} experiments.", "",
            f"- **Dataset**: {card.get('dataset')} prepared as `{spec.get('dataset_dir')}`: "
            f"{card.get('interactions', 0):,} samples, {card.get('users', 0):,} users, {card.get('items', 0):,} items, "
            f"splits {card.get('split_sizes')}, label = rating ≥ {card.get('label_threshold')}.",
            "- **LLMs**: " + ", ".join(f"`{k}` = {spec.get('llm_names', {}).get(k, k)}"
                                        + (f" (model id `{v}`)" if v else "")
                                        for k, v in {**{spec.get('llm'): None}, **spec.get('model_ids', {})}.items()
                                        if k),
            f"- **Seeds** (default): {_seed_text(spec.get('seeds', []))}; tasks: {', '.join(spec.get('tasks', []))}.",
            "- **Tests**: per-seed paired t-test (one-sample t against a deterministic row), DeLong's test on the "
            "seed-averaged test predictions for AUC. *** p < 0.01, ** p < 0.05. † marks the best baseline.",
            "- RMSE/MAE are on the 1–5 rating scale; RMSE/4 and MAE/4 divide by the scale width (the scale of the "
            "paper's tables). LLM-direct rows have no LogLoss (a rating is not a probability).",
            *self.tuning_note(), ""]
        slices = spec.get("slices") or {}
        if slices:
            lines += ["## Slices", "", _md_table(["slice", "users", "samples", "train", "valid", "test", "rule"],
                      [[k, v["users"], v["samples"], v["train"], v["valid"], v["test"], v["rule"]]
                       for k, v in slices.items()]), "",
                      "Rows on a sub-slice are trained and tested on those users only; every comparison uses the "
                      "reference row of the same slice.", ""]
        return "\n".join(lines)

    def tuning_note(self) -> list[str]:
        grids = {_grid_text(e["tune"]) for e in self.r.spec.get("experiments", []) if e.get("tune")}
        if not grids:
            return []
        n = 0 if self.r.grid is None else len(self.r.grid)
        k = self.r.spec.get("tune_seeds") or "the first"
        return [f"- **Tuning**: per experiment and task, the first {k} seeds run at every point of the grid "
                f"{' / '.join(sorted(grids))}; the point with the highest mean validation AUC (classification) or "
                f"the lowest mean validation RMSE (regression) is used for every seed (ties: the first point). Test "
                f"metrics never enter the choice. The chosen values are in the appendix (and the with/without "
                f"explanations table); the {n} grid runs are in `grid.csv`, not in the tables."]

    def explanations_table(self) -> str:
        """Every model without and with explanations: means, differences and paired t-tests per metric."""
        pairs = [(a, b) for a, b in self.r.explanation_pairs() if self.r.has(a) and self.r.has(b)]
        if not pairs:
            return ""
        lines = ["## With vs without explanations", "",
                 "Each model trained once without explanations and once reading them (text: the LLM's "
                 "explanations through the autoencoder; free vectors: learnable vectors in their place), on the "
                 "same users, data and seeds. Δ = with − without; p: paired t-test across seeds "
                 "(*** p < 0.01, ** p < 0.05). Hyper-parameters and seconds per epoch: without → with.", ""]
        for task, metrics in (("classification", ("auc", "logloss")), ("regression", ("rmse", "mae"))):
            rows, shown = [], []
            for without, with_ in pairs:
                if not (self.r.has(without, task) and self.r.has(with_, task)):
                    continue
                meta = self.r.meta[with_]
                kind = "free vectors" if meta.get("explanations") == "free" else f"text ({meta.get('encoder') or 'autoencoder'})"
                cells = [self.r.label(without), kind, self.r.row_info(with_)["seeds"]]
                for m in metrics:
                    c = self.r.compare(with_, without, m)
                    cells += [_cell(*self.r.mean_std(without, m)), _cell(*self.r.mean_std(with_, m)),
                              f"{c.diff:+.4f}{stats.stars(c.p)}" if c else "—", _p(c.p) if c else "—"]
                cells += [f"{self.r.hparams(without, task)} → {self.r.hparams(with_, task)}",
                          f"{self.r.seconds_per_epoch(without, task):.2f} → {self.r.seconds_per_epoch(with_, task):.2f}"]
                rows.append(cells)
                shown += [without, with_]
            if not rows:
                continue
            header = ["Model", "Explanations", "Seeds"]
            for m in metrics:
                name = METRIC_LABEL[m] + (" ↑" if METRICS[m][1] else " ↓")
                header += [f"{name} without", f"{name} with", f"Δ {METRIC_LABEL[m]}", "p"]
            lines += [f"**{task}**", "", self.caption(shown), "",
                      _md_table(header + ["lr, embed_dim", "s / epoch"], rows), ""]
        return "\n".join(lines)

    def texts_table(self) -> str:
        """Coverage and variety of every text set the rows read."""
        t = self.r.texts
        if t is None or t.empty:
            return ""
        names = self.r.spec.get("llm_names", {})
        rows = [[str(r.slice), names.get(r.llm, r.llm), str(r.variant), "yes" if r.profiles else "no", str(r.column),
                 f"{r.with_text:,} / {r.samples:,}", f"{r.distinct_ratio:.3f}", f"{r.mean_words:.1f}",
                 f"{r.top_share:.1%}: \"{str(r.top_text)[:90].replace('|', '/')}\""]
                for r in t.itertuples()]
        return "\n".join(["## Explanation texts", "",
                          "What each text set the rows read looks like: samples with a usable text, the share of "
                          "distinct texts (1 = every sample its own sentence), mean words, and the most common "
                          "text with its share.", "",
                          _md_table(["Slice", "LLM", "Variant", "Profiles", "Text", "Samples with text",
                                     "Distinct", "Words", "Most common"], rows), ""])

    def table2(self) -> str:
        out = []
        for users in self._slices_with("baseline"):
            ours = self._primary(users)
            base = self.r.ids("baseline", users=users, full_data=True)
            base = [b for b in base if self.r.has(b)]
            if not base:
                continue
            name = "all users" if users is None else f"sub-slice u{users}"
            best = {m: self.r.best_baseline(m, users) for m, _ in SHOWN}
            rows = []
            if ours and self.r.has(ours):
                rows.append(self.metric_row(ours, f"**{self.r.label(ours)}**", SHOWN))
                imp = ["% Improved", "", "", ""]
                sig = []
                for m, _ in SHOWN:
                    b = best[m]
                    om, _, on = self.r.mean_std(ours, m)
                    if not b or not on:
                        imp.append("—")
                        continue
                    bm, _, _ = self.r.mean_std(b, m)
                    c = self.r.compare(ours, b, m)
                    imp.append(f"{stats.pct_improvement(om, bm, METRICS[m][1]):+.2f}%{stats.stars(c.p if c else np.nan)}")
                    if c:
                        sig.append([METRIC_LABEL[m], self.r.label(b), f"{om:.4f}", f"{bm:.4f}", f"{c.diff:+.4f}",
                                    c.test, _p(c.p), _p(c.delong_p) if m == "auc" else ""])
                rows.append(imp)
            else:
                sig = []
            base.sort(key=lambda i: -np.nan_to_num(self.r.mean_std(i, "auc")[0], nan=-1))
            for b in base:
                marks = {m: "†" for m in best if best[m] == b}
                rows.append(self.metric_row(b, self.r.label(b), SHOWN, marks))
            out += [f"## Table 2 — LR-Recsys vs the model zoo ({name})", "", self.caption(([ours] if ours else []) + base),
                    "", _md_table(["Model", "Slice", "LLM", "Seeds", *[h for _, h in SHOWN]], rows), ""]
            if sig:
                out += ["Significance against the best baseline per metric:", "",
                        _md_table(["metric", "best baseline", "ours", "baseline", "Δ (ours − base)", "seed test",
                                   "p", "DeLong p"], sig), ""]
        if not out:
            out = ["## Table 2 — LR-Recsys vs the model zoo", "", "No baseline results yet.", ""]
        return "\n".join(out)

    def table3(self) -> str:
        primary = self._primary(self.main)
        fr = [i for i in self.r.ids("ours", users=self.main, full_data=False) if self.r.has(i)]
        fr.sort(key=lambda i: -float(self.r.meta[i].get("train_fraction", 1)))
        lines = ["## Table 3 — learning efficiency: LR-Recsys on part of the training data", ""]
        if not fr:
            return "\n".join(lines + ["No reduced-training-data runs yet.", ""] +
                             self.not_run(self.r.ids("ours", users=self.main, full_data=False)) + [""])
        ids = ([primary] if primary and self.r.has(primary) else []) + fr
        rows = []
        for i in ids:
            rows.append(self.metric_row(i, f"{self.r.label(i)} ({float(self.r.meta[i].get('train_fraction', 1)):.0%})",
                                        SHORT) + [self._vs_best(i, self.main)])
        best = {m: self.r.best_baseline(m, self.main) for m, _ in SHORT}
        if any(best.values()):
            cells = ["best baseline (100%)", "all" if self.main is None else f"u{self.main}", "—", self.r.row_info(next(b for b in best.values() if b))["seeds"]]
            for m, _ in SHORT:
                mean, std, n = self.r.mean_std(best[m], m) if best[m] else (np.nan, np.nan, 0)
                cells.append(_cell(mean, std, n) + (f" ({self.r.label(best[m])})" if best[m] else ""))
            rows.append(cells + [""])
        lines += [self.caption(ids), "", "The valid and test splits are the full ones; only training rows are dropped "
                  "(a seeded random subset).", "",
                  _md_table(["Model", "Slice", "LLM", "Seeds", *[h for _, h in SHORT], "vs best baseline (100%)"], rows), ""]
        lines += self.not_run(self.r.ids("ours", users=self.main, full_data=False))
        return "\n".join(lines) + "\n"

    def _vs_best(self, exp_id: str, users) -> str:
        parts = []
        for m in ("auc", "rmse"):
            b = self.r.best_baseline(m, users)
            c = self.r.compare(exp_id, b, m) if b else None
            if c:
                parts.append(f"{METRIC_LABEL[m]} {c.diff:+.4f}{stats.stars(c.p)}")
        return "; ".join(parts)

    def variant_table(self, key: str) -> str:
        title, tags = TABLE_TAGS[key]
        ids = [i for t in tags for i in self.r.ids(t)]
        lines = [f"## {key} — {title}", ""]
        present = [i for i in ids if self.r.has(i)]
        groups: dict = {}
        for i in present:
            groups.setdefault(self.r.reference(i), []).append(i)
        rows, shown = [], []
        for ref, members in sorted(groups.items(), key=lambda kv: (kv[0] is None, _users(self.r.meta.get(kv[0] or "", {})) or 0)):
            if ref and self.r.has(ref):
                rows.append(self.metric_row(ref, f"**{self.r.label(ref)}** (reference)", SHORT) + ["", ""])
                shown.append(ref)
            for i in members:
                rows.append(self.metric_row(i, self.r.label(i), SHORT) + self._delta_cells(i, ref))
                shown.append(i)
            users = _users(self.r.meta.get(members[0], {}))
            b = self.r.best_baseline("auc", users)
            if b and self.r.has(b):
                rows.append(self.metric_row(b, f"best baseline by AUC: {self.r.label(b)}", SHORT) + ["", ""])
                shown.append(b)
        if rows:
            lines += [self.caption(shown), "", _md_table(["Row", "Slice", "LLM", "Seeds", *[h for _, h in SHORT],
                                                          "Δ AUC vs reference", "Δ RMSE vs reference"], rows), ""]
        else:
            lines += ["No results yet.", ""]
        missing = self.not_run(ids)
        if missing:
            lines += ["Not in the table yet:", "", *missing, ""]
        return "\n".join(lines)

    def _delta_cells(self, exp_id: str, ref: str | None) -> list[str]:
        out = []
        for m in ("auc", "rmse"):
            c = self.r.compare(exp_id, ref, m) if ref else None
            if c is None:
                out.append("—")
                continue
            dl = f", DeLong p={_p(c.delong_p)}" if m == "auc" and np.isfinite(c.delong_p) else ""
            out.append(f"{c.diff:+.4f}{stats.stars(c.p)} (p={_p(c.p)}{dl})")
        return out

    def _slices_with(self, tag: str) -> list:
        users = sorted({_users(self.r.meta[i]) for i in self.r.ids(tag) if self.r.has(i)},
                       key=lambda u: -1 if u is None else u)
        return users

    def _primary(self, users) -> str | None:
        cands = self.r.ids("ours", users=users, full_data=True)
        if not cands:
            return None
        cands.sort(key=lambda i: (self.r.meta[i].get("explanations") != "text",
                                  self.r.meta[i].get("llm") != self.r.spec.get("llm"),
                                  self.r.meta[i].get("variant") != "contrastive",
                                  not self.r.meta[i].get("profiles", True), not self.r.has(i)))
        return cands[0]

    # -- figures --

    def figure6(self) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ours = self._primary(self.main)
        lines = ["## Figure 6 — harder examples benefit more", ""]
        if not ours:
            return "\n".join(lines + ["No LR-Recsys results.", ""])
        made = False
        for task, metric in (("regression", "rmse"), ("classification", "auc")):
            base_ids = [b for b in self.r.ids("baseline", users=self.main, full_data=True) if self.r.has(b, task)]
            best = self.r.best_baseline(metric, self.main)
            po = self.r.predictions(ours, task)
            if po is None or not best or not base_ids:
                continue
            mats = {}
            for i in [ours, *base_ids]:
                p = self.r.predictions(i, task)
                if p is not None:
                    mats[i] = p.set_index("sample_id")["pred"]
            frame = pd.DataFrame(mats).dropna()
            if len(frame) < 10 or best not in frame:
                continue
            truth = po.set_index("sample_id").loc[frame.index]
            if task == "regression":
                y = truth["rating"].to_numpy(float)
                norm = frame.to_numpy(float) / self.r.width
                loss = lambda col: ((frame[col].to_numpy(float) - y) / self.r.width) ** 2  # noqa: E731
                what = "reduction of squared error (ratings / scale width)"
            else:
                y = truth["label"].to_numpy(float)
                norm = frame.to_numpy(float)
                loss = lambda col: _logloss(y, frame[col].to_numpy(float))  # noqa: E731
                what = "reduction of log-loss"
            unc = norm.var(axis=1)
            unc = (unc - unc.min()) / (unc.max() - unc.min()) if np.ptp(unc) > 0 else np.zeros_like(unc)
            gain = loss(best) - loss(ours)
            fit = stats.ols(unc, gain)
            bins = pd.qcut(pd.Series(unc).rank(method="first"), q=min(20, len(unc) // 5 or 1), labels=False)
            b = pd.DataFrame({"u": unc, "g": gain, "bin": bins}).groupby("bin").agg(
                u=("u", "mean"), g=("g", "mean"), se=("g", lambda s: s.std(ddof=1) / np.sqrt(len(s)) if len(s) > 1 else 0))
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.errorbar(b["u"], b["g"], yerr=b["se"], fmt="o", ms=4, capsize=2, label="binned means (±1 s.e.)")
            xs = np.linspace(0, 1, 50)
            if np.isfinite(fit["slope"]):
                ax.plot(xs, fit["intercept"] + fit["slope"] * xs, "r-",
                        label=f"OLS on {fit['n']} samples: slope {fit['slope']:.4f}, p={_p(fit['p'])}")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel("prediction uncertainty (variance across models, min-max normalised)")
            ax.set_ylabel(f"{what}\nvs {self.r.label(best)}")
            ax.set_title(f"{self.r.label(ours)} vs best baseline, {task}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            name = f"figure6_{task}.png"
            self._save(fig, name)
            plt.close(fig)
            made = True
            lines += [f"**{task}** — best baseline by {METRIC_LABEL[metric]}: {self.r.label(best)}; uncertainty = "
                      f"variance of the seed-averaged test predictions of {len(mats)} models ({', '.join(self.r.label(i) for i in mats)}). "
                      f"Mean {what}: {gain.mean():+.5f}. OLS of the per-sample gain on uncertainty: slope "
                      f"{fit['slope']:+.5f} (s.e. {fit.get('slope_se', float('nan')):.5f}), p={_p(fit['p'])}, "
                      f"n={fit['n']}.", "", f"![Figure 6 {task}](figures/{name})", ""]
            verdict = ("holds" if fit["slope"] > 0 and fit["p"] < stats.ALPHA else
                       "does not hold" if fit["slope"] < 0 and fit["p"] < stats.ALPHA else "inconclusive")
            self.claim(f"Harder (more uncertain) test samples gain more from LR-Recsys ({task}, Fig. 6)", verdict,
                       f"slope {fit['slope']:+.5f}, p={_p(fit['p'])}, n={fit['n']}")
        if not made:
            lines += ["Needs the test predictions of LR-Recsys and of the baselines on all users.", ""]
            self.claim("Harder (more uncertain) test samples gain more from LR-Recsys (Fig. 6)", "inconclusive",
                       "no predictions to compare")
        return "\n".join(lines)

    def figure7(self) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ours = self._primary(self.main)
        lines = ["## Figures 7 and 10 — attention on the explanations", ""]
        p, task = None, None
        for t in ("classification", "regression"):
            if ours and (q := self.r.predictions(ours, t)) is not None and "pos" in q.columns:
                p, task = q, t
                break
        if p is None:
            for c in ("High-rated samples attend more to the positive explanation (Fig. 7a)",
                      "Low-rated samples attend more to the negative explanation (Fig. 7b)",
                      "Explanations receive ≥ 30% of the attention (Fig. 10)"):
                self.claim(c, "inconclusive", "no attention shares stored")
            return "\n".join(lines + ["No attention shares stored (LR-Recsys with text must have run).", ""])
        names = p.attrs.get("attention_names") or [c for c in p.columns if c not in ("sample_id", "pred", "label", "rating", "n")]
        high = p["label"].to_numpy() == 1
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
        res = {}
        for ax, mask, title in ((axes[0], high, "high-rated (label 1)"), (axes[1], ~high, "low-rated (label 0)")):
            pos, neg = p.loc[mask, "pos"].to_numpy(), p.loc[mask, "neg"].to_numpy()
            bins = np.linspace(min(pos.min(initial=1), neg.min(initial=1)), max(pos.max(initial=0), neg.max(initial=0)), 31) \
                if mask.any() else 10
            ax.hist(pos, bins=bins, alpha=0.6, label=f"positive (mean {pos.mean():.3f})" if len(pos) else "positive")
            ax.hist(neg, bins=bins, alpha=0.6, label=f"negative (mean {neg.mean():.3f})" if len(neg) else "negative")
            ax.set_title(f"{title}, n={int(mask.sum())}")
            ax.set_xlabel("attention share (eq. 24)")
            ax.legend(fontsize=8)
            d = pos - neg
            t = stats.compare_seeds(d, np.zeros(1)) if len(d) > 1 else {"diff": float("nan"), "p": float("nan")}
            res[title] = (float(d.mean()) if len(d) else float("nan"), t["p"], int(mask.sum()))
        axes[0].set_ylabel("test samples")
        fig.suptitle(f"{self.r.label(ours)} ({task}): attention on positive vs negative explanations")
        fig.tight_layout()
        self._save(fig, "figure7_attention.png")
        plt.close(fig)
        shares = p[names].mean()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(names, shares.to_numpy())
        for x, v in enumerate(shares.to_numpy()):
            ax.text(x, v, f"{v:.1%}", ha="center", va="bottom", fontsize=8)
        ax.axhline(1 / len(names), color="grey", ls="--", lw=0.8, label=f"uniform 1/{len(names)}")
        ax.set_ylabel("mean attention share")
        ax.set_title(f"{self.r.label(ours)} ({task}): attention per input")
        ax.legend(fontsize=8)
        fig.tight_layout()
        self._save(fig, "figure10_attention_shares.png")
        plt.close(fig)
        expl_share = float(shares.get("pos", 0) + shares.get("neg", 0))
        (hd, hp, hn), (ld, lp, ln) = res["high-rated (label 1)"], res["low-rated (label 0)"]
        lines += [self.caption([ours]), "",
                  f"Attention shares of the seed-averaged {task} runs of {self.r.label(ours)} on {len(p):,} test samples "
                  f"(the share each input receives, averaged over the attending inputs; a sample's shares sum to 1).", "",
                  _md_table(["samples", "n", "mean share pos", "mean share neg", "mean (pos − neg)", "p (t-test, = 0)"],
                            [["high-rated", hn, f"{p.loc[high, 'pos'].mean():.4f}", f"{p.loc[high, 'neg'].mean():.4f}",
                              f"{hd:+.4f}", _p(hp)],
                             ["low-rated", ln, f"{p.loc[~high, 'pos'].mean():.4f}", f"{p.loc[~high, 'neg'].mean():.4f}",
                              f"{ld:+.4f}", _p(lp)]]), "",
                  "![Figure 7](figures/figure7_attention.png)", "",
                  _md_table(["input", *names], [["mean share", *[f"{v:.1%}" for v in shares]]]), "",
                  f"Positive + negative explanations: {expl_share:.1%} of the attention (uniform would be "
                  f"{2 / len(names):.1%}).", "", "![Figure 10](figures/figure10_attention_shares.png)", ""]
        self.claim("High-rated samples attend more to the positive than to the negative explanation (Fig. 7a)",
                   _direction(hd, hp, +1), f"mean pos − neg {hd:+.4f}, p={_p(hp)}, n={hn}")
        self.claim("Low-rated samples attend more to the negative than to the positive explanation (Fig. 7b)",
                   _direction(ld, lp, -1), f"mean pos − neg {ld:+.4f}, p={_p(lp)}, n={ln}")
        self.claim("Explanations receive a significant 30–40% of the attention (Fig. 10)",
                   "holds" if expl_share >= 0.30 else "does not hold",
                   f"{expl_share:.1%} (rule: ≥ 30%; uniform = {2 / len(names):.1%})")
        return "\n".join(lines)

    def insights(self) -> str:
        ins = self.r.insights
        lines = ["## Section 5.5.3 — business insights from aggregated explanations", ""]
        if not ins or not ins.get("items"):
            return "\n".join(lines + ["No insights yet (they are computed by `bench run` from the primary "
                                      "experiment's explanations).", ""])
        llm = self.r.spec.get("llm_names", {}).get(ins.get("llm"), ins.get("llm"))
        lines += [f"*Dataset: {(self.r.spec.get('card') or {}).get('dataset')}; slice: {ins.get('slice')}; LLM: {llm} "
                  f"(`{ins.get('model_id')}`); variant: {ins.get('variant')}; the three items with the most explained "
                  f"test samples.*", "", f"Keywords: {ins.get('method')}. Same code as `reasonrec insights --item ID`.", ""]
        for it in ins["items"]:
            lines += [f"### {it['title']} (item {it['item_id']}; {it['samples']} samples, {it['test_samples']} in test)", ""]
            if it.get("profile"):
                lines += [f"Profile: “{it['profile']}”", ""]
            pos = it["keywords"].get("positive", [])
            neg = it["keywords"].get("negative", [])
            rows = []
            for k in range(max(len(pos), len(neg))):
                a = pos[k] if k < len(pos) else None
                b = neg[k] if k < len(neg) else None
                rows.append([k + 1, f"{a['word']} ({a['count']}, z={a['z']:.1f})" if a else "",
                             f"{b['word']} ({b['count']}, z={b['z']:.1f})" if b else ""])
            lines += [_md_table(["#", "positive explanations", "negative explanations"], rows) if rows else
                      "(too few explanations for distinctive words)", ""]
        return "\n".join(lines)

    # -- claims --

    def derive_claims(self):
        r = self.r
        ours = self._primary(self.main)
        for m in CLAIM_METRICS:
            b = r.best_baseline(m, self.main)
            if not ours or not b or not r.has(ours) or not r.has(b):
                self.claim(f"LR-Recsys beats the best baseline on {METRIC_LABEL[m]} (Table 2)", "inconclusive", "missing results")
                continue
            c = r.compare(ours, b, m)
            self.claim(f"LR-Recsys beats the best baseline on {METRIC_LABEL[m]} (Table 2)",
                       stats.verdict_better([c.sign]), f"vs {r.label(b)}: {c.text()}")
        # Table 3
        fr = sorted([i for i in r.ids("ours", users=self.main, full_data=False) if r.has(i)],
                    key=lambda i: float(r.meta[i].get("train_fraction", 1)))
        quarter = [i for i in fr if float(r.meta[i]["train_fraction"]) <= 0.25 + 1e-9]
        target = quarter[-1] if quarter else None
        if target:
            comps = []
            for m in ("auc", "rmse"):
                b = r.best_baseline(m, self.main)
                c = r.compare(target, b, m) if b else None
                if c:
                    comps.append(c)
            self.claim(f"With {float(r.meta[target]['train_fraction']):.0%} of the training data LR-Recsys matches "
                       f"the best baseline on 100% (Table 3; rule: not significantly worse on AUC and RMSE)",
                       stats.verdict_not_worse([c.sign for c in comps]), "; ".join(c.text() for c in comps) or "no overlap")
        else:
            self.claim("With ≤ 25% of the training data LR-Recsys matches the best baseline (Table 3)", "inconclusive",
                       "no run with train_fraction ≤ 0.25")
        # Table 4-6: each row against its reference (same slice)
        for i in r.ids("generator"):
            self.claim_better(f"A stronger generator ({r.row_info(i)['llm']}) beats the reference generator "
                              f"inside LR-Recsys (Table 4)", i, r.reference(i))
        for tag, text in (("llm_direct", "LR-Recsys beats direct rating prediction by the LLM (Table 4)"),
                          ("summary", "Contrastive reasons beat consumption-history summaries (Table 4)"),
                          ("no_profiles", "Profile augmentation helps (Table 4)"),
                          ("aspects", "Contrastive explanations beat aspect terms only (Table 5)"),
                          ("positive_only", "Contrastive explanations beat positive explanations only (Table 5)"),
                          ("general", "Contrastive explanations beat general explanations (Table 5)"),
                          ("free_vectors", "Explanations beat free learnable vectors (Table 6, Ablation 1)"),
                          ("no_autoencoder", "The autoencoder beats off-the-shelf text embeddings (Table 6, Ablation 2)")):
            ids = r.ids(tag)
            if not ids:
                continue
            for i in ids:
                self.claim_better(text + (f" [{r.label(i)}]" if len(ids) > 1 or tag == "no_autoencoder" else ""),
                                  r.reference(i), i)
        for i in r.ids("no_profiles"):
            self.claim_beats_best(f"Without profiles LR-Recsys still beats the best baseline of its slice per "
                                  f"metric (Table 4) [{r.label(i)}]", i)
        for i in r.ids("alt_prompt"):
            ref = r.reference(i)
            if not ref or not r.has(i) or not r.has(ref):
                self.claim("An alternative prompt gives no significantly different results (Table 6, Ablation 3)",
                           "inconclusive", "missing results")
                continue
            comps = self.compare_all(i, ref)
            self.claim("An alternative prompt gives no significantly different results (Table 6, Ablation 3)",
                       stats.verdict_same([c.sign for c in comps]),
                       f"{r.label(i)} vs {r.label(ref)}: " + "; ".join(c.text() for c in comps))
        for i in r.ids("ncf_backbone"):
            users = _users(r.meta[i])
            self.claim_beats_best("LR-Recsys with an NCF backbone still beats the best baseline of its slice per "
                                  "metric (Table 6, Robustness 1)", i)
            plain = [b for b in r.ids("baseline", users=users, full_data=True) if r.meta[b].get("model") == "ncf"]
            if plain:
                self.claim_better("Explanations improve NCF itself (Table 6, Robustness 1)", i, plain[0])

    def claims_section(self) -> str:
        lines = ["## Claims", "",
                 "Verdicts are computed from the numbers above, not written by hand. Rules: a comparison counts a "
                 "metric as better/worse when its per-seed paired t-test (one-sample t against a deterministic row; "
                 "DeLong for AUC when there is a single seed) gives p < 0.05. \"A beats B\" **holds** when A is "
                 "significantly better on every compared metric (AUC, LogLoss, RMSE, MAE, whichever both rows have), "
                 "**does not hold** when A is significantly worse on any, and is **inconclusive** otherwise. "
                 "\"A matches B\" holds unless A is significantly worse on some metric; \"A and B do not differ\" "
                 "holds when no metric differs significantly. Figure claims use the stated OLS slope / t-test rule.",
                 "", _md_table(["claim", "verdict", "evidence"],
                               [[c, f"**{v}**", e] for c, v, e in self.claims]), ""]
        counts = pd.Series([v for _, v, _ in self.claims]).value_counts().to_dict() if self.claims else {}
        lines += [f"Summary: {counts.get('holds', 0)} hold, {counts.get('does not hold', 0)} do not hold, "
                  f"{counts.get('inconclusive', 0)} inconclusive.", ""]
        return "\n".join(lines)

    def appendix(self) -> str:
        df = self.r.df
        rows = []
        for (exp_id, task), g in df.groupby(["id", "task"], sort=False):
            primary = "test_auc" if task == "classification" else "test_rmse"
            rows.append([exp_id, self.r.label(exp_id), task, g["slice"].iloc[0], _seed_text(sorted(g["seed"])),
                         _cell(g[primary].mean(), g[primary].std(ddof=1) if len(g) > 1 else 0, len(g)),
                         f"{g['fit_seconds'].mean():.1f}", f"{g['seconds_per_epoch'].mean():.2f}",
                         f"{g['best_epoch'].mean():.1f}", f"{g['coverage'].mean():.1%}" if g["coverage"].notna().any() else "—",
                         self.r.hparams(exp_id, task)])
        lines = ["## Appendix — every experiment", "",
                 _md_table(["id", "label", "task", "slice", "seeds", "AUC / RMSE", "fit s", "s/epoch", "best epoch",
                            "text coverage", "hyper-parameters"], rows), ""]
        missing = self.not_run(list(self.r.meta))
        if missing:
            lines += ["Experiments without results:", "", *missing, ""]
        return "\n".join(lines)

    def _save(self, fig, name: str):
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.fig_dir / name, dpi=110)
        self.figures.append(name)

    def build(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.fig_dir.glob("*.png") if self.fig_dir.is_dir() else []:
            old.unlink()
        body = [self.header(), self.table2(), self.explanations_table(), self.table3(),
                *(self.variant_table(k) for k in TABLE_TAGS), self.figure6(), self.figure7(), self.insights(),
                self.texts_table()]
        body = [part for part in body if part]
        figure_claims, self.claims = self.claims, []
        self.derive_claims()
        self.claims += figure_claims
        text = "\n".join(body[:1] + [self.claims_section()] + body[1:] + [self.appendix()])
        f = self.dir / "REPORT.md"
        f.write_text(text.rstrip() + "\n")
        return f


def _direction(diff: float, p: float, expected: int) -> str:
    if not np.isfinite(p) or p >= stats.ALPHA or not np.isfinite(diff) or diff == 0:
        return "inconclusive"
    return "holds" if np.sign(diff) == expected else "does not hold"


def _logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def build_report(results_dir: str | Path, report_dir: str | Path) -> Path:
    return Report(Results(Path(results_dir)), Path(report_dir)).build()
