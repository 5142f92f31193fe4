"""LR-Recsys' explanation autoencoder (seed 002, section 3.4.2 and appendix 8.1).

As the appendix describes it (`decoder="embedding"`, the default): words -> ids (vocabulary from
the training split only) -> 8-d word embeddings, 50 slots, flattened (400) -> 64 -> 8 -> 64 -> 400,
reconstructing the embedded words (MSE over the real, non-padding slots). The 8-d bottleneck is
the explanation embedding; about 52k trainable parameters.

Choices the paper leaves open, made here:
- the word embeddings are a fixed, seeded random table (a buffer, not trained): trained jointly
  with a loss that reconstructs them, they collapse (all words equal reconstructs perfectly);
- padding slots carry no loss;
- Adam (lr `lr`), early stopping on the reconstruction loss of validation-split explanations;
- words seen fewer than `min_count` times in training map to <unk>, capping |V|.
`decoder="softmax"` keeps the earlier variant: 8 -> 64 -> 50 x |V| logits with a cross-entropy per
slot and trained word embeddings (3.3M parameters on the bench slice; it overfits within 5 epochs).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

PAD, UNK = 0, 1
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    return _TOKEN.findall(str(text or "").lower())


@dataclass
class AutoencoderConfig:
    max_words: int = 50
    word_dim: int = 8
    hidden: int = 64
    code_dim: int = 8
    decoder: str = "embedding"      # embedding (the paper's: reconstruct the 400 embedded values) | softmax
    lr: float = 3e-3
    batch_size: int = 256
    epochs: int = 100
    patience: int = 3
    min_count: int = 2
    max_vocab: int = 2000
    seed: int = 0


class ExplanationAutoencoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: AutoencoderConfig):
        super().__init__()
        if cfg.decoder not in ("embedding", "softmax"):
            from reasonrec.errors import ReasonrecError

            raise ReasonrecError(f"autoencoder decoder '{cfg.decoder}': embedding | softmax")
        self.cfg = cfg
        L, w = cfg.max_words, cfg.word_dim
        self.embed = nn.Embedding(vocab_size, w, padding_idx=PAD)
        if cfg.decoder == "embedding":
            gen = torch.Generator().manual_seed(cfg.seed)
            table = torch.randn(vocab_size, w, generator=gen)
            table[PAD] = 0.0
            self.embed.weight = nn.Parameter(table, requires_grad=False)
        out = L * w if cfg.decoder == "embedding" else L * vocab_size
        self.encoder = nn.Sequential(nn.Linear(L * w, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.code_dim))
        self.decoder = nn.Sequential(nn.Linear(cfg.code_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, out))
        self.vocab_size = vocab_size

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(ids).flatten(1))                 # (B, L) -> (B, L*w) -> (B, code)

    def forward(self, ids: torch.Tensor):
        code = self.encode(ids)
        if self.cfg.decoder == "embedding":
            return self.decoder(code).view(len(ids), self.cfg.max_words, self.cfg.word_dim), code   # (B, L, w)
        logits = self.decoder(code).view(len(ids), self.cfg.max_words, self.vocab_size)  # (B, L, V)
        return logits, code

    def loss(self, ids: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Reconstruction error of every real (non-padding) word: squared error of its embedded
        vector, or (softmax decoder) its cross-entropy. Softmax: slots past the batch's longest text
        have no words, so their slice of the output layer is skipped (same loss and gradients)."""
        if self.cfg.decoder == "embedding":
            recon, _ = self(ids)                                          # (B, L, w)
            mask = (ids != PAD).unsqueeze(-1)                             # (B, L, 1)
            err = ((recon - self.embed(ids)) ** 2 * mask).sum()
            return err / max(int(mask.sum()), 1) if reduction == "mean" else err
        used = int((ids != PAD).any(dim=0).nonzero().max()) + 1 if (ids != PAD).any() else 1
        hidden = self.decoder[:-1](self.encode(ids))                      # (B, hidden)
        out, V = self.decoder[-1], self.vocab_size
        logits = hidden @ out.weight[:used * V].T + out.bias[:used * V]   # (B, used * V)
        return nn.functional.cross_entropy(logits.view(-1, V), ids[:, :used].reshape(-1), ignore_index=PAD,
                                           reduction=reduction)


