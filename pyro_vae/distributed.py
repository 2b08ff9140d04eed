r"""Data-parallel training across processes and machines: torchrun + DistributedDataParallel.

Launch the same command once per device with PyTorch's launcher, for example::

    torchrun --nproc_per_node 2 -m pyro_vae.cli train --elbo meanfield ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address;
:meth:`World.from_env` joins the process group (``gloo`` on CPU, ``nccl`` on CUDA). Without
torchrun it is the one-process world and every method below is a no-op, so
:func:`pyro_vae.fit` runs one code path for both.

How a step is shared out (Pyro's documented route to DDP): every process draws the same
epoch permutation and binarization (the data generator's seed is the run's), takes its
contiguous slice of each *global* batch (``--batch-size`` is the global batch), and computes
``elbo.differentiable_loss`` on it through Pyro's ``ELBOModule`` wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`. DDP averages the gradients over the
``W`` processes; each process scales its loss by ``W``, so the averaged gradient is the
gradient of the global batch's *summed* loss, as in one process (Pyro's convention).
Process ``r`` draws its latent noise from seed ``seed + r``. A last batch with fewer examples
than processes is skipped (it would leave a process without data).

Only estimators whose loss is a sum over data points of a differentiable surrogate can be
split this way: :data:`DISTRIBUTABLE`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from pyro.infer import ELBO
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# Pyro's TraceGraph_ELBO has no differentiable_loss; the importance-weighted estimators
# (pyro_vae.iwae) are sums over data points too, but are not yet tested across processes:
# they are refused at launch rather than trusted untested.
DISTRIBUTABLE = ("trace", "meanfield")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one training run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that reads and writes the run directory and prints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> World:
        """The world torchrun describes in the environment (one process without it); joins
        the process group once."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)  # "cuda" is now this process's own device
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)

    def device(self, device: str) -> str:
        """The device this process trains on: ``device`` itself in one process; under
        torchrun with CUDA, this process's own GPU, ``cuda:LOCAL_RANK`` (the one NCCL uses),
        and a ``ValueError`` for a device naming one GPU for every process."""
        if self.size == 1 or not device.startswith("cuda"):
            return device
        if device != "cuda":
            raise ValueError(f"device {device!r} names one GPU for all {self.size} processes; "
                             "under torchrun each process trains on its own, cuda:LOCAL_RANK: "
                             "pass --device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
        return f"cuda:{self.local_rank}"

    def check(self, elbo: str) -> None:
        """Raise ``ValueError`` if a run with this estimator cannot be split over the world."""
        if self.size == 1:
            return
        if elbo not in DISTRIBUTABLE:
            raise ValueError(
                f"estimator {elbo!r} cannot train distributed ({self.size} processes): only "
                f"{', '.join(DISTRIBUTABLE)} can (a differentiable loss summed over data "
                "points); launch it as one process"
            )

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This process's contiguous part of a global batch (sizes differ by at most one)."""
        return x.tensor_split(self.size)[self.rank] if self.size > 1 else x

    def sum(self, value: float) -> float:
        """``value`` summed over the processes (in float64)."""
        if self.size == 1:
            return value
        total = torch.tensor(float(value), dtype=torch.float64, device=self._device())
        dist.all_reduce(total)
        return total.item()

    def on_main(self, fn: Callable, *args):
        """``fn(*args)`` computed by the main process alone (reading the run directory), its
        result on every process; if it raises a ``ValueError`` or ``RuntimeError``, every
        process raises it, so that all stop together instead of waiting on each other."""
        if self.size == 1:
            return fn(*args)
        outcome = None
        if self.main:
            try:
                outcome = (None, fn(*args))
            except (ValueError, RuntimeError) as e:
                outcome = (e, None)
        error, result = self.broadcast(outcome)
        if error is not None:
            raise error
        return result

    def broadcast(self, obj):
        """The main process's ``obj``, on every process."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order, on every process."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def _device(self) -> torch.device:
        nccl = dist.get_backend() == "nccl"
        return torch.device("cuda", self.local_rank) if nccl else torch.device("cpu")


def data_parallel_step(
    elbo: ELBO, model: Callable, guide: Callable, params: dict[str, torch.Tensor], world: World
) -> Callable[..., float]:
    """A function ``step(x)`` (or ``step(x, y)``) that puts on every parameter the gradient
    of the global batch's summed loss, averaged by DDP over the processes, and returns that loss.

    ``params`` are the param store's tensors by name: they must be ``nn.Parameter``s (declared
    through ``pyro.module``), the objects DDP synchronizes; a plain ``pyro.param`` is not one.
    """
    module = elbo(model, guide)  # Pyro's ELBOModule: forward(x) = elbo.differentiable_loss
    for i, (name, p) in enumerate(params.items()):
        if not isinstance(p, nn.Parameter):
            raise ValueError(
                f"parameter {name!r} is a plain pyro.param; distributed training synchronizes "
                "nn.Parameters only: declare it inside an nn.Module registered with pyro.module"
            )
        module.register_parameter(f"param{i}", p)  # the same tensors the model and guide use
    ddp = DistributedDataParallel(module)  # also broadcasts the main process's values

    def step(*args: torch.Tensor) -> float:  # (x,) or (x, y)
        loss = ddp(*[world.shard(a) for a in args])
        (loss * world.size).backward()
        return world.sum(loss.item())

    return step
