"""LR-Recsys' DNN recommendation component (Wang et al., seed 002, sections 3.5, 8.2, 8.3).

Inputs, each an 8-d vector:  E_pos, E_neg (explanation embeddings), E_user, E_item, E_seq (self-
attention then GRU over the last 5 items), E_context (an MLP over the context fields). A single-head
self-attention across these six "tokens" lets each input attend to the others; the attention
weights are kept for analysis (the paper's figures 7, 9, 10). The flattened output goes through an
MLP [64, 8, 1].

Choices the paper leaves open, made here:
- the history self-attention is single-head scaled dot-product with learned Q, K, V (eq. 6-9) and
  the GRU reads its output (eq. 10-13); padded history slots are masked as keys and are zeros;
- without explanations (a plain baseline) the input attention runs over the four other tokens;
- id, context and side-field embeddings come from the zoo's `FieldTokens` (same init as every
  other model); side features (genres, age, ...), when on, join the context MLP.

Two settings (`reasonrec.config`): the `faithful` preset is the paper's appendix 8.3 exactly (8-d,
Adam lr 0.01, batch 128, no regularisation, MLP [64, 8, 1], attention output used as is, no side
features). The default is the robust one: a residual around the input attention (its output is
added to the tokens, so a badly initialised attention cannot cut an input off), lr 1e-3 with
larger batches, dropout, the zoo's embedding init — at the faithful setting the 8-unit bottleneck
dies entirely on some seeds (constant output; `FitResult.dead_units` reports the share per fit).
Two more parts of the default, both chosen on the mean validation AUC of 3 seeds on full ML-100K
(benchmarks/parity; without explanations): an MLP over concatenated embeddings learns a user-item
dot product poorly (Rendle et al., "Neural Collaborative Filtering vs. Matrix Factorization
Revisited", 2020), so a GMF term w . (p_u * q_i) on tables of its own, as NCF's, is added to the
logit (valid 0.7605 -> 0.7659); and the last five items nearly identify a training sample, so the
history path memorised them by epoch 2-4 (dropping E_seq altogether gave valid 0.7682), so history
items are dropped at random while training (`hist_dropout`, shared by every sequence model; with
GMF: valid 0.7691, test 0.7866 against 0.7778 before). The embedding L2 is on the rows each batch
looks up (`embed_reg_on="batch"`, 3e-3): valid 0.7707, test 0.7868. L2 on whole tables, the zoo's
default, gave valid 0.7703 but test 0.7832: it shrinks rare users' and items' GMF rows as fast as
popular ones (benchmarks/parity/tuning.csv has every setting tried).
The default also fuses the explanations safely (`fusion="residual"`, see `FieldTokens`): E_pos and
E_neg are standardised, gated and added to E_item instead of being tokens of their own, so the
input attention runs over user, item, seq and context, and a closed gate is the model without
explanations. The faithful preset keeps them as the paper's two raw tokens (figures 7 and 10).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reasonrec.models.base import ModelConfig, mlp
from reasonrec.models.fields import FieldTokens

# per-model defaults over `reasonrec.config`'s (the robust setting), and the paper's exact one
DEFAULTS = {"mlp": (64, 8), "extra": {"residual": True, "gmf": True},
            "train": {"embed_reg_on": "batch", "embed_reg": 3e-3}}
PRESETS = {
    "faithful": {"embed_dim": 8, "mlp": (64, 8), "dropout": 0.0, "side_features": False, "fusion": "raw",
                 "hist_dropout": 0.0, "extra": {"residual": False, "gmf": False},
                 "train": {"lr": 0.01, "batch_size": 128, "weight_decay": 0.0, "embed_reg": 0.0,
                           "embed_reg_on": "tables"}},
}


GMF_INIT_STD = 0.01   # as NCF's GMF: a product of two tables grows with the square of their scale


class SelfAttention(nn.Module):
    """Single-head scaled dot-product self-attention (LR-Recsys eq. 6-9 and 26-28)."""

    def __init__(self, d: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None):
        # x: (B, T, d); key_mask: (B, T), True where a token may be attended to
        scores = self.q(x) @ self.k(x).transpose(1, 2) * self.scale          # (B, T, T)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask.unsqueeze(1), -1e9)
        weights = scores.softmax(dim=-1)                                       # rows sum to 1
        return weights @ self.v(x), weights                                    # (B, T, d), (B, T, T)


class LRRecsysNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.cfg = cfg
        extra = {**DEFAULTS["extra"], **cfg.extra}
        self.residual = bool(extra["residual"])
        self.fields = FieldTokens(cfg, d, history=False)          # user, item, ctx/side fields, [pos, neg]
        self.side_idx = self.fields.index("ctx_", "user_feat_", "item_feat_", "genres")
        self.expl_idx = self.fields.index("pos", "neg")
        self.hist_attn = SelfAttention(d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.ctx_mlp = mlp(len(self.side_idx) * d, (d,), out_dim=None) if self.side_idx else None
        n_tokens = len(self.expl_idx) + 3 + (self.ctx_mlp is not None)
        self.input_attn = SelfAttention(d)
        self.head = mlp(n_tokens * d, tuple(cfg.mlp), out_dim=1, dropout=cfg.dropout)
        if extra["gmf"]:
            self.gmf_user, self.gmf_item = nn.Embedding(cfg.n_users, d), nn.Embedding(cfg.n_items, d)
            nn.init.normal_(self.gmf_user.weight, std=GMF_INIT_STD)
            nn.init.normal_(self.gmf_item.weight, std=GMF_INIT_STD)
            self.gmf_out = nn.Linear(d, 1)
        else:
            self.gmf_user = None
        self.input_names = [self.fields.names[i] for i in self.expl_idx] + \
            ["user", "item", "seq"] + (["context"] if self.ctx_mlp is not None else [])
        self.last_attention: torch.Tensor | None = None

    def forward(self, batch: dict) -> torch.Tensor:
        f = self.fields(batch)                                                 # (B, F, d)
        e_user, e_item = f[:, 0], f[:, 1]                                      # (B, d) each

        hist, mask = self.fields.history_seq(batch)                            # (B, H, d), (B, H); oldest first
        h, _ = self.hist_attn(hist, mask)
        h = h * mask.unsqueeze(-1)                                             # padded slots stay empty
        _, last = self.gru(h)                                                  # left padding: last step = newest item
        e_seq = last.squeeze(0)                                                # (B, d)

        tokens = [f[:, self.expl_idx]] if self.expl_idx else []                # (B, 2, d): pos, neg first
        tokens.append(torch.stack([e_user, e_item, e_seq], dim=1))             # (B, 3, d)
        if self.ctx_mlp is not None:
            tokens.append(self.ctx_mlp(f[:, self.side_idx].flatten(1)).unsqueeze(1))  # (B, 1, d)
        x = torch.cat(tokens, dim=1)                                           # (B, T, d)

        y, attn = self.input_attn(x)                                           # (B, T, d), (B, T, T)
        if self.residual:
            y = x + y
        self.last_attention = attn.detach()
        return self.score(y, batch["user"], batch["item"])                     # (B,) logits

    def score(self, y: torch.Tensor, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """The logit from the attended tokens y (B, T, d), plus the GMF term of (user, item) ids."""
        logit = self.head(y.flatten(1)).squeeze(-1)                            # (B,)
        if self.gmf_user is not None:
            gmf = self.gmf_user(user) * self.gmf_item(item)                    # (B, d)
            logit = logit + self.gmf_out(gmf).squeeze(-1)
        return logit

    @staticmethod
    def attention_shares(attn: torch.Tensor) -> torch.Tensor:
        """The paper's eq. 24: attention each input *receives*, averaged over the attending inputs.
        Rows of `attn` sum to 1, so the shares of one sample sum to 1 too."""
        return attn.mean(dim=1)                                                # (B, T)
