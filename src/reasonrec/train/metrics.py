"""Metrics the papers report: AUC and LogLoss (classification), RMSE and MAE (regression)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def logloss(y: np.ndarray, p: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def classification_metrics(y, p) -> dict:
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    return {"auc": auc(y, p), "logloss": logloss(y, p)}


def regression_metrics(y, pred, scale: tuple[float, float]) -> dict:
    """RMSE/MAE on the rating scale, and on ratings normalised to [0, 1] — the scale whose numbers
    (0.1-0.3) LR-Recsys' tables report."""
    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    err = pred - y
    width = scale[1] - scale[0]
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "rmse_norm": float(np.sqrt(np.mean(err ** 2)) / width), "mae_norm": float(np.mean(np.abs(err)) / width)}


def metrics_for(task: str, y, pred, scale=(1.0, 5.0)) -> dict:
    return classification_metrics(y, pred) if task == "classification" else regression_metrics(y, pred, scale)


# The metric early stopping watches, and whether larger is better.
SELECTION = {"classification": ("auc", True), "regression": ("rmse", False)}
