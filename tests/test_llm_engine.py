"""The cascade engine against plain `model.generate`, on tiny randomly initialised models.

Tiny models run in milliseconds, so these tests cover the scheduling cases (shared root, group
prefixes, refills of freed slots, groups of 1 and 3, a cached root reused across calls, sliding
windows) with exact fp32 equality against the reference. The real SmolLM2 is in the slow tests.
"""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from reasonrec.llm.base import first_sentence
from reasonrec.llm.engine import CascadeEngine, SentenceStop, _pad, common_prefix, hf_generate, picker

VOCAB = 97
EOS = 1


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _gemma(window: int) -> Gemma3ForCausalLM:
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                           sliding_window=window, layer_types=["sliding_attention", "full_attention"] * 2,
                           eos_token_id=EOS, pad_token_id=0, bos_token_id=2)
    return Gemma3ForCausalLM(cfg).eval()


def _groups(n: int, sizes=(2,), root: int = 20, seed: int = 0) -> list[list[list[int]]]:
    """Prompts sharing a root; each group shares a longer prefix; tails differ."""
    r = random.Random(seed)
    head = [r.randrange(3, VOCAB) for _ in range(root)]
    out = []
    for g in range(n):
        shared = head + [r.randrange(3, VOCAB) for _ in range(r.randint(0, 20))]
        out.append([shared + [r.randrange(3, VOCAB) for _ in range(r.randint(1, 9))]
                    for _ in range(sizes[g % len(sizes)])])
    return out


def _never(ids: list[int]) -> bool:
    return ids[-1] == EOS


def _reference(model, groups, max_new=12) -> list[list[list[int]]]:
    flat = [p for g in groups for p in g]
    out = hf_generate(model, flat, max_new, _StopAtEos(), batch_size=1, pad_id=0)
    it = iter(out)
    return [[next(it) for _ in g] for g in groups]


class _StopAtEos:
    """The part of SentenceStop that hf_generate uses, without a tokenizer."""

    def done(self, ids):
        return ids[-1] == EOS

    def cut(self, ids):
        return ids[: ids.index(EOS) + 1] if EOS in ids else ids


def _engine_out(engine, groups, max_new=12):
    return [[c.ids for c in g] for g in engine.generate(groups, max_new, _never, picker(0.0))]


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.mark.parametrize("batch_size", [64, 5, 2])
def test_engine_equals_generate_with_refills(llama, batch_size):
    # batch 5 / 2 < 16 prompts: groups are admitted as slots free up
    groups = _groups(8)
    assert _engine_out(CascadeEngine(llama, batch_size=batch_size), groups) == _reference(llama, groups)


def test_groups_of_one_and_three_and_tiny_prefill_chunks(llama):
    groups = _groups(7, sizes=(1, 3, 2))
    engine = CascadeEngine(llama, batch_size=6, prefill_tokens=16)
    assert _engine_out(engine, groups) == _reference(llama, groups)


def test_root_is_cached_across_calls_and_replaced_when_prompts_change(llama):
    engine = CascadeEngine(llama, batch_size=8)
    first = _groups(4, seed=1)
    assert _engine_out(engine, first) == _reference(llama, first)
    root = engine._root
    assert root is not None and len(root[0]) >= 20
    again = _groups(3, seed=1)                       # same head: the root is reused
    assert _engine_out(engine, again) == _reference(llama, again)
    assert engine._root is root
    single = [_groups(1, seed=2)[0]]                 # other head, one group: no new root
    assert _engine_out(engine, single) == _reference(llama, single)
    assert engine._root is root
    other = _groups(3, seed=2)                       # other head, many groups: new root
    assert _engine_out(engine, other) == _reference(llama, other)
    assert engine._root is not root


def test_no_common_prefix_at_all(llama):
    groups = [[[5, 6, 7]], [[8]], [[9, 10]]]
    assert _engine_out(CascadeEngine(llama, batch_size=4), groups) == _reference(llama, groups)


@pytest.mark.parametrize("window", [6, 512])
def test_gemma3_sliding_window(window):
    model = _gemma(window)
    groups = _groups(4, root=17)
    assert _engine_out(CascadeEngine(model, batch_size=4), groups) == _reference(model, groups)


def test_finish_reasons_and_lengths(llama):
    groups = _groups(3)
    out = CascadeEngine(llama, batch_size=8).generate(groups, 5, _never, picker(0.0))
    for g in out:
        for c in g:
            assert 1 <= len(c.ids) <= 5
            assert c.finish_reason == ("stop" if c.ids[-1] == EOS else "length")


def test_attention_implementation_is_restored(llama):
    before = llama.config._attn_implementation
    CascadeEngine(llama).generate(_groups(2), 3, _never, picker(0.0))
    assert llama.config._attn_implementation == before


def test_sampling_is_reproducible_for_a_seed(llama):
    engine = CascadeEngine(llama, batch_size=8)
    groups = _groups(3)
    runs = [[[c.ids for c in g] for g in engine.generate(groups, 8, _never, picker(1.0, 0.9, seed))]
            for seed in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_helpers():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix([[1], [2]]) == 0
    ids, qpos, kpos = _pad([[4, 5, 6], [7]], [10, 3])
    assert ids.tolist() == [[4, 5, 6], [7, 0, 0]]
    assert qpos.tolist() == [[10, 11, 12], [3, 3, 3]]
    assert kpos[1, 1:].min() > 1_000_000 and kpos[0].tolist() == [10, 11, 12]
    assert first_sentence(" it is good. And more") == " it is good."
    assert first_sentence(" costs 3.5 dollars! Yes") == " costs 3.5 dollars!"
    assert first_sentence(" no end") == " no end"


def _word_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<pad>", "<eos>", "it", "is", "good", ".", "3.5", "!", "and", "\n"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def test_sentence_stop_waits_for_whitespace_after_the_mark():
    tok = _word_tokenizer()
    stop = SentenceStop(tok, {1})
    ids = tok("it is good . and", add_special_tokens=False).input_ids
    # word-level decode joins with spaces: "it is good ." is not yet followed by whitespace
    assert not stop.done(ids[:4])
    assert stop.done(ids[:5])
    assert stop.cut(ids) == ids[:5]
    assert stop.text(ids) == "it is good ."
    assert stop.done(tok("it 3.5", add_special_tokens=False).input_ids) is False
    assert stop.done([2, 1])  # EOS
    assert not SentenceStop(tok, {1}, one_sentence=False).done(ids[:5])
