"""DIN (Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018).

Followed: the local activation unit scores each history item h against the candidate t with an
MLP over [h, t, h - t, h * t] (hidden 36, PReLU; the paper's figure 2 uses the outer product,
its released code the difference and product used here); the user interest is the *weighted sum*
of the history embeddings with these raw scores — sum pooling without softmax, as in the paper
(section 4.3 relaxes sum(w) = 1 and drops the softmax to keep the intensity of user interests);
padded history slots get weight 0. The interest vector, concatenated with the other field embeddings,
goes through an MLP (`cfg.mlp`) to the logit.

Chosen: behaviours are item ids only (the batch carries no per-history-item categories, so the
paper's goods_id + cate_id behaviour embedding reduces to goods_id); the main MLP uses ReLU,
not Dice; no mini-batch-aware regularisation (plain Adam, optional weight decay in the trainer).

Other fields (`FieldTokens` without pooled history): user, candidate item, context, side fields;
explanations are two more field embeddings in the MLP input.
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens

KNOBS = {"attention_hidden": 36}


class ActivationUnit(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 * d, hidden), nn.PReLU(), nn.Linear(hidden, 1))

    def forward(self, hist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.unsqueeze(1).expand_as(hist)                                # (B, H, d)
        return self.net(torch.cat([hist, t, hist - t, hist * t], dim=-1)).squeeze(-1)  # (B, H)


class DIN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.fields = FieldTokens(cfg, d, history=False)
        self.attention = ActivationUnit(d, {**KNOBS, **cfg.extra}["attention_hidden"])
        self.head = mlp((self.fields.n_fields + 1) * d, tuple(cfg.mlp), out_dim=1, dropout=cfg.dropout)

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.fields(batch)                                                 # (B, F, d)
        target = x[:, 1]                                                       # (B, d) candidate item
        hist, mask = self.fields.history_seq(batch)                            # (B, H, d), (B, H)
        w = self.attention(hist, target) * mask                                # (B, H), no softmax
        interest = (w.unsqueeze(-1) * hist).sum(1)                             # (B, d) weighted sum pooling
        z = torch.cat([interest, x.flatten(1)], dim=1)                         # (B, (F + 1) d)
        return self.head(z).squeeze(-1)                                        # (B,) logits
