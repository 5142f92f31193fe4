"""DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
Learning to Rank Systems", WWW 2021).

Followed: x0 = the concatenated field embeddings; each cross layer is
x_{l+1} = x0 * (W_l x_l + b_l) + x_l with a *full-rank* W_l (D x D) — the paper's DCN-V2 proper;
the low-rank mixture (DCN-Mix) exists to cut cost when D is in the thousands, and here D = F * d is
about a hundred, so full rank costs nothing. Number of cross layers: `extra["cross_layers"]` (3).

Chosen: the *parallel* structure by default (cross network and deep network both read x0, their
outputs are concatenated before the final linear layer); `extra["structure"] = "stacked"` feeds
the cross output into the deep network instead (the paper reports both; which wins is dataset-
dependent). The deep network's hidden sizes are `cfg.mlp`.

Fields and explanations: `FieldTokens` (user, item, pooled history, context, side fields);
explanations are two more field embeddings inside x0, so the cross layers build explicit
interactions between them and every other field.
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens

KNOBS = {"cross_layers": 3, "structure": "parallel"}


class CrossLayerV2(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Linear(dim, dim)
        nn.init.zeros_(self.w.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.w(x) + x                                              # (B, D)


class DCNv2(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        extra = {**KNOBS, **cfg.extra}
        self.structure = extra["structure"]
        assert self.structure in ("parallel", "stacked"), self.structure
        self.fields = FieldTokens(cfg, d)
        D = self.fields.n_fields * d
        self.cross = nn.ModuleList(CrossLayerV2(D) for _ in range(extra["cross_layers"]))
        self.deep = mlp(D, tuple(cfg.mlp), out_dim=None, dropout=cfg.dropout)
        out_in = cfg.mlp[-1] if self.structure == "stacked" else D + cfg.mlp[-1]
        self.out = nn.Linear(out_in, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        x0 = self.fields(batch).flatten(1)                                     # (B, D), D = F * d
        x = x0
        for layer in self.cross:
            x = layer(x0, x)                                                   # (B, D)
        if self.structure == "stacked":
            h = self.deep(x)                                                   # (B, mlp[-1])
        else:
            h = torch.cat([x, self.deep(x0)], dim=1)                           # (B, D + mlp[-1])
        return self.out(h).squeeze(-1)                                         # (B,) logits
