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

Chosen: an L2 on the embedding tables (`embed_reg` 3e-3, FuxiCTR's `embedding_regularizer`). Without
it DeepFM peaks on validation at epoch 11-13; swept over {0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3,
1e-2} on full ML-100K, the mean validation AUC over 3 seeds rises from 0.7722 to 0.7765 at 3e-3
and falls at 1e-2 (test AUC 0.7858 -> 0.7892, LogLoss 0.570 -> 0.558; best epochs 19-35).
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens

DEFAULTS = {"train": {"embed_reg": 3e-3}}


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
