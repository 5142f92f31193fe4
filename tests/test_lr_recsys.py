"""LR-Recsys pieces: the autoencoder, the DNN's shapes and attention, the estimator round trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import reasonrec
from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read
from reasonrec.encode.autoencoder import AutoencoderConfig, AutoencoderEncoder
from reasonrec.estimator import LRRecsys, Recommender
from reasonrec.models.base import ModelConfig
from reasonrec.models.lr_recsys import LRRecsysNet
from reasonrec.train.features import Featurizer

WORDS = ["comedy", "drama", "action", "family", "romance", "thriller", "funny", "dark", "long", "classic"]


def synthetic_explanations(samples: pd.DataFrame, informative: bool = True) -> pd.DataFrame:
    """Texts whose words depend on the label (or not): a controlled signal for the pipeline tests."""
    rng = np.random.default_rng(0)
    pos, neg = [], []
    for label in samples["label"]:
        a = rng.choice(WORDS[:5] if (label and informative) else WORDS[5:], 3)
        b = rng.choice(WORDS[5:] if (label and informative) else WORDS[:5], 3)
        pos.append("the consumer likes " + " ".join(a))
        neg.append("the consumer dislikes " + " ".join(b))
    return pd.DataFrame({"sample_id": samples["sample_id"], "positive": pos, "negative": neg})


@pytest.fixture(scope="module")
def small():
    return prepare(read("ml-100k"), PrepareConfig(max_users=120, last_n_per_user=30))


@pytest.mark.parametrize("decoder", ["embedding", "softmax"])
def test_autoencoder_reconstruction_improves(decoder):
    texts = [f"the consumer likes {a} and {b} movies" for a in WORDS for b in WORDS] * 3
    enc = AutoencoderEncoder(AutoencoderConfig(decoder=decoder, epochs=15, patience=15, min_count=1))
    enc.fit(texts[:250], texts[250:])
    losses = [h["valid_loss"] for h in enc.history if "valid_loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    chance = 1 / len(enc.vocab)
    assert enc.history[-1]["valid_word_acc"] > 5 * chance     # words come back, not a guess
    codes = enc.encode(texts[:4])
    assert codes.shape == (4, 8) and np.isfinite(codes).all()


def test_autoencoder_has_the_papers_shape():
    """Appendix 8.1: 50 x 8 embedded words, 400 -> 64 -> 8 -> 64 -> 400; the word table is fixed."""
    enc = AutoencoderEncoder(AutoencoderConfig(epochs=1, min_count=1)).fit(["a b c", "b c d"])
    assert enc.n_params == (400 * 64 + 64) + (64 * 8 + 8) + (8 * 64 + 64) + (64 * 400 + 400) == 52760
    assert not enc.model.embed.weight.requires_grad


def test_vocabulary_comes_from_train_split_only(small):
    expl = synthetic_explanations(small.samples)
    test_ids = small.samples.loc[small.samples.split == "test", "sample_id"]
    expl.loc[expl.sample_id.isin(test_ids), "positive"] = "zyzzyva quokka"  # words only test samples have
    rec = LRRecsys(epochs=2, encoder_options={"epochs": 2, "min_count": 1})
    rec.fit(small, expl)
    assert "zyzzyva" not in rec.encoder.vocab and "quokka" not in rec.encoder.vocab
    assert "comedy" in rec.encoder.vocab


@pytest.mark.parametrize("fusion,names", [
    ("gated", ["pos", "neg", "user", "item", "seq", "context"]),    # explanations as attention tokens
    ("raw", ["pos", "neg", "user", "item", "seq", "context"]),      # the paper's
    ("residual", ["user", "item", "seq", "context"]),                # explanations inside the item token
])
def test_dnn_shapes_and_attention(small, fusion, names):
    fz = Featurizer(side_features=False).fit(small.samples[small.samples.split == "train"], small.items, small.users)
    data = fz.transform(small.samples.head(16), small.items, small.users,
                        (np.random.rand(16, 8).astype("float32"), np.random.rand(16, 8).astype("float32")))
    cfg = ModelConfig(**fz.spec.cardinalities(), expl_dim=8, side_features=False, fusion=fusion)
    net = LRRecsysNet(cfg)
    batch = next(data.batches(16))
    logits = net(batch)
    assert logits.shape == (16,)
    attn, T = net.last_attention, len(names)
    assert attn.shape == (16, T, T)
    assert torch.allclose(attn.sum(-1), torch.ones(16, T), atol=1e-5)
    shares = LRRecsysNet.attention_shares(attn)
    assert torch.allclose(shares.sum(-1), torch.ones(16), atol=1e-5)
    assert net.input_names == names


def test_history_dropout_acts_only_while_training(small):
    fz = Featurizer().fit(small.samples[small.samples.split == "train"], small.items, small.users)
    data = fz.transform(small.samples.head(256), small.items, small.users)
    net = LRRecsysNet(ModelConfig(**fz.spec.cardinalities(), hist_dropout=0.5))
    batch = next(data.batches(256))
    real = batch["hist"] > 0
    torch.manual_seed(0)
    seq, mask = net.train().fields.history_seq(batch)
    assert not (mask & ~real).any(), "a padded slot became a real item"
    assert 0.3 < mask.sum() / real.sum() < 0.7
    assert (seq[~mask] == 0).all(), "a dropped item still carries its embedding"
    seq, mask = net.eval().fields.history_seq(batch)
    assert torch.equal(mask, real) and (seq[real] != 0).any(dim=-1).all()


def test_overfits_a_batch(small):
    fz = Featurizer().fit(small.samples[small.samples.split == "train"], small.items, small.users)
    data = fz.transform(small.samples.head(64), small.items, small.users,
                        (np.random.rand(64, 8).astype("float32"), np.random.rand(64, 8).astype("float32")))
    net = LRRecsysNet(ModelConfig(**fz.spec.cardinalities(), expl_dim=8))
    batch = next(data.batches(64))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch), batch["label"])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_informative_explanations_are_learned_and_bundle_round_trips(small, tmp_path):
    expl = synthetic_explanations(small.samples)
    rec = LRRecsys(epochs=30, patience=5, encoder_options={"epochs": 30, "min_count": 1})
    rec.fit(small, expl)
    with_text = rec.evaluate(small, expl)["auc"]
    assert with_text > 0.9, "a label-revealing explanation must be usable by the model"
    rec.save(tmp_path / "b")
    back = reasonrec.load(tmp_path / "b")
    test = small.samples[small.samples.split == "test"]
    np.testing.assert_array_equal(rec.predict(test, expl), back.predict(test, expl))
    out = back.explain(test.user_id.iloc[0], test.item_id.iloc[0])
    assert set(out["attention"]) == {"user", "item", "seq", "context"}   # residual fusion: reasons ride on the item token
    assert abs(sum(out["attention"].values()) - 1) < 1e-3
    assert out["explanations"]["positive"].startswith("the consumer likes")
    cold = back.explain("no-such-user", test.item_id.iloc[0])
    assert cold["known_user"] is False and cold["has_explanations"] is False


def test_free_vectors_and_regression(small):
    free = Recommender(model="lr-recsys", explanations="free", epochs=3).fit(small)
    assert 0.4 < free.evaluate(small)["auc"] < 1.0
    reg = Recommender(model="lr-recsys", explanations="none", task="regression", epochs=3).fit(small)
    m = reg.evaluate(small)
    assert 0.5 < m["rmse"] < 2.0 and m["rmse_norm"] == pytest.approx(m["rmse"] / 4)
    preds = reg.predict(small.samples.head(20))
    assert ((preds >= 1) & (preds <= 5)).all()


def test_explain_live_generates_only_the_new_pair(small, tmp_path):
    from reasonrec.explain.generate import ExplainConfig, Explainer
    from reasonrec.explain.store import ExplanationStore
    from reasonrec.explain.templates import load_templates
    from tests.fakes import FakeLLM

    expl = synthetic_explanations(small.samples)
    rec = LRRecsys(epochs=2, encoder_options={"epochs": 2, "min_count": 1}).fit(small, expl)
    llm = FakeLLM()
    explainer = Explainer(llm, ExplanationStore(tmp_path / "s.sqlite"), load_templates("movie"),
                          ExplainConfig(profiles=False))
    user = small.samples.user_id.iloc[0]
    seen = set(small.samples.loc[small.samples.user_id == user, "item_id"])
    item = next(i for i in small.items.item_id if i not in seen)
    out = rec.explain_live(user, item, explainer)
    assert out["has_explanations"] and out["explanations"]["positive"].startswith("The consumer watched")
    assert len(llm.prompts) == 2 and out["history"] == rec.user_history[user]
    again = rec.explain_live(user, item, explainer)
    assert len(llm.prompts) == 2 and again["score"] == out["score"]   # served from the store


@pytest.mark.parametrize("fusion", ["residual", "gated", "raw"])
@pytest.mark.parametrize("side", [True, False], ids=["side", "noside"])
def test_serving_split_reproduces_the_forward(small, fusion, side):
    """The service's split scorer (user half once, candidate half per item) gives the model's own
    logits and attention under every explanation fusion."""
    from reasonrec.serve.split import SplitScorer

    fz = Featurizer(side_features=side).fit(small.samples[small.samples.split == "train"], small.items, small.users)
    data = fz.transform(small.samples.head(16), small.items, small.users,
                        (np.random.rand(16, 8).astype("float32"), np.random.rand(16, 8).astype("float32")))
    torch.manual_seed(0)
    net = LRRecsysNet(ModelConfig(**fz.spec.cardinalities(), expl_dim=8, side_features=side, fusion=fusion)).eval()
    for m in net.modules():
        if getattr(m, "gated", False):
            m.gate.data.fill_(0.7)                       # open, so the explanations count
    batch = next(data.batches(16))
    for key in ("user", "hist", "ctx", "user_feats"):   # one user scoring 16 candidates
        batch[key] = batch[key][:1].expand_as(batch[key]).clone()
    with torch.no_grad():
        full = net(batch)
        attn = net.last_attention
        items = {k: batch[k] for k in ("item", "item_feats", "item_cats", "expl_pos", "expl_neg")}
        fast, fast_attn = SplitScorer(net).forward("u", int(batch["user"][0]), batch["hist"][:1], batch["ctx"][:1],
                                                   batch["user_feats"][:1], items)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_attn, attn, atol=1e-5, rtol=1e-5)
