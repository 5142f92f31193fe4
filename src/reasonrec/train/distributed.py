"""Data-parallel training on several local processes (`TrainConfig.nproc`, issue #18).

Launcher: `torch.multiprocessing.spawn` from inside `fit`, not Ray Train and not an external
`torchrun`. Featurising and text encoding happen once in the calling process; the spawned ranks get
the finished tensors through shared memory, so the estimator, `run_seeds`, the benchmarks and the
CLI all scale out by one config value. Ray would be a large optional dependency for what gloo on one
machine already does, and `torchrun` would make every rank repeat the data preparation. Ranks only
talk through a `torch.distributed` process group, so a process that a launcher started as one of
several (`torchrun`, also across nodes) joins the launcher's group and trains as its rank.

The sharding keeps one process's optimisation: every rank draws the same seeded permutation, and
global batch k (the same `batch_size` samples one process would see) is cut into `nproc` contiguous
pieces, one per rank. DistributedDataParallel averages the ranks' gradients; each rank's loss is
weighted by its share of the global batch, so the step is the one-process step on the same samples,
up to the order of float additions and the dropout masks (drawn per rank).
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reasonrec.train.features import TensorData


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def batches(data: TensorData, batch_size: int, shard: Shard, generator: torch.Generator):
    """This rank's piece of each global batch of one shuffled epoch: (batch dict, global batch size).

    One gather per epoch of this rank's rows, then contiguous slices, as `TensorData.batches`. A
    final global batch with fewer rows than ranks is skipped on every rank: an empty piece would
    leave that rank without a backward pass to join the gradient all-reduce."""
    order = torch.randperm(data.n, generator=generator)
    pieces, sizes = [], []
    for start in range(0, data.n, batch_size):
        chunk = order[start:start + batch_size]
        if len(chunk) < shard.world:
            continue
        piece = torch.tensor_split(chunk, shard.world)[shard.rank]
        pieces.append(piece)
        sizes.append((len(piece), len(chunk)))
    if not pieces:
        return
    mine = torch.cat(pieces)
    tensors = {k: v[mine] for k, v in data.tensors.items()}
    offset = 0
    for local, global_size in sizes:
        yield {k: v[offset:offset + local] for k, v in tensors.items()}, global_size
        offset += local


def wrap(model: torch.nn.Module, probe: dict) -> torch.nn.Module:
    """DDP around `model`. Some zoo models leave parameters out of every forward (e.g. explanation
    slots a config switches off), and DDP must be told, or it fails waiting for their gradients;
    telling it for every model costs an extra autograd traversal per step. One probe pass on
    `probe` (a batch) decides, without touching .grad or the random stream."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.random.fork_rng():
        grads = torch.autograd.grad(model(probe).sum(), params, allow_unused=True)
    unused = any(g is None for g in grads)
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=unused)


def all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def leader_says(flag: bool) -> bool:
    """Rank 0's decision (e.g. stop early), the same on every rank."""
    t = torch.tensor([int(flag)])
    dist.broadcast(t, src=0)
    return bool(t.item())


def from_leader(*objects):
    """Rank 0's `objects` (any picklable), on every rank."""
    box = list(objects)
    dist.broadcast_object_list(box, src=0)
    return box


def is_leader() -> bool:
    """False only on ranks other than 0 of a launcher's process group: they must not write outputs."""
    shard = current_shard()
    return shard is None or shard.leader


def current_shard() -> Shard | None:
    """This process's shard when a launcher started it as one rank of several (torchrun sets
    WORLD_SIZE and the rendezvous variables; the group is joined here on first use), else None."""
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
            return None
        dist.init_process_group("gloo")
    if dist.get_world_size() <= 1:
        return None
    return Shard(dist.get_rank(), dist.get_world_size())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str, model, train, valid, cfg, task, scale):
    from reasonrec.train.trainer import train_loop

    # spawn hands tensors over in shared memory: without a private copy every rank's optimiser
    # would step the same parameters
    model = copy.deepcopy(model)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        best_state, result = train_loop(model, train, valid, cfg, task, scale, Shard(rank, world))
        if rank == 0:
            torch.save({"best_state": best_state, "model": model.state_dict(), "result": result}, out)
    finally:
        dist.destroy_process_group()


def spawn_fit(model, train: TensorData, valid: TensorData, cfg, task: str, scale):
    """Run the fit loop on `cfg.nproc` local processes; returns rank 0's (best state, FitResult).

    A rank that fails makes `spawn` raise in the caller, after the other ranks are ended."""
    with tempfile.TemporaryDirectory(prefix="reasonrec-ddp-") as tmp:
        out = str(Path(tmp) / "rank0.pt")
        # a copy, so that the caller's parameters are not moved into shared memory
        mp.spawn(_rank_main, args=(cfg.nproc, _free_port(), out, copy.deepcopy(model), train, valid, cfg, task, scale),
                 nprocs=cfg.nproc, join=True)
        state = torch.load(out, weights_only=False)
    return state["best_state"] if state["best_state"] is not None else state["model"], state["result"]
