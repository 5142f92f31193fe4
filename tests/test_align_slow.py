"""ExpCTR with the real SmolLM2-135M (slow: loads the model, a handful of forwards)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasonrec.align.rewards import lc_reward

pytestmark = pytest.mark.slow

CANDIDATE = "My Best Friend's Wedding (1997); genres: Comedy, Romance"


@pytest.fixture(scope="module")
def backend():
    from reasonrec.align.policy import load_base

    return load_base(threads=1)


def test_the_frozen_judge_orders_consistent_above_inconsistent(backend):
    """Hand-made pairs: the same template opening, a reason that does / does not fit the label."""
    from reasonrec.align.judge import YesNoJudge

    judge = YesNoJudge(backend.model, backend.tokenizer)
    likes = ["The consumer watched this movie because they love romantic comedies and this one is charming.",
             "The consumer would like this movie."]
    dislikes = ["The consumer watched this movie because a friend insisted, but they find romantic comedies boring.",
                "The consumer would not like this movie."]
    z = judge.logits(likes + dislikes, [CANDIDATE] * 4)
    for i in range(2):
        consistent, inconsistent = z[i], z[i + 2]
        assert lc_reward(np.array([consistent]), [1])[0] > lc_reward(np.array([inconsistent]), [1])[0]
        assert lc_reward(np.array([inconsistent]), [0])[0] > lc_reward(np.array([consistent]), [0])[0]


def test_aligned_backend_names_the_adapter_and_generates_with_it(tmp_path):
    from reasonrec.align.policy import LoraSettings, adapter_sha256, aligned_backend, build_policy, save_adapter
    from reasonrec.llm.base import GenerationParams, Prompt
    from reasonrec.llm.embedded import EmbeddedBackend

    prompt = Prompt.user("Why would someone watch Toy Story? Answer with one sentence.", prefix="Because")
    params = GenerationParams(max_new_tokens=12)
    base = EmbeddedBackend(threads=1)
    reference = base.generate([prompt], params)[0].text

    policy = build_policy(base.model, LoraSettings(r=4, alpha=8))  # B = 0: the adapter is a no-op
    sha = save_adapter(policy, tmp_path / "zero")
    aligned = aligned_backend(tmp_path / "zero", threads=1)
    assert aligned.model_id == f"{base.model_id}+lora:{sha[:16]}" and sha == adapter_sha256(tmp_path / "zero")
    assert aligned.generate([prompt], params)[0].text == reference

    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    sha2 = save_adapter(policy, tmp_path / "moved")
    moved = aligned_backend(tmp_path / "moved", threads=1)
    assert sha2 != sha and moved.model_id != aligned.model_id
    ids = torch.tensor([moved.encode(prompt)])
    with torch.no_grad():
        torch.testing.assert_close(moved.model(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
