"""ExpCTR on a tiny random Llama (milliseconds): shared-prefix log-probs and gradients, the cached
judge, adapter save/load/hash/merge, the quantized-model guard, and one GRPO step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GgufConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from reasonrec.align.judge import YesNoJudge
from reasonrec.align.policy import (LoraSettings, adapter_sha256, build_policy, check_trainable, load_policy,
                                    save_adapter)
from reasonrec.align.trainer import GRPO, GRPOSettings, RLPrompt
from reasonrec.errors import ReasonrecError
from reasonrec.llm.base import Prompt

WORDS = ["<pad>", "<eos>", "Reason:", "Movie:", "Would", "the", "consumer", "like", "it?", "Yes", "No", "they",
         "love", "hate", "films", ".", "Alpha.", "Zulu.", "A", "Z", "because", "watched", "this", "movie", "\n"]
EOS = 1


def _tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def _llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=EOS, pad_token_id=0, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    return model


def _policy(seed: int = 0, perturb: bool = True):
    policy = build_policy(_llama(seed), LoraSettings(r=4, alpha=8))
    if perturb:  # a non-zero adapter, so it changes outputs
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return policy


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


class TinyBackend:
    """What GRPO needs from EmbeddedBackend: tokenizer, encode, eos/pad ids."""

    def __init__(self):
        self.tokenizer = _tokenizer()
        self.eos_ids = {EOS}
        self.pad_id = 0

    def encode(self, prompt: Prompt) -> list[int]:
        text = " ".join(c for _, c in prompt.messages) + " " + prompt.prefix
        return self.tokenizer(text, add_special_tokens=False).input_ids


# --- shared-prefix forwards equal full forwards ------------------------------------------------

def test_completion_logps_and_gradients_equal_full_forwards():
    policy = _policy()
    trainer = GRPO(policy, TinyBackend(), reward=None, settings=GRPOSettings(group_size=3))
    prompt = [2, 5, 6, 7, 11, 12, 14, 15, 20, 21]
    comps = [[11, 12, 14], [13, 15], [4, 5, 6, 7, 8]]
    logp, mask = trainer.completion_logps(prompt, comps)
    logp.sum().backward()
    shared = {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}
    policy.zero_grad()
    total = 0
    for i, c in enumerate(comps):
        lp = torch.log_softmax(policy(input_ids=torch.tensor([prompt + c])).logits.float(), -1)[0]
        full = lp[len(prompt) - 1: len(prompt) + len(c) - 1].gather(1, torch.tensor(c)[:, None])[:, 0]
        torch.testing.assert_close(logp[i, : len(c)].detach(), full.detach(), atol=1e-5, rtol=1e-5)
        assert mask[i].sum() == len(c) and (logp[i, len(c):] == 0).all()
        total = total + full.sum()
    total.backward()
    for n, p in policy.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(shared[n], p.grad, atol=1e-5, rtol=1e-4)


def test_judge_cached_prefix_equals_full_text():
    model = _llama()
    judge = YesNoJudge(model, _tokenizer(), batch_size=2)
    texts = ["they love films .", "they hate films .", "Alpha.", "they love"]
    cands = ["A", "Z", "A", "Z"]
    assert len(judge._prefix) > 10
    full, cached = judge.logits(texts, cands, cached=False), judge.logits(texts, cands)
    np.testing.assert_allclose(full, cached, atol=1e-5)
    probs = judge.prob_yes(texts, cands)
    assert ((probs > 0) & (probs < 1)).all()


# --- adapters ----------------------------------------------------------------------------------

def test_adapter_save_load_roundtrip_and_hash(tmp_path):
    policy = _policy()
    ids = [2, 11, 12, 14, 15]
    sha = save_adapter(policy, tmp_path / "a")
    assert sha == adapter_sha256(tmp_path / "a") and len(sha) == 64
    assert save_adapter(policy, tmp_path / "b") == sha          # same weights, same identity
    loaded = load_policy(_llama(), tmp_path / "a", trainable=False)
    torch.testing.assert_close(_logits(loaded, ids), _logits(policy, ids))
    with torch.no_grad():
        next(p for n, p in policy.named_parameters() if "lora_B" in n).add_(0.01)
    assert save_adapter(policy, tmp_path / "a") != sha            # overwritten in place, new identity
    with pytest.raises(ReasonrecError):
        load_policy(_llama(), tmp_path / "missing")


def test_merge_happens_in_place_and_matches_the_adapter(tmp_path):
    from peft import PeftModel

    policy = _policy()
    ids = [2, 11, 13, 14, 15, 4]
    expected = _logits(policy, ids)
    save_adapter(policy, tmp_path / "a")
    base = _llama()
    merged = PeftModel.from_pretrained(base, str(tmp_path / "a")).merge_and_unload()
    assert merged is base  # what aligned_backend relies on: the engine holds `base`
    torch.testing.assert_close(_logits(base, ids), expected, atol=1e-5, rtol=1e-5)


def test_quantized_models_are_refused():
    model = _llama()
    model.config.quantization_config = GgufConfig(dequantize=False)
    with pytest.raises(ReasonrecError, match="quantized"):
        check_trainable(model)
    with pytest.raises(ReasonrecError):
        build_policy(model)
    model.config.quantization_config = GgufConfig(dequantize=True)
    check_trainable(model)
    del model.config.quantization_config
    model.lm_head.weight = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ReasonrecError):
        check_trainable(model)


# --- one GRPO step -------------------------------------------------------------------------------

def test_grpo_step_updates_the_adapter_and_resumes(tmp_path):
    policy = _policy(perturb=False)
    seen = []

    def reward(prompts, cleaned):
        seen.extend(p.sample_id for p in prompts)
        # prefer completions containing "love"
        return {"total": np.array([1.0 if "love" in c.text else 0.0 for c in cleaned]) + np.arange(len(cleaned)) * 1e-3}

    prompts = [RLPrompt(7, "positive", Prompt.user("they watched this movie", prefix="because"), "A"),
               RLPrompt(8, "negative", Prompt.user("they hate films", prefix="because"), "Z")]
    cfg = GRPOSettings(group_size=3, prompts_per_step=2, max_new_tokens=6, temperature=1.0, lr=1e-2)
    trainer = GRPO(policy, TinyBackend(), reward, cfg)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    stats = trainer.step(prompts)
    assert trainer.step_no == 1 and stats["step"] == 1
    assert sorted(set(seen)) == [7, 8] and len(seen) == 6
    assert np.isfinite([stats["loss"], stats["kl"], stats["grad_norm"], stats["reward_total"]]).all()
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)   # B = 0 at the start: policy == reference
    changed = [n for n, p in policy.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    assert any("lora_B" in n for n in changed)
    assert all("lora" in n for n in changed)             # base weights stay frozen
    state = trainer.state_dict()
    other = GRPO(policy, TinyBackend(), reward, cfg)
    other.load_state_dict(state)
    assert other.step_no == 1
    stats2 = trainer.step(prompts)
    assert stats2["kl"] > 0


def test_beta_must_be_positive():
    with pytest.raises(ValueError):
        GRPOSettings(beta=0.0)
    with pytest.raises(ValueError):
        GRPOSettings(group_size=1)
