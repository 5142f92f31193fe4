"""LR-Recsys' forward in two halves, so a request pays for the user once, not once per candidate.

In `LRRecsysNet.forward` three of the input tokens depend only on the user: E_user, E_seq (history
self-attention + GRU, the costliest part) and E_context (the context MLP, when side features are
off). Scoring a pool of 1,000 candidates the ordinary way computes them 1,000 times over identical
rows. Here they are computed once per (user, history) and per context code (both cached: a
history change replaces the user's history tensor, which is the cache key), and broadcast into
the candidate half: item embedding, explanation projections, the input self-attention and the MLP
head, one vectorised pass over the pool (the same arithmetic up to float rounding: see `_attend`).

It reads the model's own modules (no copy of its weights) and is only used after `verify` has
checked that it reproduces the full forward's logits and attention on real inputs; any other
model, or any mismatch, keeps the ordinary path.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("reasonrec.serve")


class SplitScorer:
    def __init__(self, model):
        self.model = model
        self.side_per_item = bool(model.cfg.side_features)        # then the context token reads item fields
        self._seq: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ctx: dict[tuple, torch.Tensor] = {}

    @classmethod
    def for_model(cls, model) -> "SplitScorer | None":
        from reasonrec.models.lr_recsys import LRRecsysNet

        return cls(model) if type(model) is LRRecsysNet else None

    def _e_seq(self, user: str, hist: torch.Tensor) -> torch.Tensor:
        cached = self._seq.get(user)
        if cached is not None and cached[0] is hist:
            return cached[1]
        m = self.model
        h_in, mask = m.fields.history_seq({"hist": hist})          # (1, H, d), (1, H)
        h, _ = m.hist_attn(h_in, mask)
        h = h * mask.unsqueeze(-1)
        _, last = m.gru(h)
        e_seq = last.squeeze(0)                                   # (1, d)
        if len(self._seq) > 200_000:                              # bounded: cold ids are unbounded
            self._seq.clear()
        self._seq[user] = (hist, e_seq)
        return e_seq

    def _e_ctx(self, ctx: torch.Tensor, user_feats: torch.Tensor) -> torch.Tensor:
        key = tuple(ctx[0].tolist())
        e = self._ctx.get(key)
        if e is None:
            m = self.model
            e = m.ctx_mlp(m.fields.side({"ctx": ctx, "user": ctx.new_zeros(1), "user_feats": user_feats}).flatten(1))
            self._ctx[key] = e
        return e

    def forward(self, user: str, user_code: int, hist: torch.Tensor, ctx: torch.Tensor,
                user_feats: torch.Tensor, items: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """items: per-candidate tensors (item, item_feats, item_cats, expl_pos, expl_neg), B rows;
        hist (1, H), ctx (1, C), user_feats (1, F) are the user's. Returns (logits, attention)."""
        m = self.model
        B = items["item"].shape[0]
        d = m.fields.user.embedding_dim
        e_user = m.fields.user.weight[user_code].expand(B, d)
        tokens = [e_user, m.fields.candidate(items), self._e_seq(user, hist).expand(B, d)]
        if m.ctx_mlp is not None:
            if self.side_per_item:
                full = {**items, "ctx": ctx.expand(B, -1), "user": items["item"],
                        "user_feats": user_feats.expand(B, -1)}
                tokens.append(m.ctx_mlp(m.fields.side(full).flatten(1)))
            else:
                tokens.append(self._e_ctx(ctx, user_feats).expand(B, d))
        x = torch.stack(tokens, dim=1)
        if m.fields.expl_tokens:
            x = torch.cat([m.fields.expl(items, B), x], dim=1)
        y, attn = _attend(m.input_attn, x)
        if m.residual:
            y = x + y
        users = torch.full((B,), user_code, dtype=torch.long)
        return m.score(y, users, items["item"]), attn


def _attend(att, x: torch.Tensor):
    """`SelfAttention.forward` without a mask, with the softmax written out: torch's kernel is slow
    over a last dimension this short (6 tokens; ~40% of a 1,000-candidate request). The results
    differ from it by float rounding only (~1e-7), which `ServingIndex.enable_split` checks."""
    scores = att.q(x) @ att.k(x).transpose(1, 2) * att.scale
    e = (scores - scores.amax(dim=-1, keepdim=True)).exp()
    weights = e / e.sum(dim=-1, keepdim=True)
    return weights @ att.v(x), weights
