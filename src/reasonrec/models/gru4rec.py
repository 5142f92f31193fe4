"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks",
ICLR 2016), adapted from next-item ranking to scoring a given (user, candidate) pair.

Followed: one GRU layer reads the history item embeddings in time order; its final hidden state
is the session (here: recent-history) representation, and the score of an item is the dot product
of that state with the item's embedding (the paper's output layer; its item weights are tied to
the input item table here, as in the later GRU4Rec releases' "constrained embeddings").

Adaptation: instead of a softmax/BPR/TOP1 ranking loss over all next items, the model is a
pointwise scorer trained on our labels (BCE or MSE through the trainer). Its logit is
    s . e_candidate  +  MLP([s ; other field tokens])
where s is the final GRU state, so the candidate is both dotted with the state (GRU4Rec's scoring)
and concatenated to it together with user, context, side fields and, when on, the two
explanation tokens (the MLP part, hidden sizes `cfg.mlp`). Left padding is skipped exactly: the
state only updates on real history items (a GRUCell stepped over the H = 5 slots), so a user with
no history has s = 0.
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens


class GRU4Rec(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.fields = FieldTokens(cfg, d, history=False)
        self.gru = nn.GRUCell(d, d)
        self.head = mlp((self.fields.n_fields + 1) * d, tuple(cfg.mlp), out_dim=1, dropout=cfg.dropout)

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.fields(batch)                                                 # (B, F, d)
        hist, mask = self.fields.history_seq(batch)                            # (B, H, d), (B, H)
        s = hist.new_zeros(hist.shape[0], hist.shape[2])                       # (B, d)
        for t in range(hist.shape[1]):                                         # oldest -> newest
            s = torch.where(mask[:, t:t + 1], self.gru(hist[:, t], s), s)      # pads leave s unchanged
        dot = (s * x[:, 1]).sum(-1)                                            # (B,) state . candidate
        return dot + self.head(torch.cat([s, x.flatten(1)], dim=1)).squeeze(-1)  # (B,) logits
