"""Explanation quality on held-out samples: LC, IC, diversity, format, length.

For each sample there are two explanations (the contrastive template's positive and negative
prompt). The judge gives each a calibrated log-odds z_pos, z_neg; the sample's judge score is
z_pair = (z_pos + z_neg) / 2 (both texts are read, each as a separate judgement).

* LC — AUC of the judge score against the true label (pair, positive-only, negative-only), and
  the mean LC reward log P_judge(y | e) over explanations. The judge never sees the label. Also
  the AUC of a trained judge (TF-IDF + logistic regression fitted on the train split's texts and
  labels, `classifier_auc`): the label information a learning reader can get from the texts.
* IC — agreement between p = sigmoid(z) and the CTR model's q for the same pair: Pearson and
  Spearman correlation, MSE, and the mean IC reward -KL(q || p).
* distinct-2 — unique word bigrams / all bigrams, over the explanation bodies (the forced,
  constant prefix removed); unique-sentence ratio — unique bodies / all; format compliance — the
  share the store's clean-up accepted with no repair (status "ok"); mean length in words.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from reasonrec.align.rewards import ic_reward, lc_reward

_WORD = re.compile(r"[a-z0-9']+")


def body(text: str, prefixes: tuple[str, ...] = ()) -> str:
    t = str(text or "").strip()
    for p in sorted(prefixes, key=len, reverse=True):
        if p and t.startswith(p):
            return t[len(p):].strip()
    return t


def distinct_n(texts: list[str], n: int = 2) -> float:
    grams, total = set(), 0
    for t in texts:
        w = _WORD.findall(t.lower())
        g = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        grams.update(g)
        total += len(g)
    return len(grams) / total if total else 0.0


def unique_ratio(texts: list[str]) -> float:
    norm = [" ".join(_WORD.findall(t.lower())) for t in texts]
    return len(set(norm)) / len(norm) if norm else 0.0


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else float("nan")


def text_metrics(texts: list[str], statuses: list[str] | None = None, prefixes: tuple[str, ...] = ()) -> dict:
    bodies = [body(t, prefixes) for t in texts]
    out = {"n": len(texts), "distinct_2": distinct_n(bodies, 2), "unique_sentence_ratio": unique_ratio(bodies),
           "mean_words": float(np.mean([len(_WORD.findall(b.lower())) for b in bodies])) if bodies else 0.0}
    if statuses is not None:
        out["format_compliance"] = float(np.mean([s == "ok" for s in statuses])) if statuses else 0.0
    return out


def judge_metrics(z_pos: np.ndarray, z_neg: np.ndarray, labels: np.ndarray, q: np.ndarray) -> dict:
    """LC and IC from calibrated judge log-odds of each sample's two explanations."""
    from scipy import stats

    z_pos, z_neg = np.asarray(z_pos, float), np.asarray(z_neg, float)
    y, q = np.asarray(labels, float), np.asarray(q, float)
    z_pair = (z_pos + z_neg) / 2
    p_pair = 1 / (1 + np.exp(-z_pair))
    z_all, y_all, q_all = np.concatenate([z_pos, z_neg]), np.concatenate([y, y]), np.concatenate([q, q])
    p_all = 1 / (1 + np.exp(-z_all))
    return {
        "lc_auc_pair": auc(y, z_pair), "lc_auc_positive": auc(y, z_pos), "lc_auc_negative": auc(y, z_neg),
        "lc_reward_mean": float(lc_reward(z_all, y_all).mean()),
        "ic_pearson_pair": float(stats.pearsonr(p_pair, q)[0]) if np.std(p_pair) > 0 else float("nan"),
        "ic_spearman_pair": float(stats.spearmanr(p_pair, q)[0]) if np.std(p_pair) > 0 else float("nan"),
        "ic_pearson_all": float(stats.pearsonr(p_all, q_all)[0]) if np.std(p_all) > 0 else float("nan"),
        "ic_mse_pair": float(np.mean((p_pair - q) ** 2)),
        "ic_mse_all": float(np.mean((p_all - q_all) ** 2)),
        "ic_reward_mean": float(ic_reward(z_all, q_all, "kl").mean()),
        "judge_p_mean": float(p_all.mean()),
    }


def classifier_auc(train: pd.DataFrame, test: pd.DataFrame, candidates_train: list[str],
                   candidates_test: list[str]) -> float:
    """Held-out AUC of a TF-IDF + logistic-regression judge fitted on the train split's explanation
    pairs and labels: how much label information the texts carry for a judge that may learn."""
    from reasonrec.align.judge import ClassifierJudge

    def pair(frame):
        return [f"{p} || {n}" for p, n in zip(frame["positive"].fillna(""), frame["negative"].fillna(""))]

    judge = ClassifierJudge().fit(pair(train), candidates_train, train["label"].to_numpy())
    return auc(test["label"].to_numpy(), judge.prob_yes(pair(test), candidates_test))


def quality_table(frames: dict[str, pd.DataFrame], judge, bias: dict, labels: np.ndarray, q: np.ndarray,
                  candidates: list[str], prefixes: tuple[str, ...], statuses: dict | None = None) -> pd.DataFrame:
    """One row per generator. frames[name]: sample-aligned table with `positive`, `negative` texts.
    Returns metrics and keeps each generator's judge log-odds in `.attrs["z"]`."""
    rows, zs = [], {}
    for name, frame in frames.items():
        pos, neg = frame["positive"].fillna("").tolist(), frame["negative"].fillna("").tolist()
        z_pos = judge.logits(pos, candidates) + bias.get("positive", 0.0)
        z_neg = judge.logits(neg, candidates) + bias.get("negative", 0.0)
        zs[name] = (z_pos, z_neg)
        st = (statuses or {}).get(name)
        row = {"generator": name, **judge_metrics(z_pos, z_neg, labels, q),
               **text_metrics(pos + neg, st, prefixes)}
        rows.append(row)
    table = pd.DataFrame(rows).set_index("generator")
    table.attrs["z"] = zs
    return table
