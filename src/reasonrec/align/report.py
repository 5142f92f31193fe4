"""The ExpCTR report: reward curves (CSV + PNG), quality and ExpCTR-Aug tables, before/after examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CURVES = (("reward_total", "total reward"), ("reward_lc", "LC: log P_judge(y | e)"),
          ("reward_ic", "IC: -KL(q || p_judge)"), ("reward_fmt", "format (0 ok, -1 not)"),
          ("kl", "KL to reference (per token)"), ("completion_tokens", "completion tokens"))


PROBES = (("probe_lc", "probe: LC, mean log P_judge(y | e)"), ("probe_ic", "probe: IC, mean -KL(q || p)"),
          ("probe_judge_auc", "probe: judge AUC of the label"), ("probe_ic_pearson", "probe: Pearson(p_judge, q)"),
          ("probe_fmt_ok", "probe: format compliance"), ("probe_words", "probe: words per explanation"))


def load_log(path: Path) -> pd.DataFrame:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = {"lc": 0, "ic": 1}
    frame["_o"] = frame["round"] * 10 + frame["stage"].map(order).fillna(9)
    frame = frame.sort_values(["_o", "step"]).drop(columns="_o").reset_index(drop=True)
    frame.insert(0, "global_step", np.arange(1, len(frame) + 1))
    return frame


def plot_curves(frame: pd.DataFrame, path: Path, window: int = 5, curves=CURVES, x: str = "global_step",
                title: str = "GRPO step") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(c, t) for c, t in curves if c in frame]
    fig, axes = plt.subplots(int(np.ceil(len(cols) / 2)), 2, figsize=(11, 2.6 * np.ceil(len(cols) / 2)), squeeze=False)
    bounds = frame.groupby(["round", "stage"], sort=False)[x].agg(["min", "max"])
    for ax, (col, name) in zip(axes.ravel(), cols):
        ax.plot(frame[x], frame[col], color="0.6" if window > 1 else "C0", lw=0.8, marker="" if window > 1 else "o",
                ms=3, label="per step" if window > 1 else "per probe")
        if window > 1:
            ax.plot(frame[x], frame[col].rolling(window, min_periods=1).mean(), color="C0", lw=1.8,
                    label=f"mean of {window}")
        for (r, stage), (lo, hi) in bounds.iterrows():
            ax.axvspan(lo - 0.5, hi + 0.5, color="C1" if stage == "ic" else "C2", alpha=0.06)
            ax.text(lo, 1.0, f"r{r}:{stage.upper()}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.supxlabel(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def probe_frame(probe: pd.DataFrame, rewards: pd.DataFrame) -> pd.DataFrame:
    """Probe rows placed on the reward log's global step axis (step 0 = just before the stage)."""
    offsets = rewards.groupby(["round", "stage"], sort=False)["global_step"].min() - 1
    probe = probe.copy()
    probe["global_step"] = [offsets.get((r, st), 0) + step for r, st, step in zip(probe["round"], probe["stage"],
                                                                                 probe["step"])]
    return probe.sort_values(["global_step", "time"]).drop_duplicates(["round", "stage", "step"], keep="last")


def _fmt(v, digits=4):
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def quality_markdown(quality: dict) -> str:
    m = quality["metrics"]
    names = list(m)
    rows = [("LC: judge AUC, pair (z_pos + z_neg)", "lc_auc_pair"), ("LC: judge AUC, positive text", "lc_auc_positive"),
            ("LC: judge AUC, negative text", "lc_auc_negative"), ("LC reward, mean log P_judge(y|e)", "lc_reward_mean"),
            ("LC: trained-classifier judge AUC (TF-IDF + LR on train texts)", "lc_auc_classifier"),
            ("IC: Pearson(p_judge, q_CTR), pair", "ic_pearson_pair"), ("IC: Spearman, pair", "ic_spearman_pair"),
            ("IC: MSE(p_judge, q_CTR), pair", "ic_mse_pair"), ("IC reward, mean -KL(q||p)", "ic_reward_mean"),
            ("distinct-2", "distinct_2"), ("unique-sentence ratio", "unique_sentence_ratio"),
            ("format compliance (status ok)", "format_compliance"), ("mean length (words, after prefix)", "mean_words")]
    out = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for title, key in rows:
        out.append(f"| {title} | " + " | ".join(_fmt(m[n].get(key)) for n in names) + " |")
    return "\n".join(out)


def aug_markdown(aug: dict) -> str:
    out = ["| row | test AUC (mean ± std) | test LogLoss (mean ± std) |", "|---|---|---|"]
    for name, s in aug["summary"].items():
        out.append(f"| {name} | {s['test_auc'][0]:.4f} ± {s['test_auc'][1]:.4f} | "
                   f"{s['test_logloss'][0]:.4f} ± {s['test_logloss'][1]:.4f} |")
    out += ["", "| paired t-test over seeds | ΔAUC | p | ΔLogLoss | p |", "|---|---|---|---|---|"]
    for name, t in aug["paired_tests"].items():
        out.append(f"| {name} | {t['test_auc']['diff']:+.4f} | {_fmt(t['test_auc']['p'], 3)} | "
                   f"{t['test_logloss']['diff']:+.4f} | {_fmt(t['test_logloss']['p'], 3)} |")
    return "\n".join(out)


