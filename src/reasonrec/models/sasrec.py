"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), adapted from
next-item prediction to scoring a given (user, candidate) pair.

Followed: item embeddings plus learned positional embeddings over the history, dropout, a stack of
causal self-attention blocks (pre-LayerNorm, point-wise feed-forward, residuals; padded positions
zeroed after each block as in the reference code), a final LayerNorm, and the score of an item =
the dot product of the *last* position's output with the item's embedding (shared item table).

Adaptation: the paper trains every position to predict the next item with sampled negatives; here
only the last position (the newest history item, since histories are left-padded) is scored
against the candidate, and the model trains on our labels (pointwise BCE/MSE via the trainer).
The logit is   o_last . e_candidate  +  MLP([o_last ; other field tokens])   where the MLP
(`cfg.mlp`) reads user, candidate, context, side fields and, when on, the two explanation tokens.
Padded keys are masked; a padded query may attend to itself (so no attention row is empty); a
user with no history gets the final LayerNorm of zeros (a learned constant).
Knobs: `extra["layers"]` (2), `extra["heads"]` (1, as in the paper).
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens, TransformerBlock

KNOBS = {"layers": 2, "heads": 1}


class SASRec(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.fields = FieldTokens(cfg, d, history=False)
        self.pos = nn.Embedding(cfg.history_len, d)
        self.drop = nn.Dropout(cfg.dropout)
        extra = {**KNOBS, **cfg.extra}
        self.blocks = nn.ModuleList(TransformerBlock(d, extra["heads"], cfg.dropout)
                                    for _ in range(extra["layers"]))
        self.ln = nn.LayerNorm(d)
        self.head = mlp((self.fields.n_fields + 1) * d, tuple(cfg.mlp), out_dim=1, dropout=cfg.dropout)
        nn.init.normal_(self.pos.weight, std=0.01)

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.fields(batch)                                                 # (B, F, d)
        hist, mask = self.fields.history_seq(batch)                            # (B, H, d), (B, H)
        H = hist.shape[1]
        h = self.drop(hist + self.pos.weight) * mask.unsqueeze(-1)             # (B, H, d)
        causal = torch.ones(H, H, dtype=torch.bool, device=h.device).tril()    # (H, H) key j <= query i
        eye = torch.eye(H, dtype=torch.bool, device=h.device)
        attn_mask = causal & (mask.unsqueeze(1) | eye)                         # (B, H, H)
        for block in self.blocks:
            h = block(h, attn_mask) * mask.unsqueeze(-1)                       # (B, H, d)
        o = self.ln(h[:, -1])                                                  # (B, d) newest position
        dot = (o * x[:, 1]).sum(-1)                                            # (B,) o . candidate
        return dot + self.head(torch.cat([o, x.flatten(1)], dim=1)).squeeze(-1)  # (B,) logits
