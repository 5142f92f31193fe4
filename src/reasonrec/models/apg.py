"""APG — Adaptive Parameter Generation (Yan et al., "APG: Adaptive Parameter Generation Network for
Click-Through Rate Prediction", NeurIPS 2022, arXiv 2203.16218) on a plain embedding + MLP backbone.

Followed: every hidden layer of the deep network gets instance-specific weights generated from a
condition vector z, in the paper's low-rank, decomposed form

    W(z) = U · S(z) · V,      h_out = act(U S(z) V h_in + b)

with U (out x k) and V (k x in) shared by all instances and only the small k x k core S(z)
generated per instance — so generation costs O(k^2) per layer instead of O(in * out), and
V h is computed once before the per-instance k x k product. k = `extra["rank"]` (8).

Chosen: the condition is the "group-wise" user-and-context one — the concatenated user id,
context and (with `side_features`) user side-field tokens; S(z) is one linear map of z,
initialised to the identity so training starts as a plain low-rank MLP; no over-parameterisation
of U/V (the paper's optional extra factor). The backbone input is every field token
(`FieldTokens`: user, item, pooled history, context, side fields); explanations are two more
input fields (they shape what the generated layers read, not the generated weights themselves).
Hidden sizes: `cfg.mlp`; the output layer (to the logit) is an ordinary shared linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig
from reasonrec.models.fields import FieldTokens

KNOBS = {"rank": 8}


class APGLayer(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, cond_dim: int, rank: int):
        super().__init__()
        self.rank = rank
        self.V = nn.Linear(in_dim, rank, bias=False)        # shared
        self.U = nn.Linear(rank, out_dim)                   # shared (+ bias)
        self.S = nn.Linear(cond_dim, rank * rank)           # z -> instance-specific core
        nn.init.normal_(self.S.weight, std=0.01)
        with torch.no_grad():
            self.S.bias.copy_(torch.eye(rank).flatten())

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        S = self.S(z).view(-1, self.rank, self.rank)                           # (B, k, k)
        h = (S @ self.V(x).unsqueeze(-1)).squeeze(-1)                          # (B, k)
        return self.U(h)                                                       # (B, out)


class APG(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, rank = cfg.embed_dim, {**KNOBS, **cfg.extra}["rank"]
        self.fields = FieldTokens(cfg, d)
        self.cond = self.fields.index("user", "ctx_")                          # user, ctx_*, user_feat_*
        widths = [self.fields.n_fields * d, *cfg.mlp]
        self.layers = nn.ModuleList(APGLayer(a, b, len(self.cond) * d, rank) for a, b in zip(widths, widths[1:]))
        self.act = nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout))
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.fields(batch)                                                 # (B, F, d)
        z = x[:, self.cond].flatten(1)                                         # (B, C d) condition
        h = x.flatten(1)                                                       # (B, F d)
        for layer in self.layers:
            h = self.act(layer(h, z))                                          # (B, width)
        return self.out(h).squeeze(-1)                                         # (B,) logits
