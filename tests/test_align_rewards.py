"""ExpCTR rewards, label hygiene and the loop's bookkeeping: pure functions and tiny frames (fast)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reasonrec.align.evaluate import distinct_n, judge_metrics, text_metrics, unique_ratio
from reasonrec.align.loop import _Keyed, batch_for_step, rl_prompts, rl_sample_ids
from reasonrec.align.rewards import (AlignmentReward, LabelLeak, RewardWeights, TrainLabels, calibration_bias,
                                     compliant, format_check, ic_reward, lc_reward, total_reward)
from reasonrec.align.trainer import RLPrompt, group_advantages, token_loss
from reasonrec.llm.base import Prompt

CONSISTENT_POS = "The consumer watched this movie because they love romantic comedies like this one."
INCONSISTENT_POS = "The consumer watched this movie because it was on TV, although they hate romantic comedies."


class KeywordJudge:
    """Stands in for the LLM judge: log-odds +3 for 'love', -3 for 'hate', 0 otherwise."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []

    def logits(self, texts, candidates):
        self.seen += list(zip(texts, candidates))
        return np.array([3.0 if "love" in t else -3.0 if "hate" in t else 0.0 for t in texts])


def _samples() -> pd.DataFrame:
    rows = []
    for u in range(3):
        for k in range(6):
            split = "train" if k < 4 else ("valid" if k == 4 else "test")
            rows.append({"sample_id": u * 6 + k, "user_id": str(u), "item_id": str(10 + k), "rating": 4.0 if k % 2 else 2.0,
                         "label": k % 2, "timestamp": k, "split": split, "history": [str(10 + j) for j in range(k)][-5:]})
    return pd.DataFrame(rows)


def _items() -> pd.DataFrame:
    return pd.DataFrame({"item_id": [str(10 + k) for k in range(6)], "title": [f"Movie {k}" for k in range(6)],
                         "categories": ["Comedy, Romance"] * 6, "description": [""] * 6, "feat_year": [1995] * 6})


def _prompt(sample_id: int, task: str = "positive") -> RLPrompt:
    return RLPrompt(sample_id, task, Prompt.user("...", prefix="The consumer watched this movie because"),
                    "Movie; genres: Comedy")


# --- the reward functions on hand-made cases -------------------------------------------------

def test_lc_orders_a_consistent_explanation_above_an_inconsistent_one():
    z = KeywordJudge().logits([CONSISTENT_POS, INCONSISTENT_POS], ["c", "c"])
    liked = lc_reward(z, [1, 1])
    disliked = lc_reward(z, [0, 0])
    assert liked[0] > liked[1]          # the user liked it: "love" is the consistent reason
    assert disliked[1] > disliked[0]    # the user did not: "hate" is
    assert (liked <= 0).all() and (disliked <= 0).all()
    assert lc_reward(np.array([50.0]), [1])[0] == pytest.approx(0.0, abs=1e-12)
    assert lc_reward(np.array([0.0]), [1])[0] == pytest.approx(np.log(0.5))


def test_ic_is_zero_at_agreement_and_orders_by_distance():
    q = np.array([0.8, 0.8, 0.8])
    z = np.log(np.array([0.8, 0.6, 0.2]) / (1 - np.array([0.8, 0.6, 0.2])))
    for kind in ("kl", "sq"):
        r = ic_reward(z, q, kind)
        assert r[0] == pytest.approx(0.0, abs=1e-9)
        assert r[0] > r[1] > r[2]
    with pytest.raises(ValueError):
        ic_reward(z, q, "l1")


def test_lc_refuses_missing_or_non_binary_labels():
    with pytest.raises(ValueError):
        lc_reward(np.zeros(2), [1, np.nan])
    with pytest.raises(ValueError):
        lc_reward(np.zeros(1), [4])


def test_total_reward_weights_components():
    z, y, q, ok = np.array([2.0, -2.0]), np.array([1, 1]), np.array([0.9, 0.9]), np.array([True, False])
    parts = total_reward(RewardWeights(lc=1.0, ic=0.5, fmt=0.25), z, y, q, ok)
    np.testing.assert_allclose(parts["total"], parts["lc"] + 0.5 * parts["ic"] + 0.25 * parts["fmt"])
    assert parts["fmt"].tolist() == [0.0, -1.0]
    only_lc = total_reward(RewardWeights(lc=1.0, ic=0.0, fmt=0.0), z, y, q, ok)
    np.testing.assert_allclose(only_lc["total"], only_lc["lc"])
    assert "ic" in only_lc  # reported even with weight 0
    with pytest.raises(ValueError):
        total_reward(RewardWeights(ic=1.0), z, y, None, ok)
    with pytest.raises(ValueError):
        total_reward(RewardWeights(lc=1.0), z, None, q, ok)


