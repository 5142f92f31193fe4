"""What a report reads: one spec's results (results.csv, spec.json, status.json, texts, the runs'
predictions), per-row lookups and the pairwise comparisons (per-seed t-tests, DeLong) that the
tables and the claims use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from reasonrec.bench import stats
from reasonrec.bench.stats import METRICS


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
                                          "model": g["model"].iloc[0], "explanations": g["explanations"].iloc[0],
                                          **{k: g[k].iloc[0] if pd.notna(g[k].iloc[0]) else None
                                             for k in ("control", "q") if k in g}})
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
            return e.get("model"), e.get("preset"), _users(e), float(e.get("train_fraction", 1.0))

        trained = [e for e in self.meta.values()
                   if e.get("kind", "train") == "train" and e.get("model") and not e.get("control")]
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
        return self.best(metric, users=users, tag="baseline")

    def users_of(self, exp_id: str):
        return _users(self.meta.get(exp_id, {}))

    def candidates(self, users=None, **match) -> list[str]:
        """Rows on a slice at 100% of the training data whose metadata match (control rows never)."""
        return [i for i in self.ids(users=users, full_data=True)
                if not self.meta[i].get("control") and all(self.meta[i].get(k) == v for k, v in match.items())]

    def best(self, metric: str, users=None, **match) -> str | None:
        """The candidate with the best mean `metric`."""
        larger = METRICS[metric][1]
        best, best_v = None, None
        for i in self.candidates(users, **match):
            m, _, n = self.mean_std(i, metric)
            if n and np.isfinite(m) and (best_v is None or (m > best_v if larger else m < best_v)):
                best, best_v = i, m
        return best

    def pool(self, ref, anchor: str) -> list[str]:
        """The rows a `best_of` reference chooses from (on the anchor's slice), or the one id."""
        if isinstance(ref, str):
            return [ref]
        filt = dict(ref["best_of"])
        users = filt.pop("users", "same")
        return self.candidates(self.users_of(anchor) if users == "same" else users, **filt)

    # --- per-sample analyses ---------------------------------------------------------------

    def uncertainty_gain(self, ours: str, best: str, pool: list[str], task: str) -> dict | None:
        """Figure 6: per test sample, how much `ours` reduces the loss of `best`, and how much the
        models (ours and the pool) disagree (variance of their seed-averaged predictions,
        min-max normalised); with the OLS fit of the gain on the disagreement."""
        po = self.predictions(ours, task)
        if po is None or not best:
            return None
        mats = {}
        for i in dict.fromkeys([ours, *pool]):
            p = self.predictions(i, task) if self.has(i, task) else None
            if p is not None:
                mats[i] = p.set_index("sample_id")["pred"]
        frame = pd.DataFrame(mats).dropna()
        if len(frame) < 10 or best not in frame or len(mats) < 2:
            return None
        truth = po.set_index("sample_id").loc[frame.index]
        if task == "regression":
            y = truth["rating"].to_numpy(float)
            norm = frame.to_numpy(float) / self.width
            loss = {c: ((frame[c].to_numpy(float) - y) / self.width) ** 2 for c in (best, ours)}
            what = "reduction of squared error (ratings / scale width)"
        else:
            y = truth["label"].to_numpy(float)
            norm = frame.to_numpy(float)
            loss = {c: _logloss(y, frame[c].to_numpy(float)) for c in (best, ours)}
            what = "reduction of log-loss"
        unc = norm.var(axis=1)
        unc = (unc - unc.min()) / (unc.max() - unc.min()) if np.ptp(unc) > 0 else np.zeros_like(unc)
        gain = loss[best] - loss[ours]
        return {"uncertainty": unc, "gain": gain, "fit": stats.ols(unc, gain), "what": what, "models": list(mats)}

    def attention_frame(self, exp_id: str, task: str | None = None) -> pd.DataFrame | None:
        """Seed-averaged predictions with attention shares, from `task` or the first task that has them."""
        for t in ([task] if task else ["classification", "regression"]):
            p = self.predictions(exp_id, t) if self.has(exp_id, t) else None
            if p is not None and p.attrs.get("attention_names"):
                return p
        return None

    def attention_shares(self, exp_id: str, task: str | None, inputs: list[str]) -> tuple[list[float], list[str]]:
        """Per seed: the mean (over test samples) attention share of `inputs` together; and the
        names of all attending inputs."""
        shares, names = [], []
        for t in ([task] if task else ["classification", "regression"]):
            d = self.df[(self.df["id"] == exp_id) & (self.df["task"] == t)]
            for rel in d["predictions"].dropna():
                f = self.dir / rel
                if not f.is_file():
                    continue
                z = np.load(f, allow_pickle=False)
                if "attention" not in z:
                    continue
                names = [str(n) for n in z["attention_names"]]
                cols = [names.index(i) for i in inputs if i in names]
                shares.append(float(z["attention"][:, cols].sum(axis=1).mean()))
            if shares:
                break
        return shares, names

    @staticmethod
    def attention_welch(p: pd.DataFrame, x: str, y: str) -> float:
        """p of Welch's t-test: is (x − y) different between label-1 and label-0 samples?"""
        from scipy import stats as sps

        d = (p[x] - p[y]).to_numpy(float)
        high = p["label"].to_numpy() == 1
        if high.sum() < 2 or (~high).sum() < 2:
            return float("nan")
        return float(sps.ttest_ind(d[high], d[~high], equal_var=False).pvalue)

    def informativeness_points(self) -> pd.DataFrame:
        """One row per text-reading row with a probe AUC whose model has a row without explanations
        on its slice: the probe AUC, the probe's lift over ids, and the mean AUC gain over that row."""
        cols = ["model", "slice", "id", "kind", "control", "probe_auc", "probe_lift", "gain", "p", "without"]
        if "probe_auc" not in self.df:
            return pd.DataFrame(columns=cols)
        rows = []
        cls = self.df[(self.df["task"] == "classification") & self.df["probe_auc"].notna()]
        for exp_id, g in cls.groupby("id", sort=False):
            e = self.meta.get(exp_id, {})
            if float(e.get("train_fraction", 1.0)) < 1.0:
                continue
            without = [i for i in self.candidates(_users(e), model=e.get("model"), preset=e.get("preset"),
                                                  explanations="none")
                       if self.has(i, "classification")]
            if not without:
                continue
            c = self.compare(exp_id, without[0], "auc")
            if c is None:
                continue
            control = e.get("control")
            kind = (f"oracle q={float(e.get('q')):g}" if control == "oracle" else control) if control else \
                f"generated ({g['llm_name'].dropna().iloc[0] if g['llm_name'].notna().any() else '?'})"
            rows.append({"model": e.get("model"), "slice": "all" if _users(e) is None else f"u{_users(e)}",
                         "id": exp_id, "kind": kind, "control": control,
                         "probe_auc": float(g["probe_auc"].mean()),
                         "probe_lift": float(g["probe_lift"].mean()) if "probe_lift" in g else float("nan"),
                         "gain": c.diff, "p": c.p, "without": without[0]})
        return pd.DataFrame(rows, columns=cols)


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


def _logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(p, eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))

