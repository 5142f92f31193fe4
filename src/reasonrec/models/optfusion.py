"""OptFusion (Zhang et al., "Fusion Matters: Learning Fusion in Deep Click-through Rate Prediction
Models", arXiv 2411.15731, 2024): one-shot learning of how explicit (cross) and implicit
(MLP) layers are wired together and how their inputs are fused.

Followed (paper and its released code): the field embeddings e (flattened, width D) feed a cross
layer 0; then L levels each hold one cross layer and one deep layer (Linear D->D + ReLU); the
input of every layer — and of the output block — may draw on *every earlier output*: e, cross 0,
and the cross and deep outputs of all lower levels. Each such candidate edge has an architecture
parameter, and each block fuses its (gated) candidates with a weighted mix of fusion operations:
pointwise addition, Hadamard product, and concatenation + linear (the code's fourth op,
attention pooling, is left out as the issue asks for these three). Cross layers are DCN ones,
x0 * (w . x) + b + x, as in the released code. All architecture parameters are learned jointly
with the weights by the same optimiser (one-shot).

Chosen: continuous relaxation throughout — an edge's gate is sigmoid(alpha) (the released code
uses a straight-through step, on iff alpha > 0) and a block's operation weights are
softmax(beta) over the three ops. The relaxed mixture is *kept at inference* (no discretisation,
no re-training stage); `architecture()` reports the learned gates and op weights.
Levels: `extra["layers"]` (3).

Fields (`FieldTokens`): user, item, pooled history, context, side fields; explanations are two
more field embeddings inside e, so every searched edge can carry them.
"""

from __future__ import annotations

import torch
from torch import nn

from reasonrec.models.base import ModelConfig
from reasonrec.models.fields import FieldTokens

KNOBS = {"layers": 3}

OPS = ("add", "product", "concat")


class CrossLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Linear(dim, 1, bias=False)
        self.b = nn.Parameter(torch.zeros(dim))

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.w(x) + self.b + x                                     # (B, D)


class Fusion(nn.Module):
    """Gated candidate edges, then softmax-weighted add / product / concat+linear."""

    def __init__(self, n_inputs: int, dim: int):
        super().__init__()
        self.edges = nn.Parameter(torch.zeros(n_inputs))                       # sigmoid(0) = 0.5: undecided
        self.ops = nn.Parameter(torch.zeros(len(OPS)))                         # uniform mix at the start
        self.concat = nn.Linear(n_inputs * dim, dim)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        xs = torch.stack(inputs, dim=1) * torch.sigmoid(self.edges)[:, None]   # (B, n, D) gated
        w = self.ops.softmax(0)                                                # (3,)
        return w[0] * xs.sum(1) + w[1] * xs.prod(1) + w[2] * self.concat(xs.flatten(1))  # (B, D)


class OptFusion(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, L = cfg.embed_dim, {**KNOBS, **cfg.extra}["layers"]
        self.fields = FieldTokens(cfg, d)
        D = self.fields.n_fields * d
        self.cross0 = CrossLayer(D)
        self.cross = nn.ModuleList(CrossLayer(D) for _ in range(L))
        self.deep = nn.ModuleList(nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Dropout(cfg.dropout)) for _ in range(L))
        # level i's two layers choose among e, cross0 and 2 outputs per lower level; the output block among all
        self.fuse_cross = nn.ModuleList(Fusion(2 + 2 * i, D) for i in range(L))
        self.fuse_deep = nn.ModuleList(Fusion(2 + 2 * i, D) for i in range(L))
        self.fuse_out = Fusion(2 + 2 * L, D)
        self.out = nn.Linear(D, 1)

    def forward(self, batch: dict) -> torch.Tensor:
        e = self.fields(batch).flatten(1)                                      # (B, D), D = F * d
        outputs = [e, self.cross0(e, e)]                                       # candidates so far
        for cross, deep, fc, fd in zip(self.cross, self.deep, self.fuse_cross, self.fuse_deep):
            c = cross(e, fc(outputs))                                          # (B, D) x0 = e
            h = deep(fd(outputs))                                              # (B, D)
            outputs += [c, h]
        return self.out(self.fuse_out(outputs)).squeeze(-1)                    # (B,) logits

    def architecture(self) -> dict:
        """The learned connection gates and fusion-op weights, per block."""
        names = ["emb", "cross0"] + [f"{kind}{i + 1}" for i in range(len(self.cross)) for kind in ("cross", "deep")]
        blocks = {f"{kind}{i + 1}": f for i in range(len(self.cross))
                  for kind, f in (("cross", self.fuse_cross[i]), ("deep", self.fuse_deep[i]))}
        blocks["output"] = self.fuse_out
        return {block: {"edges": dict(zip(names, torch.sigmoid(f.edges).tolist())),
                        "ops": dict(zip(OPS, f.ops.softmax(0).tolist()))}
                for block, f in blocks.items()}
