"""LR-Recsys' DNN recommendation component (Wang et al., seed 002, sections 3.5, 8.2, 8.3).

Inputs, each an 8-d vector:  E_pos, E_neg (explanation embeddings), E_user, E_item, E_seq (self-
attention then GRU over the last 5 items), E_context (an MLP over the context fields). A single-head
self-attention across these six "tokens" lets each input attend to the others; the attention
weights are kept for analysis (the paper's figures 7, 9, 10). The flattened output goes through an
MLP [64, 8, 1].

Choices the paper leaves open, made here:
- the history self-attention is single-head scaled dot-product with learned Q, K, V (eq. 6-9) and
  the GRU reads its output (eq. 10-13); padded history slots are masked as keys and are zeros;
- without explanations (a plain baseline) the input attention runs over the four other tokens;
- side features (genres, age, ...) are off by default, as in the paper; when on, they join
  the context MLP.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reasonrec.models.base import ExplanationInput, ModelConfig, SideFields, mlp

INPUT_NAMES = ["pos", "neg", "user", "item", "seq", "context"]


class SelfAttention(nn.Module):
    """Single-head scaled dot-product self-attention (LR-Recsys eq. 6-9 and 26-28)."""

    def __init__(self, d: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None):
        # x: (B, T, d); key_mask: (B, T), True where a token may be attended to
        scores = self.q(x) @ self.k(x).transpose(1, 2) * self.scale          # (B, T, T)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask.unsqueeze(1), -1e9)
        weights = scores.softmax(dim=-1)                                       # rows sum to 1
        return weights @ self.v(x), weights                                    # (B, T, d), (B, T, T)


class LRRecsysNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        self.user_emb = nn.Embedding(cfg.n_users, d)
        self.item_emb = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.hist_attn = SelfAttention(d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.side = SideFields(cfg, d, include_ctx=True)
        self.ctx_mlp = mlp(self.side.n_fields * d, (d,), out_dim=None) if self.side.n_fields else None
        self.expl = ExplanationInput(cfg.expl_dim, d, cfg.expl_mode, cfg.expl_slots) if cfg.uses_explanations else None
        n_tokens = 3 + (self.ctx_mlp is not None) + (cfg.expl_slots if self.expl is not None else 0)
        self.input_attn = SelfAttention(d)
        self.head = mlp(n_tokens * d, tuple(cfg.mlp), out_dim=1, dropout=cfg.dropout)
        self.input_names = (INPUT_NAMES[:cfg.expl_slots] if self.expl is not None else []) + \
            ["user", "item", "seq"] + (["context"] if self.ctx_mlp is not None else [])
        self.last_attention: torch.Tensor | None = None
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, batch: dict) -> torch.Tensor:
        B = batch["user"].shape[0]
        e_user = self.user_emb(batch["user"])                                  # (B, d)
        e_item = self.item_emb(batch["item"])                                  # (B, d)

        hist = self.item_emb(batch["hist"])                                    # (B, H, d), oldest first
        mask = batch["hist"] > 0                                               # (B, H)
        h, _ = self.hist_attn(hist, mask)
        h = h * mask.unsqueeze(-1)                                             # padded slots stay empty
        _, last = self.gru(h)                                                  # left padding: last step = newest item
        e_seq = last.squeeze(0)                                                # (B, d)

        tokens = [e_user, e_item, e_seq]
        if self.ctx_mlp is not None:
            tokens.append(self.ctx_mlp(self.side(batch).flatten(1)))          # (B, d)
        x = torch.stack(tokens, dim=1)                                         # (B, T, d)
        if self.expl is not None:
            x = torch.cat([self.expl(batch, B), x], dim=1)                     # pos, neg first

        y, attn = self.input_attn(x)                                           # (B, T, d), (B, T, T)
        self.last_attention = attn.detach()
        return self.head(y.flatten(1)).squeeze(-1)                             # (B,) logits

    @staticmethod
    def attention_shares(attn: torch.Tensor) -> torch.Tensor:
        """The paper's eq. 24: attention each input *receives*, averaged over the attending inputs.
        Rows of `attn` sum to 1, so the shares of one sample sum to 1 too."""
        return attn.mean(dim=1)                                                # (B, T)
