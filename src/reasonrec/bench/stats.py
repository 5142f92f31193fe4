"""Statistics for the benchmark tables: DeLong's test for correlated AUCs, per-seed paired tests,
OLS with a slope p-value, and the verdict rule the claims section uses.

DeLong et al. (1988), computed with the O(n log n) algorithm of Sun & Xu (2014): each AUC is the
mean of its structural components V10 (one per positive) and V01 (one per negative); the covariance
of two AUCs on the same samples is S10/m + S01/n, where S10 and S01 are the sample covariances of
the components.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
# metric -> (task it comes from, larger is better)
METRICS = {
    "auc": ("classification", True),
    "logloss": ("classification", False),
    "rmse": ("regression", False),
    "mae": ("regression", False),
    "rmse_norm": ("regression", False),
    "mae_norm": ("regression", False),
}


def _midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    ranks = np.empty(n, dtype=float)
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1  # mean of positions i..j-1, 1-based
        i = j
    out = np.empty(n, dtype=float)
    out[order] = ranks
    return out


def delong_components(y, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,), V10 (k, m: one per positive) and V01 (k, n: one per negative) for k score vectors."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    m, n = int(y.sum()), int((~y).sum())
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both positive and negative samples")
    k = scores.shape[0]
    aucs, v10, v01 = np.empty(k), np.empty((k, m)), np.empty((k, n))
    for r in range(k):
        pos, neg = scores[r, y], scores[r, ~y]
        tx, ty, tz = _midrank(pos), _midrank(neg), _midrank(np.concatenate([pos, neg]))
        aucs[r] = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10[r] = (tz[:m] - tx) / n            # share of negatives each positive beats (ties 1/2)
        v01[r] = 1.0 - (tz[m:] - ty) / m      # share of positives that beat each negative
    return aucs, v10, v01


def delong_covariance(y, scores) -> tuple[np.ndarray, np.ndarray]:
    aucs, v10, v01 = delong_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(aucs), len(aucs)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(aucs), len(aucs)))
    return aucs, s10 / m + s01 / n


def auc_variance(y, p) -> tuple[float, float]:
    aucs, cov = delong_covariance(y, [p])
    return float(aucs[0]), float(cov[0, 0])


def delong_test(y, a, b) -> dict:
    """Two-sided test of AUC(a) = AUC(b) for two score vectors on the same samples."""
    aucs, cov = delong_covariance(y, [a, b])
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = float(2 * stats.norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "var": var, "z": float(z), "p": p}


def compare_seeds(a, b) -> dict:
    """Mean difference a - b and its p-value across seeds.

    Same seeds on both sides: paired t-test. One value on the b side (a deterministic baseline such
    as LLM-direct): one-sample t-test of a against it. Fewer than 2 values on the a side: no test."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(b) == 1 and len(a) >= 2:
        d = a - b[0]
        test = "one-sample t"
    elif len(a) == len(b) and len(a) >= 2:
        d = a - b
        test = "paired t"
    else:
        return {"diff": float(np.mean(a) - np.mean(b)) if len(a) and len(b) else float("nan"),
                "t": float("nan"), "p": float("nan"), "n": int(min(len(a), len(b))), "test": "none"}
    if np.allclose(d, d[0]):  # no spread: t is undefined; a constant non-zero gap is as sure as it gets
        p = 1.0 if abs(d[0]) < 1e-12 else 0.0
        return {"diff": float(d.mean()), "t": float("nan"), "p": p, "n": len(d), "test": test + " (constant)"}
    t, p = stats.ttest_1samp(d, 0.0)
    return {"diff": float(d.mean()), "t": float(t), "p": float(p), "n": len(d), "test": test}


def pct_improvement(ours: float, base: float, larger_is_better: bool) -> float:
    if base == 0 or not np.isfinite(base) or not np.isfinite(ours):
        return float("nan")
    return 100.0 * ((ours - base) if larger_is_better else (base - ours)) / abs(base)


def stars(p: float) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "***" if p < 0.01 else ("**" if p < 0.05 else "")


def ols(x, y) -> dict:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "p": float("nan"), "r": float("nan"), "n": len(x)}
    res = stats.linregress(x, y)
    return {"slope": float(res.slope), "intercept": float(res.intercept), "p": float(res.pvalue),
            "r": float(res.rvalue), "slope_se": float(res.stderr), "n": int(len(x))}


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def sign(diff: float, p: float, larger_is_better: bool, alpha: float = ALPHA) -> int:
    """+1: significantly better, -1: significantly worse, 0: no significant difference (or no test)."""
    if p is None or not np.isfinite(p) or p >= alpha or not np.isfinite(diff) or diff == 0:
        return 0
    return 1 if (diff > 0) == larger_is_better else -1


def verdict_better(signs: list[int]) -> str:
    """'A beats B': holds if A is significantly better on every compared metric, does not hold if
    it is significantly worse on any, inconclusive otherwise (or when nothing was compared)."""
    if not signs:
        return "inconclusive"
    if any(s < 0 for s in signs):
        return "does not hold"
    return "holds" if all(s > 0 for s in signs) else "inconclusive"


def verdict_not_worse(signs: list[int]) -> str:
    """'A matches B': holds if A is significantly worse on no metric."""
    if not signs:
        return "inconclusive"
    return "does not hold" if any(s < 0 for s in signs) else "holds"


def verdict_same(signs: list[int]) -> str:
    """'A and B do not differ': holds if no metric differs significantly."""
    if not signs:
        return "inconclusive"
    return "holds" if all(s == 0 for s in signs) else "does not hold"
