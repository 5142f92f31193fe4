"""Building blocks the model zoo shares: the field-token stack and the transformer block.

`FieldTokens` turns a batch (see `reasonrec.train.features`) into one d-wide token per field,
(B, F, d), in this order:

    user, item, [history], ctx_0.., [user_feat_0.., item_feat_0.., genres], [expl_pos, expl_neg]

- user, item: id embeddings (item id 0 is padding and embeds to zeros);
- history: the mean of the non-padded history items' embeddings, read from the *item* table
  (the usual multi-valued-field pooling of CTR libraries), when `cfg.pooled_history`; sequence
  models pass `history=False` and read the sequence itself through `history_seq`;
- ctx (hour, weekday) always; user/item side fields and the genre bag only with
  `cfg.side_features` (both through `SideFields`);
- the explanation slots (`ExplanationInput`) when `cfg.uses_explanations` and `cfg.fusion` is
  "gated" or "raw". With "residual" (the default) there are no explanation fields: the gated
  explanation vectors are added to the candidate item's token, so the field stack, and every
  layer sized by it, is the one of the model without explanations, and a closed gate gives
  exactly that model (same seed, same weights, same outputs).

`d=1` gives the same stack as scalar weights: the first-order (linear) term of FM-style models.

`TransformerBlock` is the pre-LayerNorm encoder block SASRec and BERT4Rec both use; the attention
mask decides causal (SASRec) or bidirectional (BERT4Rec).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reasonrec.models.base import EXPL_KEYS, ExplanationInput, ModelConfig, SideFields



class FieldTokens(nn.Module):
    def __init__(self, cfg: ModelConfig, d: int, history: bool = True):
        super().__init__()
        self.user = nn.Embedding(cfg.n_users, d)
        self.item = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.side = SideFields(cfg, d, include_ctx=True)
        self.expl = ExplanationInput(cfg.expl_dim, d, cfg.expl_mode, cfg.expl_slots, cfg.fusion, cfg.expl_dropout) \
            if cfg.uses_explanations else None
        self.pool_history = history and cfg.pooled_history
        self.hist_dropout = cfg.hist_dropout
        self.residual = self.expl is not None and cfg.fusion == "residual"
        side_names = [f"ctx_{i}" for i in range(len(cfg.ctx))]
        if cfg.side_features:
            side_names += [f"user_feat_{i}" for i in range(len(cfg.user_fields))]
            side_names += [f"item_feat_{i}" for i in range(len(cfg.item_fields))] + ["genres"]
        self.names = ["user", "item"] + (["history"] if self.pool_history else []) + side_names + \
            ([k.removeprefix("expl_") for k in EXPL_KEYS[:cfg.expl_slots]] if self.expl_tokens else [])
        for m in self.modules():
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
                nn.init.normal_(m.weight, std=cfg.init_std)
        with torch.no_grad():
            self.item.weight[0].zero_()

    @property
    def expl_tokens(self) -> bool:
        """Whether the explanations are fields of their own (fusion gated/raw) rather than a residual."""
        return self.expl is not None and not self.residual

    def candidate(self, batch: dict) -> torch.Tensor:
        """The candidate item's token (B, d): its embedding, plus the gated explanations under
        residual fusion (they are about this user-item pair)."""
        e = self.item(batch["item"])
        if self.residual:
            e = e + self.expl(batch, e.shape[0]).sum(1)
        return e

    @property
    def n_fields(self) -> int:
        return len(self.names)

    def index(self, *prefixes: str) -> list[int]:
        """Positions of the fields whose names start with one of `prefixes`."""
        return [i for i, n in enumerate(self.names) if n.startswith(prefixes)]

    def history_seq(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The history as item embeddings (B, H, d), oldest first, and its mask (B, H), True = real.
        While training, each real item is dropped (masked and zeroed) with probability `hist_dropout`:
        the last five items nearly identify a sample, so without it sequence models memorise them
        within 2-4 epochs on full ML-100K."""
        mask = batch["hist"] > 0
        if self.training and self.hist_dropout > 0:
            mask = mask & (torch.rand(mask.shape, device=mask.device) >= self.hist_dropout)
        return self.item(batch["hist"]) * mask.unsqueeze(-1), mask

    def forward(self, batch: dict) -> torch.Tensor:
        B = batch["user"].shape[0]
        tokens = [self.user(batch["user"]), self.candidate(batch)]             # 2 x (B, d)
        if self.pool_history:
            seq, mask = self.history_seq(batch)                                # (B, H, d), (B, H)
            n = mask.sum(1, keepdim=True).clamp(min=1)                         # (B, 1)
            tokens.append((seq * mask.unsqueeze(-1)).sum(1) / n)               # (B, d) mean of real items
        x = torch.stack(tokens, dim=1)                                         # (B, 2|3, d)
        if self.side.n_fields:
            x = torch.cat([x, self.side(batch)], dim=1)                        # (B, +ctx+side, d)
        if self.expl_tokens:
            x = torch.cat([x, self.expl(batch, B)], dim=1)                     # (B, F, d)
        return x


class TransformerBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)), then x + FFN(LN(x)); `mask` (B, T, T) True = may attend."""

    def __init__(self, d: int, heads: int, dropout: float = 0.0, act: str = "relu"):
        super().__init__()
        assert d % heads == 0, f"embed_dim {d} must be divisible by heads {heads}"
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU() if act == "gelu" else nn.ReLU(),
                                 nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)                        # 3 x (B, T, d)
        q, k, v = (t.view(B, T, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1),
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, d))                  # (B, T, d)
        return x + self.ffn(self.ln2(x))
