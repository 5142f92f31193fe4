"""The report's figures: Figure 6 (harder samples gain more), Figures 7 and 10 (attention on the
explanations) and the informativeness figure (a row's gain against how much its codes say)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reasonrec.bench.results import METRIC_LABEL, _md_table, _p


class Figures:
    """Figure sections of the report (mixed into Report)."""

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
            best = self.r.best(metric, users=self.main, tag="baseline")
            pool = self.r.pool({"best_of": {"tag": "baseline"}}, ours)
            found = self.r.uncertainty_gain(ours, best, pool, task) if best else None
            if found is None:
                continue
            unc, gain, fit, what, models = found["uncertainty"], found["gain"], found["fit"], found["what"], found["models"]
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
                      f"variance of the seed-averaged test predictions of {len(models)} models "
                      f"({', '.join(self.r.label(i) for i in models)}). "
                      f"Mean {what}: {gain.mean():+.5f}. OLS of the per-sample gain on uncertainty: slope "
                      f"{fit['slope']:+.5f} (s.e. {fit.get('slope_se', float('nan')):.5f}), p={_p(fit['p'])}, "
                      f"n={fit['n']}.", "", f"![Figure 6 {task}](figures/{name})", ""]
        if not made:
            lines += ["Needs the test predictions of LR-Recsys and of the baselines on all users.", ""]
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
            res[title] = (float(d.mean()) if len(d) else float("nan"), int(mask.sum()))
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
        (hd, hn), (ld, ln) = res["high-rated (label 1)"], res["low-rated (label 0)"]
        welch = self.r.attention_welch(p, "pos", "neg")
        lines += [self.caption([ours]), "",
                  f"Attention shares of the seed-averaged {task} runs of {self.r.label(ours)} on {len(p):,} test samples "
                  f"(the share each input receives, averaged over the attending inputs; a sample's shares sum to 1).", "",
                  _md_table(["samples", "n", "mean share pos", "mean share neg", "mean (pos − neg)"],
                            [["high-rated", hn, f"{p.loc[high, 'pos'].mean():.4f}", f"{p.loc[high, 'neg'].mean():.4f}",
                              f"{hd:+.4f}"],
                             ["low-rated", ln, f"{p.loc[~high, 'pos'].mean():.4f}", f"{p.loc[~high, 'neg'].mean():.4f}",
                              f"{ld:+.4f}"]]), "",
                  f"High- vs low-rated difference of (pos − neg): {hd - ld:+.4f}, Welch t p={_p(welch)} (a model "
                  f"may attend more to one side for every sample; only the difference between the groups says the "
                  f"attention follows the rating).", "",
                  "![Figure 7](figures/figure7_attention.png)", "",
                  _md_table(["input", *names], [["mean share", *[f"{v:.1%}" for v in shares]]]), "",
                  f"Positive + negative explanations: {expl_share:.1%} of the attention (uniform 2/{len(names)} = "
                  f"{2 / len(names):.1%}).", "", "![Figure 10](figures/figure10_attention_shares.png)", ""]
        return "\n".join(lines)

    def informativeness(self) -> str:
        """Per model: a row's AUC gain over its model's row without explanations (same slice) against
        the probe AUC of its codes; controls trace the curve, real generators are marked points."""
        points = self.r.informativeness_points()
        if points.empty:
            return ""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        xlabels = {"probe_auc": "probe AUC of the row's text codes (logistic regression on codes alone)",
                   "probe_lift": "probe lift: AUC(ids + codes) - AUC(ids), logistic regressions"}
        for ax, x in zip(axes, xlabels):
            for (model, slice_name), g in points.groupby(["model", "slice"], sort=False):
                ctrl = g[g["control"].notna()].sort_values(x)
                line = ax.plot(ctrl[x], ctrl["gain"], "o-", ms=4, label=f"{model} ({slice_name}) controls")
                real = g[g["control"].isna()]
                ax.scatter(real[x], real["gain"], marker="*", s=120, color=line[0].get_color(),
                           edgecolor="black", zorder=3, label=f"{model} ({slice_name}) generated texts")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel(xlabels[x], fontsize=8)
        span = [min(0.0, points["probe_lift"].min()), max(0.0, points["probe_lift"].max())]
        axes[1].plot(span, span, ":", color="grey", lw=0.8)             # gain = lift
        axes[0].set_ylabel("mean test-AUC gain over the model without explanations")
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        self._save(fig, "informativeness.png")
        plt.close(fig)
        rows = [[r.model, r.slice, self.r.label(r.id), r.kind, f"{r.probe_auc:.4f}",
                 "" if pd.isna(r.probe_lift) else f"{r.probe_lift:+.4f}", f"{r.gain:+.4f}", _p(r.p),
                 self.r.label(r.without)] for r in points.itertuples()]
        return "\n".join(["## Informativeness — gain against what the codes say", "",
                          "x, left: test AUC of a standardised logistic regression fitted on the train split's text "
                          "codes alone (positive and negative codes); x, right: the probe's lift over ids, test AUC of "
                          "a logistic regression on one-hot user and item ids plus the codes minus the same on the ids "
                          "alone (what the codes say that the ids do not; dotted: gain = lift); y: mean test-AUC gain "
                          "over the same model without explanations on the same slice (p: paired t over seeds). "
                          "Shuffled texts and oracle texts true for a share q of the samples are controls; the other "
                          "rows read generated texts.", "",
                          _md_table(["model", "slice", "row", "texts", "probe AUC", "probe lift", "Δ AUC", "p",
                                     "without"], rows),
                          "", "![Informativeness](figures/informativeness.png)", ""])
