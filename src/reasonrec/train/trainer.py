"""The fit/evaluate loop shared by every model: Adam, mini-batches, early stopping on validation.

Early stopping and model selection only ever look at the validation split (the monitored metric:
AUC or LogLoss, RMSE or MAE); the test split is scored once, by the caller, with the restored best
weights. Classification trains on BCE with the label, or with `supervision="soft"` against the
rating scaled to [0, 1] (seed 003's scaled supervision: the targets keep the rating's order
instead of thresholding it away); regression on MSE with the rating mapped to [0, 1] through a
sigmoid output, reported back on the original scale. Settings: `reasonrec.config.TrainConfig`.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from reasonrec.config import TrainConfig
from reasonrec.train.features import TensorData
from reasonrec.train.metrics import SELECTION, metrics_for


@dataclass
class FitResult:
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)
    epochs_run: int = 0
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0
    history: list = field(default_factory=list)
    monitor: str = ""
    dead_units: float | None = None          # share of the head's bottleneck units that never fire (valid)
    constant_output: bool = False            # every validation prediction the same: a dead model


def seed_everything(seed: int, threads: int | None = None):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def target(batch: dict, task: str, scale: tuple[float, float], supervision: str = "label") -> torch.Tensor:
    if task == "classification" and supervision == "label":
        return batch["label"]
    return ((batch["rating"] - scale[0]) / (scale[1] - scale[0])).clamp(0.0, 1.0)


def monitor_of(cfg: TrainConfig, task: str) -> tuple[str, bool]:
    """The validation metric early stopping watches, and whether larger is better (the config
    checks that it fits the task)."""
    return SELECTION[task] if cfg.monitor == "auto" else (cfg.monitor, cfg.monitor == "auc")


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]


def embedding_tables(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in embedding_modules(model)]


class EmbeddingPenalty:
    """`embed_reg` x the squared L2 of the embeddings, either of whole tables or of the rows one
    training batch looked up (summed per sample, averaged over the batch)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        self.weight, self.on = cfg.embed_reg, cfg.embed_reg_on
        self.tables = embedding_tables(model) if self.weight and self.on == "tables" else []
        self.looked_up: list[torch.Tensor] = []
        self.hooks = [m.register_forward_hook(self._record) for m in embedding_modules(model)] \
            if self.weight and self.on == "batch" else []

    def _record(self, module, inputs, output):
        if module.training:
            self.looked_up.append(output)

    def reset(self) -> None:
        """Forget lookups made outside a training step (e.g. a wrapper's probe forward)."""
        self.looked_up = []

    def __call__(self, batch_size: int) -> torch.Tensor | float:
        if not self.weight:
            return 0.0
        if self.on == "tables":
            return self.weight * sum(t.pow(2).sum() for t in self.tables)
        rows, self.looked_up = self.looked_up, []
        return self.weight * sum(o.pow(2).sum() for o in rows) / batch_size

    def close(self):
        for h in self.hooks:
            h.remove()


@torch.no_grad()
def bottleneck_health(model: nn.Module, data: TensorData) -> tuple[float | None, bool]:
    """(share of dead units in the last hidden layer of the model's `head` MLP, constant output?).
    A unit is dead when its ReLU output is 0 for every validation sample: LR-Recsys' 8-unit
    bottleneck at lr 0.01 loses all of them on some seeds, and the model then predicts a constant."""
    model.eval()
    relus = [m for m in getattr(model, "head", nn.Sequential()).modules() if isinstance(m, nn.ReLU)]
    seen, outs = [], []
    hook = relus[-1].register_forward_hook(lambda m, i, o: seen.append(o.amax(0))) if relus else None
    for batch in data.batches(4096):
        outs.append(model(batch))
    if hook is not None:
        hook.remove()
    out = torch.cat(outs)
    dead = float((torch.stack(seen).amax(0) <= 0).float().mean()) if seen else None
    return dead, bool(out.numel() > 1 and float(out.std()) < 1e-6)


def loss_fn(task: str):
    return nn.BCEWithLogitsLoss() if task == "classification" else _SigmoidMSE()


class _SigmoidMSE(nn.Module):
    def forward(self, logits, y):
        return torch.mean((torch.sigmoid(logits) - y) ** 2)


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, task: str, scale=(1.0, 5.0), batch_size: int = 4096,
            return_attention: bool = False):
    """Probabilities (classification) or ratings on the original scale (regression)."""
    model.eval()
    preds, attns = [], []
    for batch in data.batches(batch_size):
        p = torch.sigmoid(model(batch))
        preds.append(p)
        if return_attention and getattr(model, "last_attention", None) is not None:
            attns.append(model.last_attention)
    out = torch.cat(preds).numpy().astype("float64")
    if task == "regression":
        out = scale[0] + out * (scale[1] - scale[0])
    if return_attention:
        return out, (torch.cat(attns).numpy() if attns else None)
    return out


