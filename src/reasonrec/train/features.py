"""Samples -> the tensors every model reads (the model-input contract of DESIGN.md).

A batch is a dict of tensors:
  user (B,), item (B,)                     ids; 0 = padding, 1 = not seen in training
  hist (B, H)                              the last H items, oldest first, left-padded with 0
  ctx (B, C)                               categorical context codes (hour, weekday), +1 shifted
  user_feats (B, U), item_feats (B, I)     categorical side fields, 0 = unknown
  item_cats (B, K)                         multi-valued item categories (genres), 0-padded
  expl_pos, expl_neg (B, d)                optional explanation embeddings
  label (B,), rating (B,)                  targets
Vocabularies come from the training split only, so nothing about test ids leaks into the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

PAD, OOV = 0, 1
MAX_CATS = 6


def _vocab(values) -> dict[str, int]:
    return {v: i + 2 for i, v in enumerate(sorted(set(values)))}


def _tokens(values: pd.Series) -> pd.Series:
    """Side-feature values -> category tokens: numeric features are stored as numbers (1995.0, NaN
    missing) and read here as the strings they were ("1995", "")."""
    def token(v) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    return values.map(token)


def _split_cats(text: str) -> list[str]:
    return [c.strip() for c in str(text or "").split(",") if c.strip()]


@dataclass
class FeatureSpec:
    users: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    ctx_fields: dict[str, int] = field(default_factory=dict)       # name -> cardinality (incl. 0)
    user_fields: dict[str, dict] = field(default_factory=dict)     # name -> value vocab
    item_fields: dict[str, dict] = field(default_factory=dict)
    categories: dict[str, int] = field(default_factory=dict)
    history_len: int = 5
    rating_scale: tuple[float, float] = (1.0, 5.0)

    @property
    def n_users(self) -> int:
        return len(self.users) + 2

    @property
    def n_items(self) -> int:
        return len(self.items) + 2

    def cardinalities(self) -> dict:
        """Sizes every model needs to build its embedding tables."""
        return {
            "n_users": self.n_users, "n_items": self.n_items, "history_len": self.history_len,
            "ctx": list(self.ctx_fields.values()),
            "user_fields": [len(v) + 1 for v in self.user_fields.values()],
            "item_fields": [len(v) + 1 for v in self.item_fields.values()],
            "n_categories": len(self.categories) + 1,
        }

    def save(self, path: Path):
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "FeatureSpec":
        raw = json.loads(path.read_text())
        raw["rating_scale"] = tuple(raw["rating_scale"])
        return cls(**raw)


class Featurizer:
    def __init__(self, spec: FeatureSpec | None = None, side_features: bool = True):
        self.spec = spec
        self.side_features = side_features

    def fit(self, train: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
            rating_scale=(1.0, 5.0), history_len: int = 5) -> "Featurizer":
        ctx = {c: int(train[c].max()) + 2 for c in train.columns if c.startswith("ctx_")}
        seen_items = set(train["item_id"]) | {i for h in train["history"] for i in h}
        spec = FeatureSpec(users=_vocab(train["user_id"]), items=_vocab(seen_items), ctx_fields=ctx,
                           history_len=history_len, rating_scale=tuple(rating_scale))
        if self.side_features:
            item_rows = items[items["item_id"].isin(seen_items)]
            user_rows = users[users["user_id"].isin(set(train["user_id"]))]
            spec.item_fields = {c: {v: i + 1 for i, v in enumerate(sorted(_tokens(item_rows[c]).unique()))}
                                for c in items.columns if c.startswith("feat_")}
            spec.user_fields = {c: {v: i + 1 for i, v in enumerate(sorted(_tokens(user_rows[c]).unique()))}
                                for c in users.columns if c.startswith("feat_")}
            cats = {c for text in item_rows.get("categories", pd.Series(dtype=str)) for c in _split_cats(text)}
            spec.categories = {c: i + 1 for i, c in enumerate(sorted(cats))}
        self.spec = spec
        return self

    def transform(self, samples: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame,
                  explanations: tuple[np.ndarray, np.ndarray] | None = None) -> "TensorData":
        spec = self.spec
        n = len(samples)
        out: dict[str, np.ndarray] = {
            "user": samples["user_id"].map(spec.users).fillna(OOV).to_numpy("int64"),
            "item": samples["item_id"].map(spec.items).fillna(OOV).to_numpy("int64"),
        }
        hist = np.zeros((n, spec.history_len), dtype="int64")
        for r, h in enumerate(samples["history"]):
            h = list(h)[-spec.history_len:]
            if h:
                hist[r, spec.history_len - len(h):] = [spec.items.get(i, OOV) for i in h]
        out["hist"] = hist
        ctx_cols = list(spec.ctx_fields)
        out["ctx"] = (np.stack([np.clip(samples[c].to_numpy("int64") + 1, 0, spec.ctx_fields[c] - 1)
                                for c in ctx_cols], axis=1) if ctx_cols else np.zeros((n, 0), dtype="int64"))
        out["user_feats"] = _lookup_fields(samples["user_id"], users, "user_id", spec.user_fields)
        out["item_feats"] = _lookup_fields(samples["item_id"], items, "item_id", spec.item_fields)
        cats = np.zeros((n, MAX_CATS), dtype="int64")
        if spec.categories:
            by_item = dict(zip(items["item_id"], items["categories"]))
            for r, item in enumerate(samples["item_id"]):
                codes = [spec.categories[c] for c in _split_cats(by_item.get(item)) if c in spec.categories]
                cats[r, :len(codes[:MAX_CATS])] = codes[:MAX_CATS]
        out["item_cats"] = cats
        out["label"] = samples["label"].to_numpy("float32")
        out["rating"] = samples["rating"].to_numpy("float32")
        if explanations is not None:
            out["expl_pos"], out["expl_neg"] = (np.asarray(e, dtype="float32") for e in explanations)
        return TensorData({k: torch.from_numpy(np.array(v, copy=True)) for k, v in out.items()})


def _lookup_fields(ids: pd.Series, table: pd.DataFrame, key: str, fields: dict) -> np.ndarray:
    if not fields:
        return np.zeros((len(ids), 0), dtype="int64")
    indexed = table.drop_duplicates(key).set_index(key)
    cols = []
    for name, vocab in fields.items():
        values = ids.map(_tokens(indexed[name])) if name in indexed.columns else pd.Series([None] * len(ids))
        cols.append(values.map(vocab).fillna(0).to_numpy("int64"))
    return np.stack(cols, axis=1)


class TensorData:
    """A dict of equally long tensors with mini-batching."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        lengths = {len(v) for v in tensors.values()}
        assert len(lengths) == 1, f"tensors of unequal length: {lengths}"
        self.n = lengths.pop()

    def __len__(self) -> int:
        return self.n

    def with_(self, **extra: torch.Tensor) -> "TensorData":
        return TensorData({**self.tensors, **extra})

    def subset(self, index) -> "TensorData":
        index = torch.as_tensor(index)
        return TensorData({k: v[index] for k, v in self.tensors.items()})

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None):
        # one gather per tensor per epoch, then batches are contiguous views (not a gather per batch)
        tensors = self.tensors
        if shuffle:
            order = torch.randperm(self.n, generator=generator)
            tensors = {k: v[order] for k, v in tensors.items()}
        for start in range(0, self.n, batch_size):
            yield {k: v[start:start + batch_size] for k, v in tensors.items()}
