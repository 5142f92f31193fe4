"""Shared-prefix forwards: run a common prefix once, then many continuations against its KV cache.

Used by the judge (its few-shot block is identical for every call and, the judge being frozen,
computed once per process) and by the policy update (the G completions of one prompt share the
prompt; gradients flow back through the prompt's keys/values, so the result equals G full
forwards — tested in tests/test_align_model.py).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

KV = list[tuple[torch.Tensor, torch.Tensor]]


def prefix_kv(lm, ids: list[int]) -> tuple[KV, torch.Tensor]:
    """Keys/values of every layer for `ids` (batch 1) and the hidden state of its last token.
    `lm` is a Hugging Face *ForCausalLM (LoRA layers may be injected in it)."""
    out = lm.get_decoder()(input_ids=torch.tensor([ids]), use_cache=True)
    cache = out.past_key_values
    return [(layer.keys, layer.values) for layer in cache.layers], out.last_hidden_state[:, -1]


def repeat_kv(kv: KV, n: int) -> DynamicCache:
    """A fresh cache holding `kv` for `n` rows (views: the prefix tensors are never copied here)."""
    return DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in kv])


def pad_right(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (rows, width) right-padded with `pad_id`, and their mask."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def continue_hidden(lm, kv: KV, prefix_len: int, seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (rows, width, d) of right-padded continuations `seqs` after the prefix, and
    their mask (rows, width)."""
    ids, mask = pad_right(seqs, pad_id)
    width = ids.shape[1]
    attn = torch.cat([torch.ones(len(seqs), prefix_len, dtype=torch.long), mask], 1)
    pos = (prefix_len + torch.arange(width))[None].expand(len(seqs), -1)
    out = lm.get_decoder()(input_ids=ids, attention_mask=attn, position_ids=pos,
                      past_key_values=repeat_kv(kv, len(seqs)), use_cache=True)
    return out.last_hidden_state, mask
