"""Sentence-encoder explanation embeddings (LR-Recsys Ablation 2's "no autoencoder" alternative).

The embedded all-MiniLM-L6-v2 (384-d) is a frozen, general-purpose encoder; the recommender's
explanation input projects it to its own width. Nothing is fitted here, so `fit` is a no-op kept
for the common encoder interface.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class SentenceEncoder:
    name = "sentence"
    dim = 384

    def __init__(self, batch_size: int = 128):
        self.batch_size = batch_size
        self._model = None

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            from reasonrec.assets import minilm_dir

            self._model = SentenceTransformer(str(minilm_dir()), device="cpu")
        return self._model

    def fit(self, train_texts, valid_texts=None, progress: bool = False):
        return self

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype="float32")
        return self._load().encode([t or "" for t in texts], batch_size=self.batch_size, show_progress_bar=progress,
                                   convert_to_numpy=True, normalize_embeddings=True).astype("float32")

    def save(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "sentence.json").write_text(json.dumps({"batch_size": self.batch_size}))

    @classmethod
    def load(cls, path: Path) -> "SentenceEncoder":
        return cls(**json.loads((path / "sentence.json").read_text()))
