"""Data-parallel training under torchrun: one model, N processes, each computing the gradient
of its share of every global batch; the shares are summed (``torch.distributed.all_reduce``)
so that every process takes the same step.

    torchrun --nproc-per-node 2 -m rnnrbm_cli train --data jsb-chorales --batch 8 ...
    torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --nproc-per-node 4 -m rnnrbm_cli train ...

``--batch`` is the global batch: every process draws the same chunk order from the same seed
and takes chunks rank, rank + N, rank + 2N, ... of each batch, so N processes make the
updates one process makes, up to the order of summation. The sum is weighted by each share's
real frames, so a batch mean is the mean over the whole batch. Gloo on CPU, NCCL on CUDA
(one device per process, ``LOCAL_RANK``). It works the same whoever computes a share's
gradient (torch, or the compiled CPU kernels, which leave it in ``.grad`` as torch does).

Rank 0 owns the run directory (lock, config.json, metrics, checkpoints, best.pt); the others
write nothing. Everything a process decides alone (a signal, an error while starting) is
agreed before it acts, so that no process waits for another that has left.
"""

from __future__ import annotations

import atexit
import datetime
import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.errors import RnnrbmError
from rnnrbm_cli.models.base import CostResult

# How long a process waits for the others at a collective before giving up: a dead peer is
# usually noticed at once (its sockets close); this bounds the other cases.
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes."""

    rank: int
    size: int

    @property
    def main(self) -> bool:
        """Whether this process owns the run directory and speaks to the user."""
        return self.rank == 0

    def agree(self, ok: bool) -> bool:
        """True when every process says ok."""
        flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=_device())
        _collective(dist.all_reduce, flag)
        return int(flag) == 0

    def agree_signal(self, signum: int | None) -> int | None:
        """The signal any process has received (the largest number), else None."""
        value = torch.tensor([signum or 0], dtype=torch.int64, device=_device())
        _collective(dist.all_reduce, value, op=dist.ReduceOp.MAX)
        return int(value) or None

    def broadcast(self, value):
        """Rank 0's value of a small picklable object, on every process."""
        box = [value]
        _collective(dist.broadcast_object_list, box, src=0)
        return box[0]


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher of torch.distributed) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the job's process group (gloo on CPU, NCCL on CUDA) and return this process's place
    and device (cuda:LOCAL_RANK on CUDA)."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # torch._dynamo (which building a model imports) keeps references to a process group
        # that exists when it is first imported, so destroy_process_group would then leave gloo's
        # threads running into the interpreter's shutdown, where one aborts the process
        # ("terminate called without an active exception"): import it before the group exists.
        importlib.import_module("torch._dynamo")
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        except (RuntimeError, ValueError) as e:
            raise RnnrbmError(f"cannot join the torchrun job's processes: {' '.join(str(e).split())[:200]}.") from None
        # gloo's threads must be stopped before the interpreter ends, or the process aborts
        atexit.register(leave)
    _DEVICE[0] = device
    return World(dist.get_rank(), dist.get_world_size()), device


def _collective(operation, *args, **kwargs):
    """A collective operation; a peer that has gone (killed, crashed) is one sentence, not a
    traceback. Checkpoints are written whole or not at all, so the last one is intact."""
    try:
        return operation(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as e:
        raise RnnrbmError(
            f"another process of the torchrun job stopped ({' '.join(str(e).split())[:120]}); the run's last "
            "checkpoint is kept: resume it with rnnrbm train --resume under torchrun."
        ) from None


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


_DEVICE = [torch.device("cpu")]  # where collectives' small tensors live (NCCL needs CUDA ones)


def _device() -> torch.device:
    return _DEVICE[0]


class DataParallel:
    """An objective whose gradients are those of a whole global batch, computed in shares.

    objective : this process's objective (torch or compiled). params : the parameters the
    stage trains (their ``.grad`` is summed across processes)."""

    def __init__(self, objective, params: list[Tensor], world: World) -> None:
        self.inner, self.params, self.world = objective, params, world

    @property
    def backend(self) -> str:
        return self.inner.backend

    def gradients(self, chunk_ids: Tensor) -> CostResult:
        mine = chunk_ids[self.world.rank :: self.world.size]
        if len(mine):
            stats = self.inner.gradients(mine)
            n, cost, monitor = stats.n_frames, float(stats.cost), float(stats.monitor)
        else:  # fewer chunks than processes: this one adds nothing
            for p in self.params:
                p.grad.zero_()
            n, cost, monitor = 0, 0.0, 0.0
        # one all-reduce: each share's gradient weighted by its frames, then the frames and sums
        flat = torch.cat([p.grad.reshape(-1) * n for p in self.params]
                         + [torch.tensor([cost * n, monitor * n, n], dtype=self.params[0].dtype, device=self.params[0].device)])
        _collective(dist.all_reduce, flat)
        total = float(flat[-1])
        offset = 0
        for p in self.params:
            size = p.numel()
            p.grad.copy_(flat[offset : offset + size].view_as(p) / total)
            offset += size
        return CostResult(torch.tensor(float(flat[-3]) / total), torch.tensor(float(flat[-2]) / total), int(total))

    def monitor(self, data: ChunkedData, generator: torch.Generator) -> float:
        # every process computes the same monitor on the same data with the same seed
        return self.inner.monitor(data, generator)

    def compile_message(self) -> str | None:
        return self.inner.compile_message()

    def warm_up(self) -> None:
        self.inner.warm_up()
