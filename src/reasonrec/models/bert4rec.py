"""BERT4Rec (Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019), adapted from cloze training to scoring a given
(user, candidate) pair.

Followed: item embeddings plus learned positional embeddings, a stack of *bidirectional*
Transformer blocks (GELU feed-forward), a [MASK] token appended after the history — the paper's
inference setup, where the item at the appended [MASK] position is what is predicted — and the
score of an item = the dot product of that position's output with the item's embedding (shared
item table, the paper's output layer).

Adaptation: no cloze pre-training over random masked positions; the sequence is
[h_1 .. h_H ; MASK + e_candidate]: the last token is a learned [MASK] vector *plus* the
candidate's embedding, so every history item can attend to the candidate and the candidate to
them in both directions, and the model trains on our labels (pointwise BCE/MSE). The logit is
    o_last . e_candidate  +  MLP([o_last ; other field tokens])
where the MLP (`cfg.mlp`) reads user, candidate, context, side fields and, when on, the two
explanation tokens. Padded history positions are masked as keys (the last token is always real).
Knobs: `extra["layers"]` (2), `extra["heads"]` (2, the paper's).
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens, TransformerBlock

KNOBS = {"layers": 2, "heads": 2}


class BERT4Rec(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.fields = FieldTokens(cfg, d, history=False)
        self.mask_token = nn.Parameter(torch.randn(d) * 0.01)
        self.pos = nn.Embedding(cfg.history_len + 1, d)
        self.drop = nn.Dropout(cfg.dropout)
        extra = {**KNOBS, **cfg.extra}
        self.blocks = nn.ModuleList(TransformerBlock(d, extra["heads"], cfg.dropout, act="gelu")
                                    for _ in range(extra["layers"]))
        self.ln = nn.LayerNorm(d)
        self.head = mlp((self.fields.n_fields + 1) * d, tuple(cfg.mlp), out_dim=1, dropout=cfg.dropout)
        nn.init.normal_(self.pos.weight, std=0.01)

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.fields(batch)                                                 # (B, F, d)
        cand = x[:, 1]                                                         # (B, d)
        hist, mask = self.fields.history_seq(batch)                            # (B, H, d), (B, H)
        seq = torch.cat([hist, (self.mask_token + cand).unsqueeze(1)], dim=1)  # (B, H+1, d)
        keys = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)       # (B, H+1) last is real
        h = self.drop(seq + self.pos.weight)                                   # (B, H+1, d)
        attn_mask = keys.unsqueeze(1).expand(-1, keys.shape[1], -1)            # (B, H+1, H+1) bidirectional
        for block in self.blocks:
            h = block(h, attn_mask)                                            # (B, H+1, d)
        o = self.ln(h[:, -1])                                                  # (B, d) the [MASK] slot
        dot = (o * cand).sum(-1)                                               # (B,) o . candidate
        return dot + self.head(torch.cat([o, x.flatten(1)], dim=1)).squeeze(-1)  # (B,) logits