def test_alignment_reward_end_to_end_with_a_keyword_judge():
    samples = _samples()
    liked = int(samples[(samples["split"] == "train") & (samples["label"] == 1)]["sample_id"].iloc[0])
    disliked = int(samples[(samples["split"] == "train") & (samples["label"] == 0)]["sample_id"].iloc[0])
    reward = AlignmentReward(KeywordJudge(), RewardWeights(lc=1.0, ic=1.0, fmt=0.5), TrainLabels(samples),
                             ctr_q={liked: 0.9, disliked: 0.1})
    prompts = [_prompt(liked), _prompt(liked), _prompt(disliked), _prompt(disliked)]
    texts = [CONSISTENT_POS, INCONSISTENT_POS, CONSISTENT_POS, INCONSISTENT_POS]
    cleaned = [format_check(p.prompt.prefix, t[len(p.prompt.prefix):]) for p, t in zip(prompts, texts)]
    parts = reward(prompts, cleaned)
    assert parts["total"][0] > parts["total"][1]   # liked: "love" beats "hate"
    assert parts["total"][3] > parts["total"][2]   # disliked: "hate" beats "love"
    assert parts["ic"][0] > parts["ic"][1] and parts["ic"][3] > parts["ic"][2]
    assert set(reward.labels.read) == {liked, disliked}


def test_format_check_matches_the_store_cleanup():
    prefix = "The consumer watched this movie because"
    good = format_check(prefix, " they love comedies.")
    assert compliant(good) and good.text == f"{prefix} they love comedies."
    truncated = format_check(prefix, " they love comedies and", "length")
    assert truncated.ok and not compliant(truncated)
    assert not compliant(format_check(prefix, " ."))


def test_calibration_bias_hits_the_target_rate():
    z = np.random.default_rng(0).normal(-1.5, 1.0, 500)
    b = calibration_bias(z, 0.54)
    assert np.mean(1 / (1 + np.exp(-(z + b)))) == pytest.approx(0.54, abs=1e-6)


# --- no test-split label reaches a reward --------------------------------------------------

def test_train_labels_hold_train_only():
    samples = _samples()
    labels = TrainLabels(samples)
    train = set(samples[samples["split"] == "train"]["sample_id"])
    assert len(labels) == len(train)
    for sid in samples[samples["split"] != "train"]["sample_id"]:
        with pytest.raises(LabelLeak):
            labels[int(sid)]
    assert labels.read == set()


def test_no_valid_or_test_label_reaches_any_reward():
    """Poison every non-train label: a reward that read one would fail (NaN) or raise LabelLeak."""
    from reasonrec.explain.generate import ExplainConfig, Explainer
    from reasonrec.explain.store import ExplanationStore
    from reasonrec.explain.templates import load_templates

    samples = _samples()
    samples["label"] = samples["label"].astype(float)
    samples.loc[samples["split"] != "train", "label"] = np.nan
    ids = rl_sample_ids(samples, n=100, seed=0)
    assert set(ids) == set(samples[samples["split"] == "train"]["sample_id"])
    explainer = Explainer(_Keyed("key-only"), ExplanationStore(":memory:"), load_templates("movie"),
                          ExplainConfig(profiles=False))
    pool = rl_prompts(explainer, samples, _items(), ids)
    assert {p.sample_id for p in pool} == set(ids) and {p.task for p in pool} == {"positive", "negative"}
    labels = TrainLabels(samples)
    reward = AlignmentReward(KeywordJudge(), RewardWeights(lc=1.0, ic=1.0), labels, {i: 0.5 for i in ids})
    cleaned = [format_check(p.prompt.prefix, " they love it.") for p in pool]
    parts = reward(pool, cleaned)
    assert np.isfinite(parts["total"]).all()
    assert labels.read <= set(samples[samples["split"] == "train"]["sample_id"])
    test_ids = samples[samples["split"] == "test"]["sample_id"].tolist()
    with pytest.raises(Exception):
        rl_prompts(explainer, samples, _items(), test_ids)
    with pytest.raises(LabelLeak):
        reward([_prompt(test_ids[0])], cleaned[:1])