class AutoencoderEncoder:
    """Text -> 8-d codes, with fit/encode/save/load like the other encoders in `reasonrec.encode`."""

    name = "autoencoder"

    def __init__(self, cfg: AutoencoderConfig | None = None):
        self.cfg = cfg or AutoencoderConfig()
        self.vocab: dict[str, int] = {}
        self.model: ExplanationAutoencoder | None = None
        self.history: list[dict] = []

    @property
    def dim(self) -> int:
        return self.cfg.code_dim

    @property
    def n_params(self) -> int | None:
        return self.model.n_params if self.model is not None else None

    def ids(self, texts: list[str]) -> torch.Tensor:
        L = self.cfg.max_words
        out = np.zeros((len(texts), L), dtype="int64")
        for r, text in enumerate(texts):
            toks = [self.vocab.get(w, UNK) for w in words(text)[:L]]
            out[r, :len(toks)] = toks
        return torch.from_numpy(out)

    def fit(self, train_texts: list[str], valid_texts: list[str] | None = None, progress: bool = False):
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        counts = Counter(w for t in train_texts for w in words(t)[:cfg.max_words])
        kept = [w for w, c in counts.most_common(cfg.max_vocab) if c >= cfg.min_count]
        self.vocab = {w: i + 2 for i, w in enumerate(kept)}
        self.model = ExplanationAutoencoder(len(self.vocab) + 2, cfg)
        train_ids = self.ids(train_texts)
        valid_ids = self.ids(valid_texts) if valid_texts else None
        opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        best, best_state, bad = None, None, 0
        started = time.perf_counter()
        bar = tqdm(range(cfg.epochs), desc="autoencoder", disable=not progress, leave=False)
        for epoch in bar:
            self.model.train()
            order = torch.randperm(len(train_ids), generator=gen)
            total, n = 0.0, 0
            for s in range(0, len(order), cfg.batch_size):
                batch = train_ids[order[s:s + cfg.batch_size]]
                loss = self.model.loss(batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(batch)
                n += len(batch)
            record = {"epoch": epoch + 1, "train_loss": total / max(n, 1)}
            if valid_ids is not None and len(valid_ids):
                record["valid_loss"] = self.reconstruction_loss(valid_ids)
            self.history.append(record)
            watch = record.get("valid_loss", record["train_loss"])
            bar.set_postfix(loss=f"{watch:.3f}")
            if best is None or watch < best * (1 - 1e-3):      # a 0.1% gain, whatever the loss's scale
                best, best_state, bad = watch, copy.deepcopy(self.model.state_dict()), 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        if valid_ids is not None and len(valid_ids):    # once, at the end: a nearest-word search is not cheap
            self.history.append({"valid_word_acc": self.word_accuracy(valid_ids)})
        self.fit_seconds = time.perf_counter() - started
        return self

    @torch.no_grad()
    def reconstruction_loss(self, ids: torch.Tensor) -> float:
        self.model.eval()
        total = sum(self.model.loss(ids[s:s + 1024], reduction="sum").item() for s in range(0, len(ids), 1024))
        return total / max(int((ids != PAD).sum()), 1)

    @torch.no_grad()
    def word_accuracy(self, ids: torch.Tensor) -> float:
        """Share of real words recovered: the argmax word (softmax decoder) or the nearest word
        embedding to the reconstructed vector (embedding decoder)."""
        self.model.eval()
        if self.cfg.decoder == "embedding":
            table = self.model.embed.weight[2:]                          # real words only (no pad, unk)
            hit, count = 0, 0
            for s in range(0, len(ids), 1024):
                batch = ids[s:s + 1024]
                recon = self.model(batch)[0]
                mask = batch >= 2
                pred = torch.cdist(recon[mask], table).argmin(-1) + 2
                hit += int((pred == batch[mask]).sum())
                count += int(mask.sum())
            return hit / max(count, 1)
        hit, count = 0, 0
        for s in range(0, len(ids), 1024):
            batch = ids[s:s + 1024]
            pred = self.model(batch)[0].argmax(-1)
            mask = batch != PAD
            hit += int((pred[mask] == batch[mask]).sum())
            count += int(mask.sum())
        return hit / max(count, 1)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        self.model.eval()
        ids = self.ids(texts)
        return torch.cat([self.model.encode(ids[s:s + 4096]) for s in range(0, len(ids), 4096)] or
                         [torch.zeros(0, self.dim)]).numpy()

    def save(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), path / "autoencoder.pt")
        (path / "autoencoder.json").write_text(json.dumps({"config": asdict(self.cfg), "vocab": self.vocab,
                                                           "history": self.history}))

    @classmethod
    def load(cls, path: Path) -> "AutoencoderEncoder":
        meta = json.loads((path / "autoencoder.json").read_text())
        enc = cls(AutoencoderConfig(**meta["config"]))
        enc.vocab, enc.history = meta["vocab"], meta.get("history", [])
        enc.model = ExplanationAutoencoder(len(enc.vocab) + 2, enc.cfg)
        enc.model.load_state_dict(torch.load(path / "autoencoder.pt", weights_only=True))
        return enc
