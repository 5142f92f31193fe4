"""The CTR/sequential model zoo: one input contract, logits (B,), explanations as optional fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read
from reasonrec.estimator import Recommender
from reasonrec.models.base import MODELS, ExplanationInput, ModelConfig, build_model, standardise_explanations
from reasonrec.train.features import Featurizer
from tests.test_lr_recsys import synthetic_explanations

ZOO = ["ncf", "deepfm", "dcnv2", "din", "gru4rec", "sasrec", "bert4rec", "fat", "apg", "optfusion"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is several times faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small():
    return prepare(read("ml-100k"), PrepareConfig(max_users=120, last_n_per_user=30))


@pytest.fixture(scope="module")
def featurizer(small):
    return Featurizer().fit(small.samples[small.samples.split == "train"], small.items, small.users)


@pytest.fixture(scope="module")
def batch(small, featurizer):
    rng = np.random.default_rng(0)
    data = featurizer.transform(small.samples.head(64), small.items, small.users,
                                (rng.random((64, 8), dtype=np.float32), rng.random((64, 8), dtype=np.float32)))
    out = next(data.batches(64))
    out["hist"][:3] = 0                      # a few users with no history at all
    out["hist"][3:6, :3] = 0                 # and a few with a short one
    return out


def make(name: str, featurizer, expl: bool, side: bool = True, fusion: str = "residual") -> torch.nn.Module:
    torch.manual_seed(0)
    # the pooled-history field on (off by default) so the shape tests cover it too
    cfg = ModelConfig(**featurizer.spec.cardinalities(), embed_dim=8, expl_dim=8 if expl else 0,
                      expl_slots=2 if expl else 0, side_features=side, pooled_history=True, fusion=fusion)
    return build_model(name, cfg)


FUSIONS = ["residual", "gated", "raw"]


def test_every_zoo_model_is_registered():
    assert set(ZOO) <= set(MODELS)


@pytest.mark.parametrize("side", [True, False], ids=["side", "noside"])
@pytest.mark.parametrize("expl", [True, False], ids=["expl", "noexpl"])
@pytest.mark.parametrize("name", ZOO)
def test_forward_shape(name, expl, side, featurizer, batch):
    logits = make(name, featurizer, expl, side)(batch)
    assert logits.shape == (64,)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("expl", [True, False], ids=["expl", "noexpl"])
@pytest.mark.parametrize("name", ZOO)
def test_overfits_a_batch(name, expl, featurizer, batch):
    net = make(name, featurizer, expl)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    losses = []
    for _ in range(300):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(batch), batch["label"])
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.05 * losses[0], f"{name}: {losses[0]:.4f} -> {losses[-1]:.4f}"


def _open_gates(net):
    for m in net.modules():
        if isinstance(m, ExplanationInput) and m.mode == "text" and m.gated:
            m.gate.data.fill_(1.0)


@pytest.mark.parametrize("name", ZOO)
def test_residual_fusion_with_a_closed_gate_is_the_model_without_explanations(name, featurizer, batch):
    """The default fusion starts with the gate closed, and its parameters come from a forked random
    stream: the same seed gives the model without explanations, weight for weight and output for
    output, whatever the explanations say. So untrained reasons cannot hurt, and a paired
    comparison with/without over seeds measures only what the gate lets through."""
    with_expl = make(name, featurizer, expl=True).eval()
    without = make(name, featurizer, expl=False).eval()
    shared = {k: v for k, v in with_expl.state_dict().items() if k in without.state_dict()}
    assert shared.keys() == without.state_dict().keys()
    for k, v in without.state_dict().items():
        torch.testing.assert_close(shared[k], v, msg=f"{name}: {k} differs from the model without explanations")
    with torch.no_grad():
        noisy = {**batch, "expl_pos": 100 * torch.randn_like(batch["expl_pos"]), "expl_neg": -batch["expl_neg"]}
        torch.testing.assert_close(with_expl(noisy), without(batch))


@pytest.mark.parametrize("name", ZOO)
def test_gated_tokens_start_as_zero_tokens(name, featurizer, batch):
    net = make(name, featurizer, expl=True, fusion="gated").eval()
    with torch.no_grad():
        before = net(batch)
        after = net({**batch, "expl_pos": 100 * torch.randn_like(batch["expl_pos"]), "expl_neg": -batch["expl_neg"]})
    torch.testing.assert_close(before, after)


def test_standardise_uses_the_training_codes(featurizer, batch):
    net = make("deepfm", featurizer, expl=True)
    codes = {"expl_pos": torch.randn(500, 8) * 3 + 5, "expl_neg": torch.randn(500, 8) * 0.5 - 2}
    standardise_explanations(net, codes)
    inputs = [m for m in net.modules() if isinstance(m, ExplanationInput)]
    assert len(inputs) == 2                                     # DeepFM: its embeddings and its first-order weights
    for m in inputs:
        torch.testing.assert_close(m.mean[0], codes["expl_pos"].mean(0))
        torch.testing.assert_close(m.std[1], codes["expl_neg"].std(0))
    assert "fields.expl.mean" in net.state_dict()              # so the bundle keeps the statistics


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("name", ZOO)
def test_explanations_change_the_output(name, fusion, featurizer, batch):
    net = make(name, featurizer, expl=True, fusion=fusion).eval()
    _open_gates(net)
    with torch.no_grad():
        before = net(batch)
        after = net({**batch, "expl_pos": batch["expl_pos"] + torch.randn_like(batch["expl_pos"])})
        other_rows = net({**batch, "expl_pos": torch.cat([batch["expl_pos"][:1] + 1, batch["expl_pos"][1:]])})
    assert (before - after).abs().min() > 1e-6, "every sample's logit must depend on its explanation"
    assert (before - other_rows)[0].abs() > 1e-6
    torch.testing.assert_close(before[1:], other_rows[1:], msg="one sample's explanation leaked into another's")


@pytest.mark.parametrize("name", ZOO)
def test_free_vectors_take_the_explanation_slots(name, featurizer, batch):
    torch.manual_seed(0)
    cfg = ModelConfig(**featurizer.spec.cardinalities(), embed_dim=8, expl_mode="free", expl_slots=2)
    net = build_model(name, cfg).eval()
    plain = {k: v for k, v in batch.items() if not k.startswith("expl_")}
    assert net(plain).shape == (64,), "Ablation 1 (free vectors) must not need explanation inputs"


@pytest.mark.parametrize("name", ZOO)
def test_recommender_fits_with_text_explanations(name, small):
    expl = synthetic_explanations(small.samples)
    # enough optimiser steps on this small slice to read a label-revealing text (not the defaults' job)
    rec = Recommender(model=name, explanations="text", epochs=2, lr=0.01, batch_size=64,
                      encoder_options={"epochs": 2, "min_count": 1})
    rec.fit(small, expl)
    assert rec.fit_result.epochs_run == 2
    assert rec.evaluate(small, expl)["auc"] > 0.9, "label-revealing explanations must be usable by the model"


def test_fat_attention_is_over_named_fields(featurizer, batch):
    net = make("fat", featurizer, expl=True, fusion="gated")   # explanations as fields of their own
    net(batch)
    F = len(net.input_names)
    assert net.input_names[:3] == ["user", "item", "history"] and net.input_names[-2:] == ["pos", "neg"]
    assert net.last_attention.shape == (64, F, F)
    torch.testing.assert_close(net.last_attention.sum(-1), torch.ones(64, F))


def test_optfusion_reports_its_architecture(featurizer, batch):
    arch = make("optfusion", featurizer, expl=False).architecture()
    assert list(arch) == ["cross1", "deep1", "cross2", "deep2", "cross3", "deep3", "output"]
    assert list(arch["output"]["edges"]) == ["emb", "cross0", "cross1", "deep1", "cross2", "deep2", "cross3", "deep3"]
    for block in arch.values():
        assert sum(block["ops"].values()) == pytest.approx(1.0)
        assert all(0 < g < 1 for g in block["edges"].values())
