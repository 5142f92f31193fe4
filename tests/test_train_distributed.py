"""Training on several processes (`TrainConfig.nproc`, issue #18): DDP over gloo on local ranks."""

from __future__ import annotations

import copy

import pytest
import torch

from reasonrec.data.prepare import PrepareConfig, prepare
from reasonrec.data.readers import read
from reasonrec.errors import ReasonrecError
from reasonrec.estimator import Recommender
from reasonrec.train import distributed
from reasonrec.train.features import Featurizer, TensorData
from reasonrec.train.trainer import evaluate, fit, loss_fn, seed_everything, target


@pytest.fixture(scope="module")
def small():
    return prepare(read("ml-100k"), PrepareConfig(max_users=120, last_n_per_user=30))


@pytest.fixture(scope="module")
def tensors(small):
    s = small.samples
    featurizer = Featurizer().fit(s[s.split == "train"], small.items, small.users)
    return {split: featurizer.transform(s[s.split == split], small.items, small.users)
            for split in ("train", "valid", "test")}, featurizer


def model_for(featurizer, dropout: float) -> torch.nn.Module:
    rec = Recommender(model="deepfm", explanations="none", dropout=dropout)
    rec.featurizer = featurizer
    seed_everything(0, 1)
    return rec._build()


def rows(piece: dict) -> list[int]:
    return piece["idx"].tolist()


@pytest.mark.parametrize("n, batch_size, world", [(10, 4, 2), (9, 4, 2), (13, 6, 3), (5, 8, 2)])
def test_ranks_cut_each_global_batch_into_disjoint_contiguous_pieces(n, batch_size, world):
    data = TensorData({"idx": torch.arange(n)})
    order = torch.randperm(n, generator=torch.Generator().manual_seed(7)).tolist()
    per_rank = [list(distributed.batches(data, batch_size, distributed.Shard(r, world),
                                         torch.Generator().manual_seed(7))) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1, "every rank must take the same number of steps"
    for k, start in enumerate(s for s in range(0, n, batch_size) if min(batch_size, n - s) >= world):
        pieces = [per_rank[r][k] for r in range(world)]
        assert sum((rows(b) for b, _ in pieces), []) == order[start:start + batch_size]
        assert all(size == len(order[start:start + batch_size]) and len(rows(b)) > 0 for b, size in pieces)


def reference_fit(model, train, valid, cfg):
    """The one-process loop as it was before `nproc` (no early stopping within `epochs`)."""
    seed_everything(cfg.seed, cfg.threads)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen, criterion = torch.Generator().manual_seed(cfg.seed), loss_fn("classification")
    best, best_auc = None, None
    for _ in range(cfg.epochs):
        model.train()
        for batch in train.batches(cfg.batch_size, shuffle=True, generator=gen):
            opt.zero_grad(set_to_none=True)
            criterion(model(batch), target(batch, "classification", (1.0, 5.0))).backward()
            opt.step()
        auc = evaluate(model, valid, "classification")["auc"]
        if best_auc is None or auc > best_auc:
            best, best_auc = copy.deepcopy(model.state_dict()), auc
    model.load_state_dict(best)


def test_one_process_is_the_plain_loop_bit_for_bit(tensors):
    (data, featurizer) = tensors
    # the reference is the bare loop: no embedding regulariser
    cfg = Recommender(model="deepfm", explanations="none", epochs=3, batch_size=64, nproc=1, embed_reg=0.0).config.train
    ours, ref = model_for(featurizer, 0.2), model_for(featurizer, 0.2)
    fit(ours, data["train"], data["valid"], cfg)
    reference_fit(ref, data["train"], data["valid"], cfg)
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_two_processes_take_the_one_process_steps(tensors):
    """Without dropout the only difference left is the order of float additions."""
    (data, featurizer) = tensors
    base = Recommender(model="deepfm", explanations="none", epochs=2, patience=5, batch_size=64).config.train
    one, two = model_for(featurizer, 0.0), model_for(featurizer, 0.0)
    r1 = fit(one, data["train"], data["valid"], base)
    r2 = fit(two, data["train"], data["valid"], base.model_copy(update={"nproc": 2}))
    assert r2.epochs_run == 2 and len(r2.history) == 2
    assert r2.history[0]["train_loss"] == pytest.approx(r1.history[0]["train_loss"], abs=1e-5)
    drift = max(float((one.state_dict()[k] - v).abs().max()) for k, v in two.state_dict().items())
    assert drift < 1e-4
    auc1, auc2 = (evaluate(m, data["test"], "classification")["auc"] for m in (one, two))
    assert abs(auc1 - auc2) < 0.003


def test_recommender_fits_on_two_processes_with_early_stopping(small):
    """Dropout on, and patience 1 so that rank 0's stop decision must reach rank 1 (else it hangs)."""
    one = Recommender(model="deepfm", explanations="none", epochs=30, patience=1, batch_size=64).fit(small)
    two = Recommender(model="deepfm", explanations="none", epochs=30, patience=1, batch_size=64, nproc=2).fit(small)
    assert two.fit_result.epochs_run < 30
    assert two.fit_result.best_epoch == max(range(1, two.fit_result.epochs_run + 1),
                                            key=lambda e: two.fit_result.history[e - 1]["valid_auc"])
    assert abs(one.evaluate(small)["auc"] - two.evaluate(small)["auc"]) < 0.02


def test_nproc_must_be_positive():
    with pytest.raises(ReasonrecError, match="nproc"):
        Recommender(model="deepfm", nproc=0)


def test_a_torchrun_launch_trains_as_one_group(tmp_path):
    """`torchrun --nproc-per-node 2 -m reasonrec.cli train ...`: each launched process is one rank of
    the launcher's group (no second spawn), both end with the same model, and rank 0 alone saves."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import reasonrec

    data = prepare(read("ml-100k"), PrepareConfig(max_users=60, last_n_per_user=20))
    data.save(tmp_path / "data")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "reasonrec.cli", "train", "--dataset", str(tmp_path / "data"), "--model", "deepfm",
           "--without-explanations", "--epochs", "2", "--batch-size", "64", "--no-progress",
           "--out", str(tmp_path / "models")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": str(Path(reasonrec.__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-3000:]
    # the seed's row (test AUC, best epoch, ...) as each rank printed it
    rows = [line for line in done.stdout.splitlines() if line.split()[:1] == ["0"]]
    assert len(rows) == 2 and rows[0] == rows[1], f"both ranks must end with rank 0's model and record: {rows}"
    assert (tmp_path / "models" / "seed-0" / "model.pt").is_file()


def test_two_processes_resume_from_rank_0s_checkpoint(tensors, tmp_path):
    (data, featurizer) = tensors
    cfg = Recommender(model="deepfm", explanations="none", epochs=2, patience=5, batch_size=64, nproc=2,
                      checkpoint_dir=str(tmp_path)).config.train
    fit(model_for(featurizer, 0.2), data["train"], data["valid"], cfg)
    resumed = fit(model_for(featurizer, 0.2), data["train"], data["valid"], cfg.model_copy(update={"epochs": 3}))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
