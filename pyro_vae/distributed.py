r"""Data-parallel training across processes and machines: torchrun, one gradient all-reduce a step.

Launch the same command once per device with PyTorch's launcher, for example::

    torchrun --nproc_per_node 2 -m pyro_vae.cli train --elbo meanfield ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address;
:meth:`World.from_env` joins the process group (``gloo`` on CPU, ``nccl`` on CUDA). Without
torchrun it is the one-process world and every method below is a no-op, so
:func:`pyro_vae.fit` runs one code path for both.

How a step is shared out: every process draws the same epoch permutation and binarization
(the data generator's seed is the run's), takes its contiguous slice of each *global* batch
(``--batch-size`` is the global batch), and runs the estimator's own
``loss_and_grads`` on it, which puts on every parameter the gradient of its slice's summed
loss. One ``all_reduce`` then sums those gradients over the ``W`` processes, so that every
process holds the gradient of the global batch's *summed* loss, as one process would
(Pyro's convention), and takes the same optimizer step. Every estimator is split this way,
also an estimator object given to ``fit`` and the engine's captured step
(:mod:`pyro_vae.engine`): each is a sum over data points (the importance-weighted ones
weigh the particles of each point apart), so the global gradient is the sum of the slices'.
Process ``r`` draws its latent noise from seed ``seed + r``; state an estimator keeps
across steps is each process's own (a temperature's clock, the same in all; a decaying
average baseline of ``graph``, each of its own slices). A last
batch with fewer examples than processes is skipped (it would leave a process without data).

Elastic restarts: under ``torchrun --max-restarts N``, when a process dies the launcher
stops the others and starts the whole group again, with ``TORCHELASTIC_RESTART_COUNT``
raised by one and the same ``TORCHELASTIC_RUN_ID``. Each checkpoint records that run id
(:attr:`World.launch`), so a restarted group finds in its run directory the checkpoint that
its own launch wrote and resumes from it (:func:`pyro_vae.fit`), exactly as ``--resume``
would; a run directory that another launch wrote is refused as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one training run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launch: str | None = None  # torchrun's run id: the same in every restart of one launch
    restarts: int = 0  # how many times torchrun has restarted the group (--max-restarts)

    @property
    def main(self) -> bool:
        """The process that reads and writes the run directory and prints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> World:
        """The world torchrun describes in the environment (one process without it); joins
        the process group once."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        launch = {"launch": os.environ.get("TORCHELASTIC_RUN_ID"),
                  "restarts": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))}
        if size == 1:
            return cls(**launch)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)  # "cuda" is now this process's own device
        if not dist.is_initialized():
            # torchrun's store outlives a restart of the group and still holds the last
            # attempt's addresses, which a restarted process would dial: one prefix per attempt
            store, rank, size = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"pyro-vae/attempt-{launch['restarts']}", store)
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                    store=store, rank=rank, world_size=size)
        return cls(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank,
                   **launch)

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
    elbo, model: Callable, guide: Callable, params: dict[str, torch.Tensor], world: World
) -> Callable[..., float]:
    """A function ``step(x)`` (or ``step(x, y)``) that puts on every parameter the gradient
    of the global batch's summed loss, summed over the processes' slices, and returns that
    loss. ``elbo`` is anything with ``loss_and_grads(model, guide, *args)``.

    The main process's parameter values are broadcast first, so that all start equal even
    where a model drew them from another stream."""
    tensors = list(params.values())
    for p in tensors:
        dist.broadcast(p.data, src=0)

    def step(*args: torch.Tensor) -> float:  # (x,) or (x, y)
        loss = elbo.loss_and_grads(model, guide, *[world.shard(a) for a in args])
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in tensors]
        flat = torch.cat([g.reshape(-1) for g in grads])  # one message, not one per tensor
        dist.all_reduce(flat)
        for p, g in zip(tensors, flat.split([g.numel() for g in grads]), strict=True):
            p.grad = g.view_as(p)
        return world.sum(loss)

    return step