def examples_markdown(run, detail: pd.DataFrame, n: int, seed: int = 0) -> str:
    items = run.data.items.set_index("item_id")
    samples = run.sub.samples.set_index("sample_id")
    pick = np.sort(np.random.default_rng(seed).choice(detail["sample_id"].to_numpy(), size=min(n, len(detail)),
                                                      replace=False))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    lines = [f"{len(pick)} test samples of the sub-slice, drawn with seed {seed} before looking at any text. "
             "p = the calibrated judge's P(Yes) for that one text; q = the CTR model's probability.", ""]
    for sid in pick:
        row = detail[detail["sample_id"] == sid].iloc[0]
        s = samples.loc[sid]
        hist = "; ".join(str(items.loc[i, "title"]) for i in s["history"])
        lines += [f"### sample {sid} — user {s['user_id']}, candidate *{items.loc[s['item_id'], 'title']}* "
                  f"({items.loc[s['item_id'], 'categories']}); rating {s['rating']:.0f} (label {int(s['label'])}), "
                  f"q = {row['ctr_q']:.2f}", f"history: {hist}", "",
                  "| generator | text | p |", "|---|---|---|"]
        for gen in ("zero_shot", "aligned"):
            for task in ("positive", "negative"):
                text = str(row[f"{gen}_{task}"]).replace("|", "\\|")
                lines.append(f"| {gen} ({task}) | {text} | {sig(row[f'{gen}_z_{task}']):.2f} |")
        lines.append("")
    return "\n".join(lines)


def write_report(run, bench: Path) -> list[Path]:
    bench.mkdir(parents=True, exist_ok=True)
    paths, frame, probe = [], None, None
    log = run.out / "rewards.jsonl"
    if log.is_file():
        frame = load_log(log)
        frame.to_csv(bench / "rewards.csv", index=False)
        paths += [bench / "rewards.csv", plot_curves(frame, bench / "reward_curves.png")]
        probe_file = run.out / "probe.jsonl"
        if probe_file.is_file():
            probe = probe_frame(pd.DataFrame([json.loads(x) for x in probe_file.read_text().splitlines() if x.strip()]),
                                frame)
            probe.to_csv(bench / "probe.csv", index=False)
            paths += [bench / "probe.csv", plot_curves(probe, bench / "probe_curves.png", window=1, curves=PROBES,
                                                       title="GRPO step (greedy probe on fixed held-out train prompts)")]
    results = {"config": json.loads((run.out / "config.json").read_text()),
               "state": {k: v for k, v in run.state.items()}}
    md = ["# ExpCTR on the bench slice", ""]
    if frame is not None and len(frame):
        cfg = results["config"]
        g = cfg["grpo"]
        md += ["## Training", "",
               f"GRPO on {cfg['rl_samples']} train samples x 2 prompts of the {cfg['users']}-user sub-slice; "
               f"{g['prompts_per_step']} prompts x {g['group_size']} completions per step, <= {g['max_new_tokens']} "
               f"new tokens, T = {g['temperature']}, top-p {g['top_p']}, lr {g['lr']}, beta {g['beta']}, "
               f"LoRA {cfg['lora']['targets']} r = {cfg['lora']['r']}; LC stage weights {cfg['weights_lc']}, "
               f"IC stage weights {cfg['weights_ic']}.", "",
               "| stage | steps | wall time (sum of step times) | mean reward, first 8 steps | mean reward, last 8 steps | "
               "KL at the end |", "|---|---|---|---|---|---|"]
        for (r, stage), part in frame.groupby(["round", "stage"], sort=False):
            md.append(f"| round {r} {stage.upper()} | {len(part)} | {part['step_s'].sum() / 60:.1f} min | "
                      f"{part['reward_total'].head(8).mean():.3f} | {part['reward_total'].tail(8).mean():.3f} | "
                      f"{part['kl'].tail(4).mean():.4f} |")
        if probe is not None:
            md += ["", "Greedy probe on a fixed set of held-out train prompts (not in the RL pool):", "",
                   "| stage | step | LC | IC | judge AUC | Pearson(p, q) | format ok | words |", "|---|---|---|---|---|---|---|---|"]
            for row in probe.itertuples():
                md.append(f"| round {row.round} {row.stage.upper()} | {row.step} | {row.probe_lc:.3f} | {row.probe_ic:.3f} | "
                          f"{_fmt(row.probe_judge_auc, 3)} | {_fmt(row.probe_ic_pearson, 3)} | {row.probe_fmt_ok:.2f} | "
                          f"{row.probe_words:.1f} |")
        md.append("")
    for name in ("quality", "aug"):
        f = run.out / f"{name}.json"
        if f.is_file():
            results[name] = json.loads(f.read_text())
    if "quality" in results:
        q = results["quality"]
        md += [f"## Explanation quality — test split of the sub-slice ({q['test_samples']} samples, "
               f"{q['users']} users), aligned vs zero-shot", "", quality_markdown(q), ""]
    if "aug" in results:
        a = results["aug"]
        md += [f"## ExpCTR-Aug — {a['backbone']}, explanations encoded by {a['encoder']}, "
               f"{len(a['seeds'])} seeds, {a['samples']} samples ({a['users']} users)", "", aug_markdown(a), ""]
    (bench / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (bench / "results.md").write_text("\n".join(md))
    paths += [bench / "results.json", bench / "results.md"]
    detail_file = run.out / "quality_detail.parquet"
    if detail_file.is_file():
        detail = pd.read_parquet(detail_file)
        (bench / "examples.md").write_text("# Before (zero-shot) / after (aligned)\n\n" +
                                           examples_markdown(run, detail, run.cfg.examples, run.cfg.seed))
        paths.append(bench / "examples.md")
    return paths