def test_the_generator_prompt_does_not_depend_on_the_label():
    from reasonrec.explain.generate import ExplainConfig, Explainer
    from reasonrec.explain.store import ExplanationStore
    from reasonrec.explain.templates import load_templates

    samples = _samples()
    flipped = samples.assign(label=1 - samples["label"], rating=6 - samples["rating"])
    explainer = Explainer(_Keyed("key-only"), ExplanationStore(":memory:"), load_templates("movie"),
                          ExplainConfig(profiles=False))
    ids = rl_sample_ids(samples, 100, 0)
    a = rl_prompts(explainer, samples, _items(), ids)
    b = rl_prompts(explainer, flipped, _items(), ids)
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert all("rating" not in p.prompt.canonical().lower() for p in a)


# --- GRPO pieces ---------------------------------------------------------------------------

def test_group_advantages_are_centred_and_scaled_per_group():
    r = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, -1.0, 1.0]])
    a = group_advantages(r)
    np.testing.assert_allclose(a.mean(1), 0, atol=1e-12)
    assert a[0].std(ddof=1) == pytest.approx(1.0, rel=1e-3)
    assert (a[1] == 0).all()
    np.testing.assert_allclose(group_advantages(r, scale=False), r - r.mean(1, keepdims=True))


def test_token_loss_gradient_is_reinforce_at_the_old_policy():
    """With pi_old = pi and ref = pi: grad of the loss = -A * grad log pi (KL term has zero grad)."""
    torch.manual_seed(0)
    theta = torch.randn(2, 3, requires_grad=True)
    logp = torch.log_softmax(theta, -1)
    adv = torch.tensor([1.5, -0.5])
    loss, kl, clipped = token_loss(logp, logp.detach(), logp.detach(), adv, beta=0.1, eps=0.2)
    loss.sum().backward()
    g_loss = theta.grad.clone()
    theta.grad = None
    (-(adv[:, None] * torch.log_softmax(theta, -1)).sum()).backward()
    torch.testing.assert_close(g_loss, theta.grad)
    assert float(kl.detach().abs().max()) == 0.0 and not clipped.any()


def test_token_loss_clips_like_ppo():
    logp = torch.log(torch.tensor([[0.9]]))
    old = torch.log(torch.tensor([[0.5]]))  # ratio 1.8 > 1 + eps
    loss, _, clipped = token_loss(logp, old, old, torch.tensor([1.0]), beta=0.0, eps=0.2)
    assert float(loss) == pytest.approx(-1.2) and bool(clipped.all())
    loss, _, clipped = token_loss(logp, old, old, torch.tensor([-1.0]), beta=0.0, eps=0.2)
    assert float(loss) == pytest.approx(1.8) and not clipped.any()


# --- loop bookkeeping ----------------------------------------------------------------------

def test_batches_are_a_function_of_the_step_so_resume_matches():
    pool = list(range(10))
    straight = [x for s in range(7) for x in batch_for_step(pool, s, 4, seed=3)]
    assert straight[:10] != pool and sorted(straight[:10]) == pool   # epoch 1 is a permutation
    assert sorted(straight[10:20]) == pool
    assert batch_for_step(pool, 5, 4, seed=3) == straight[20:24]


def test_text_metrics():
    texts = ["P it is good fun", "P it is good fun", "P a sad story"]
    m = text_metrics(texts, ["ok", "repaired", "ok"], prefixes=("P",))
    assert m["unique_sentence_ratio"] == pytest.approx(2 / 3)
    assert m["format_compliance"] == pytest.approx(2 / 3)
    assert m["mean_words"] == pytest.approx((4 + 4 + 3) / 3)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    assert unique_ratio(["A.", "a"]) == 0.5


def test_judge_metrics_perfect_and_random():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    z = np.where(y == 1, 2.0, -2.0)
    q = 1 / (1 + np.exp(-z))
    m = judge_metrics(z, z, y, q)
    assert m["lc_auc_pair"] == 1.0 and m["ic_pearson_pair"] == pytest.approx(1.0)
    assert m["ic_mse_pair"] == pytest.approx(0.0) and m["ic_reward_mean"] == pytest.approx(0.0, abs=1e-9)
    r = judge_metrics(rng.normal(size=400), rng.normal(size=400), y, q)
    assert 0.4 < r["lc_auc_pair"] < 0.6
