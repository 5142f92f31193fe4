"""DeepFM (Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction",
IJCAI 2017).

Followed: one shared embedding per field feeds both parts (no pre-training); the FM part is a
first-order term (a scalar weight per feature) plus the second-order term
0.5 * sum_k[(sum_i e_ik)^2 - sum_i e_ik^2]; the deep part is an MLP over the concatenated field
embeddings; logit = bias + first order + second order + DNN.

Fields (`FieldTokens`): user, item, the mean-pooled history, context, and, with `side_features`,
age, gender, occupation, year and the mean-pooled genre bag. Explanations are two more fields:
their projected vectors take part in the pairwise FM interactions and the DNN like any other field
embedding, and a second (1-wide) projection of them is their first-order weight.
The DNN's hidden sizes are `cfg.mlp`.
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens


class DeepFM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.fields = FieldTokens(cfg, d)                 # shared embeddings, (B, F, d)
        self.linear = FieldTokens(cfg, 1)                 # first-order weights, (B, F, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        self.dnn = mlp(self.fields.n_fields * d, tuple(cfg.mlp), out_dim=1, dropout=cfg.dropout)

    def forward(self, batch: dict) -> torch.Tensor:
        e = self.fields(batch)                                                 # (B, F, d)
        first = self.linear(batch).sum(dim=(1, 2))                             # (B,)
        second = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)              # (B,)
        deep = self.dnn(e.flatten(1)).squeeze(-1)                              # (B,)
        return self.bias + first + second + deep                               # (B,) logits
