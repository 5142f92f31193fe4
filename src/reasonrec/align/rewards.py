"""The ExpCTR rewards, as pure functions of judge log-odds, labels and CTR probabilities.

Notation for one (user, item) sample and one generated explanation e:
  z      judge log-odds of "Yes" given e and the candidate's text (never the history or label);
         p = sigmoid(z + b), b a per-task calibration intercept (see `calibration_bias`)
  y      the observed label (train split only)
  q      the ID-based CTR model's predicted probability for the same pair

  LC(e) = log P_judge(y | e) = y log p + (1 - y) log(1 - p)          (<= 0; 0 = judge certain and right)
  IC(e) = -KL(Bern(q) || Bern(p)) = -[q log(q/p) + (1-q) log((1-q)/(1-p))]   ("kl", default; <= 0)
        = -(p - q)^2                                                         ("sq")
  FMT(e) = 0 if e is one clean sentence in the requested format, else -1
  R(e)  = w_lc LC + w_ic IC + w_fmt FMT

LC is the negative cross-entropy of the judge against the label; IC the same against the CTR
model's soft label, minus that label's entropy (so a perfect match scores 0 whatever q is).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from reasonrec.explain.cleanup import Cleaned, clean


def log_sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, float)
    return -np.logaddexp(0.0, -z)


def lc_reward(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log P_judge(true label); z = judge log-odds of Yes (calibrated)."""
    z, y = np.asarray(z, float), np.asarray(labels, float)
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("LC reward needs 0/1 labels (train split only)")
    return y * log_sigmoid(z) + (1.0 - y) * log_sigmoid(-z)


def ic_reward(z: np.ndarray, q: np.ndarray, kind: str = "kl", eps: float = 1e-6) -> np.ndarray:
    """Agreement of the judge's probability with the CTR model's q: -KL(q || p) or -(p - q)^2."""
    z = np.asarray(z, float)
    q = np.clip(np.asarray(q, float), eps, 1.0 - eps)
    if kind == "kl":
        return -(q * (np.log(q) - log_sigmoid(z)) + (1.0 - q) * (np.log1p(-q) - log_sigmoid(-z)))
    if kind == "sq":
        return -((1.0 / (1.0 + np.exp(-z))) - q) ** 2
    raise ValueError(f"IC distance {kind!r}: expected kl | sq")


def format_check(prefix: str, continuation: str, finish_reason: str = "stop") -> Cleaned:
    """The store's clean-up: the text the judge reads, and whether any repair was needed."""
    return clean(prefix, continuation, finish_reason)


def compliant(cleaned: Cleaned) -> bool:
    """One sentence, in the forced format, that needed no repair (the store's status 'ok')."""
    return cleaned.ok and not cleaned.repairs


def format_reward(ok: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(ok, bool), 0.0, -1.0)


@dataclass
class RewardWeights:
    lc: float = 1.0
    ic: float = 0.0
    fmt: float = 0.5
    ic_kind: str = "kl"

    def as_dict(self) -> dict:
        return asdict(self)


def total_reward(w: RewardWeights, z: np.ndarray, labels: np.ndarray | None, q: np.ndarray | None,
                 ok: np.ndarray) -> dict[str, np.ndarray]:
    """Every component and the weighted total (components with weight 0 are still reported
    when their inputs are given, so curves show what was not optimised too)."""
    z = np.asarray(z, float)
    parts: dict[str, np.ndarray] = {"fmt": format_reward(ok)}
    total = w.fmt * parts["fmt"]
    if labels is not None:
        parts["lc"] = lc_reward(z, labels)
        total = total + w.lc * parts["lc"]
    elif w.lc:
        raise ValueError("LC weight > 0 but no labels given")
    if q is not None:
        parts["ic"] = ic_reward(z, q, w.ic_kind)
        total = total + w.ic * parts["ic"]
    elif w.ic:
        raise ValueError("IC weight > 0 but no CTR probabilities given")
    parts["total"] = total
    return parts


def calibration_bias(z: np.ndarray, target_rate: float) -> float:
    """Intercept b with mean(sigmoid(z + b)) = target_rate (bisection): removes the judge's
    overall Yes/No bias for one prompt task, so p is on the scale of the label rate / q."""
    z = np.asarray(z, float)
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(z + mid)))) < target_rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class LabelLeak(KeyError):
    """A reward asked for the label of a sample outside the train split."""


class TrainLabels:
    """sample_id -> label for train-split samples only; any other id raises `LabelLeak`.

    Built from the samples table, it drops every non-train row before anything else sees the
    labels, and records which ids were read (tests check the set)."""

    def __init__(self, samples):
        train = samples[samples["split"] == "train"]
        self._labels = dict(zip(train["sample_id"].astype(int), train["label"].astype(int)))
        self.read: set[int] = set()

    def __getitem__(self, sample_id: int) -> int:
        if sample_id not in self._labels:
            raise LabelLeak(f"sample {sample_id} is not in the train split: its label may not reach a reward")
        self.read.add(int(sample_id))
        return self._labels[sample_id]

    def __contains__(self, sample_id) -> bool:
        return sample_id in self._labels

    def __len__(self) -> int:
        return len(self._labels)

    def rate(self) -> float:
        return float(np.mean(list(self._labels.values()))) if self._labels else 0.5


class AlignmentReward:
    """prompts + cleaned completions -> {"lc", "ic", "fmt", "total", "z", "p_yes"} arrays.

    judge: `.logits(texts, candidates)` (log-odds of Yes); labels: `TrainLabels`; ctr_q:
    sample_id -> the CTR model's probability (only needed when weights.ic > 0 or for logging);
    bias: per-task calibration intercept added to the judge's log-odds."""

    def __init__(self, judge, weights: RewardWeights, labels: TrainLabels | None = None,
                 ctr_q: dict | None = None, bias: dict | None = None):
        self.judge, self.w, self.labels, self.ctr_q = judge, weights, labels, ctr_q
        self.bias = dict(bias or {})

    def __call__(self, prompts, cleaned) -> dict[str, np.ndarray]:
        z = np.asarray(self.judge.logits([c.text for c in cleaned], [p.candidate for p in prompts]), float)
        z = z + np.array([self.bias.get(p.task, 0.0) for p in prompts])
        ok = np.array([compliant(c) for c in cleaned])
        labels = np.array([self.labels[p.sample_id] for p in prompts]) if self.labels is not None else None
        q = np.array([self.ctr_q[p.sample_id] for p in prompts]) if self.ctr_q is not None else None
        parts = total_reward(self.w, z, labels, q, ok)
        parts["z"] = z
        parts["p_yes"] = 1.0 / (1.0 + np.exp(-z))
        return parts
