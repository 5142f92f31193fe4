"""The fit loop's options: early-stopping monitor, scaled supervision, embedding regulariser, and the
dead-unit / constant-output report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reasonrec.config import TrainConfig
from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read
from reasonrec.estimator import Recommender
from reasonrec.train.trainer import EmbeddingPenalty, bottleneck_health, embedding_tables, target


@pytest.fixture(scope="module")
def small():
    return prepare(read("ml-100k"), PrepareConfig(max_users=80, last_n_per_user=20))


def test_monitor_logloss_keeps_the_epoch_with_the_lowest_validation_logloss(small):
    rec = Recommender(model="ncf", explanations="none", epochs=6, patience=6, monitor="logloss").fit(small)
    hist = rec.fit_result.history
    assert rec.fit_result.monitor == "logloss"
    best = min(range(len(hist)), key=lambda i: hist[i]["valid_logloss"])
    assert rec.fit_result.best_epoch == best + 1
    with pytest.raises(Exception, match="monitor 'rmse'"):          # refused before anything trains
        Recommender(model="ncf", explanations="none", epochs=1, monitor="rmse")


def test_soft_supervision_targets_keep_the_rating_order():
    batch = {"label": torch.tensor([0.0, 0.0, 1.0, 1.0]), "rating": torch.tensor([1.0, 3.0, 4.0, 5.0])}
    assert target(batch, "classification", (1.0, 5.0)).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert target(batch, "classification", (1.0, 5.0), "soft").tolist() == [0.0, 0.5, 0.75, 1.0]


def test_the_embedding_regulariser_shrinks_the_tables(small):
    norms = []
    for reg in (0.0, 1e-2):
        rec = Recommender(model="deepfm", explanations="none", epochs=3, patience=3, embed_reg=reg).fit(small)
        norms.append(sum(float(t.detach().pow(2).sum()) for t in embedding_tables(rec.model)))
    assert norms[1] < 0.8 * norms[0]


def test_the_batch_penalty_reaches_only_the_rows_a_batch_looked_up():
    table = torch.nn.Embedding(6, 3)
    model = torch.nn.Sequential(table).train()
    ids = torch.tensor([1, 1, 4])
    grads = {}
    for on in ("tables", "batch"):
        penalty = EmbeddingPenalty(model, TrainConfig(embed_reg=0.5, embed_reg_on=on))
        table.weight.grad = None
        model(ids)
        penalty(len(ids)).backward()
        grads[on] = table.weight.grad.clone()
        penalty.close()
    touched = grads["batch"].abs().sum(1) > 0
    assert touched.tolist() == [False, True, False, False, True, False]
    # per sample: row 1 was looked up twice in a batch of 3 -> 2 * 0.5 * 2 * w / 3
    assert torch.allclose(grads["batch"][1], table.weight[1] * 2 / 3)
    assert bool((grads["tables"].abs().sum(1) > 0).all())
    penalty = EmbeddingPenalty(model, TrainConfig(embed_reg=0.5, embed_reg_on="batch"))
    model.eval()
    model(ids)                                                  # validation lookups are not penalised
    assert penalty(len(ids)) == 0


def test_a_dead_bottleneck_is_reported_as_dead_and_constant(small):
    # the faithful preset: without the robust default's GMF and residual paths, nothing bypasses the
    # bottleneck, so all-dead units mean a constant prediction
    rec = Recommender(model="lr-recsys", preset="faithful", explanations="none", epochs=1).fit(small)
    assert rec.fit_result.dead_units is not None and not rec.fit_result.constant_output
    valid = rec._tensors(small.samples[small.samples["split"] == "valid"], small.items, small.users)
    last_hidden = [m for m in rec.model.head if isinstance(m, torch.nn.Linear)][-2]
    with torch.no_grad():
        last_hidden.bias.fill_(-1e6)                         # every bottleneck unit below zero: all dead
    dead, constant = bottleneck_health(rec.model, valid)
    assert dead == 1.0 and constant


def test_train_config_rejects_unknown_keys():
    with pytest.raises(Exception, match="lr_decay"):
        TrainConfig(lr_decay=0.5)
    assert np.isclose(TrainConfig().lr, 1e-3)
