"""FAT — Field-Aware Transformer (Yan et al., "From Scaling to Structured Expressivity: Rethinking
Transformers for CTR Prediction", arXiv 2511.12081, 2025).

Followed (from the paper's description): self-attention over one token per *field* whose
content alignment is decomposed by field — the (i, j) score uses field-specific projections,
q_i = W_q^{f_i} x_i and k_j = W_k^{f_j} x_j, values v_j = W_v^{f_j} x_j and outputs W_o^{f_i} are
field-specific too — and modulated by learned cross-field parameters, so the attention
parameters grow with the number of fields F, not with the vocabulary:

    score_ij = gamma[h, f_i, f_j] * <q_i, k_j> / sqrt(d_h) + beta[h, f_i, f_j]

gamma (a per-head F x F scalar gate on the content term, initialised to 1, unconstrained so a
pair can be damped, boosted or inverted; asymmetric, gamma_ij != gamma_ji) and beta (a per-head
F x F prior on the pair) are the cross-field modulation. After the blocks, the flattened field
tokens go through an MLP (`cfg.mlp`) to the logit.

Chosen (the paper leaves these open or differs in scale): residual blocks with a feed-forward
network *shared* across fields; `extra["layers"]` (2) and `extra["heads"]` (2); the residual
output projections (W_o and the FFN's last layer) start at zero, so each block starts as the
identity and the head first sees the field embeddings as an MLP would; and **no LayerNorm** by
default (`extra["norm"] = True` restores pre-LN blocks). The reason is scale: the field embeddings
start at std 0.03, and LayerNorm hands the attention unit-scale copies of them, so a step that
turns an embedding's direction moves the attention ~30x as much as it moves the embedding; the
pre-LN model peaked on validation at epoch 3-4. Full ML-100K, 3 seeds, valid / test AUC: pre-LN
random init 0.7512 / 0.7664; pre-LN identity init 0.7574 / 0.7714; without LayerNorm 0.7687 /
0.7820 (best epoch 8-13); with the embedding L2 every model now has (`embed_reg`) 0.7768 / 0.7897.
With pre-LN blocks, an FM term on the input fields, the pooled history field, a larger embedding
init, a lower lr or a skip of the input tokens to the head did not do better. Field-specific
matrices are stored directly (F * d * d each) — the paper's basis-composed hypernetwork, which
synthesises them from shared bases to keep huge-F industrial models small, is unnecessary at F ~ 12.

Fields (`FieldTokens`): user, item, context, side fields (the pooled history with
`pooled_history`); explanations are two more fields with their own projections, so how much e.g.
the item attends to the positive reason is a learned field-pair parameter. `last_attention` keeps
the last block's head-averaged (B, F, F) attention and `input_names` the field names, for
`Recommender.explain`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens

DEFAULTS = {"extra": {"layers": 2, "heads": 2, "norm": False}}


def per_field(F: int, d: int) -> nn.Parameter:
    """F independent d x d projections, one per field."""
    return nn.Parameter(torch.randn(F, d, d) / math.sqrt(d))


class FieldAwareAttention(nn.Module):
    def __init__(self, F: int, d: int, heads: int):
        super().__init__()
        assert d % heads == 0, f"embed_dim {d} must be divisible by heads {heads}"
        self.heads = heads
        self.wq, self.wk, self.wv, self.wo = (per_field(F, d) for _ in range(4))
        self.gamma = nn.Parameter(torch.ones(heads, F, F))
        self.beta = nn.Parameter(torch.zeros(heads, F, F))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, F, d = x.shape
        dh = d // self.heads

        def project(w):                                                        # (B, F, d) -> (B, h, F, dh)
            return torch.einsum("bfd,fde->bfe", x, w).view(B, F, self.heads, dh).transpose(1, 2)

        q, k, v = project(self.wq), project(self.wk), project(self.wv)
        content = q @ k.transpose(-1, -2) / math.sqrt(dh)                      # (B, h, F, F)
        attn = (self.gamma * content + self.beta).softmax(dim=-1)              # rows sum to 1
        y = (attn @ v).transpose(1, 2).reshape(B, F, d)                        # (B, F, d)
        return torch.einsum("bfd,fde->bfe", y, self.wo), attn                  # (B, F, d), (B, h, F, F)


class FATBlock(nn.Module):
    def __init__(self, F: int, d: int, heads: int, dropout: float, norm: bool):
        super().__init__()
        self.ln1, self.ln2 = (nn.LayerNorm(d), nn.LayerNorm(d)) if norm else (nn.Identity(), nn.Identity())
        self.attn = FieldAwareAttention(F, d, heads)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, attn = self.attn(self.ln1(x))
        x = x + y                                                              # (B, F, d)
        return x + self.ffn(self.ln2(x)), attn


class FAT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.fields = FieldTokens(cfg, d)
        F = self.fields.n_fields
        extra = {**DEFAULTS["extra"], **cfg.extra}
        self.blocks = nn.ModuleList(FATBlock(F, d, extra["heads"], cfg.dropout, extra["norm"])
                                    for _ in range(extra["layers"]))
        for b in self.blocks:   # each block starts as the identity (zero residual outputs), as in ReZero/T-Fixup
            nn.init.zeros_(b.attn.wo)
            nn.init.zeros_(b.ffn[2].weight)
            nn.init.zeros_(b.ffn[2].bias)
        self.head = mlp(F * d, tuple(cfg.mlp), out_dim=1, dropout=cfg.dropout)
        self.input_names = self.fields.names
        self.last_attention: torch.Tensor | None = None

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.fields(batch)                                                 # (B, F, d)
        for block in self.blocks:
            x, attn = block(x)                                                 # (B, F, d), (B, h, F, F)
        self.last_attention = attn.mean(1).detach()                            # (B, F, F)
        return self.head(x.flatten(1)).squeeze(-1)                             # (B,) logits
