"""LLM hidden-state explanation embeddings (LR-Recsys Ablation 2: "the raw embeddings produced by
the LLM", no autoencoder).

The explanation text is run through the same embedded LLM that wrote it; the last layer's hidden
states are mean-pooled over the text's tokens (576-d for SmolLM2-135M). Nothing is fitted; the
recommender's explanation input projects the vectors to its own width. Encoded texts are cached in
memory, since the same sentence often recurs across samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class LLMHiddenEncoder:
    name = "llm"

    def __init__(self, llm: str = "embedded", batch_size: int = 64):
        self.llm, self.batch_size = llm, batch_size
        self._backend = None
        self._cache: dict[str, np.ndarray] = {}

    def _load(self):
        if self._backend is None:
            from reasonrec.llm import get_backend

            self._backend = get_backend(self.llm)
        return self._backend

    @property
    def dim(self) -> int:
        return int(self._load().model.config.hidden_size)

    def fit(self, train_texts, valid_texts=None, progress: bool = False):
        return self

    @torch.inference_mode()
    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        backend = self._load()
        tok, model = backend.tokenizer, backend.model
        todo = sorted({t or "" for t in texts} - set(self._cache), key=len)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            enc = tok([t or " " for t in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            hidden = model.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)                  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)                    # (B, H)
            for text, vec in zip(chunk, pooled.float().numpy()):
                self._cache[text] = vec
        return np.stack([self._cache[t or ""] for t in texts]) if texts else np.zeros((0, self.dim), "float32")

    def save(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "llm_hidden.json").write_text(json.dumps({"llm": self.llm, "batch_size": self.batch_size}))

    @classmethod
    def load(cls, path: Path) -> "LLMHiddenEncoder":
        return cls(**json.loads((path / "llm_hidden.json").read_text()))