def evaluate(model, data: TensorData, task: str, scale=(1.0, 5.0)) -> dict:
    pred = predict(model, data, task, scale)
    y = data.tensors["label" if task == "classification" else "rating"].numpy()
    return metrics_for(task, y, pred, scale)


def fit(model: nn.Module, train: TensorData, valid: TensorData, cfg: TrainConfig, task: str = "classification",
        scale: tuple[float, float] = (1.0, 5.0)) -> FitResult:
    """Train `model` in place and leave the best validation weights in it.

    `cfg.nproc > 1` trains on that many local processes (`reasonrec.train.distributed`); inside a
    process group that a launcher set up (torchrun), this process is one rank of it."""
    from reasonrec.train import distributed

    shard = distributed.current_shard()
    if shard is None and cfg.nproc > 1:
        best_state, result = distributed.spawn_fit(model, train, valid, cfg, task, scale)
    else:
        best_state, result = train_loop(model, train, valid, cfg, task, scale, shard)
    if best_state is not None:
        model.load_state_dict(best_state)
    result.dead_units, result.constant_output = bottleneck_health(model, valid)
    return result


def train_loop(model: nn.Module, train: TensorData, valid: TensorData, cfg: TrainConfig, task: str,
               scale: tuple[float, float], shard=None) -> tuple[dict | None, FitResult]:
    """The epochs: returns (best validation weights, FitResult). With a `shard` this process is one
    rank: it trains on its piece of every global batch, and rank 0 alone validates, keeps the best
    weights, writes the checkpoint and decides when to stop; its decision is broadcast."""
    from reasonrec.train import distributed

    leader = shard is None or shard.leader
    # dropout masks differ per rank, as they would across the samples of one process's batch
    seed_everything(cfg.seed + (shard.rank if shard else 0), cfg.threads)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net = distributed.wrap(model, next(valid.batches(8))) if shard else model
    criterion = loss_fn(task)
    metric, larger_is_better = monitor_of(cfg, task)
    penalty = EmbeddingPenalty(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)   # the same permutation on every rank
    result = FitResult(monitor=metric)
    best_state, best_score, start_epoch, bad_epochs = None, None, 0, 0

    ckpt = Path(cfg.checkpoint_dir) / "checkpoint.pt" if cfg.checkpoint_dir else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        best_state, best_score, start_epoch, bad_epochs = state["best_state"], state["best_score"], state["epoch"], state["bad_epochs"]
        result = FitResult(**state["result"])

    started = time.perf_counter() - result.seconds
    bar = tqdm(range(start_epoch, cfg.epochs), desc="train", disable=not (cfg.progress and leader), leave=False)
    for epoch in bar:
        model.train()
        total, seen = 0.0, 0
        if shard is None:
            pieces = ((batch, None) for batch in train.batches(cfg.batch_size, shuffle=True, generator=gen))
        else:
            pieces = distributed.batches(train, cfg.batch_size, shard, gen)
        for batch, global_size in pieces:
            opt.zero_grad(set_to_none=True)
            penalty.reset()
            loss = criterion(net(batch), target(batch, task, scale, cfg.supervision))
            total += loss.item() * len(batch["user"])
            seen += len(batch["user"])
            if global_size is not None:
                # DDP averages over ranks; weighting by this rank's share makes it the global mean
                loss = loss * (len(batch["user"]) * shard.world / global_size)
            loss = loss + penalty(len(batch["user"]))
            loss.backward()
            opt.step()
        if shard is not None:
            total, seen = distributed.all_sum([total, seen])
        stop = False
        if leader:
            scores = evaluate(model, valid, task, scale)
            result.history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), **{f"valid_{k}": v for k, v in scores.items()}})
            score = scores[metric]
            improved = best_score is None or (score > best_score if larger_is_better else score < best_score)
            if improved:
                best_score, best_state, bad_epochs = score, copy.deepcopy(model.state_dict()), 0
                result.best_epoch, result.best_valid = epoch + 1, scores
            else:
                bad_epochs += 1
            result.epochs_run = epoch + 1
            result.seconds = time.perf_counter() - started
            bar.set_postfix(loss=f"{total / max(seen, 1):.4f}", **{metric: f"{score:.4f}"})
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                            "best_state": best_state, "best_score": best_score, "epoch": epoch + 1,
                            "bad_epochs": bad_epochs, "result": asdict(result)}, tmp)
                tmp.replace(ckpt)
            stop = bad_epochs >= cfg.patience
        if shard is not None:
            stop = distributed.leader_says(stop)
        if stop:
            break
    penalty.close()
    result.seconds = time.perf_counter() - started
    result.seconds_per_epoch = result.seconds / max(result.epochs_run - start_epoch, 1)
    if shard is not None:
        # every rank leaves with rank 0's model and record, so a launcher's ranks agree afterwards
        best_state, result = distributed.from_leader(best_state, result)
    return best_state, result


def save_json(obj, path: Path):
    path.write_text(json.dumps(obj, indent=2, default=float))
