"""One process of a data-parallel training run, launched by tests/test_distributed.py with
``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py ...``.

It trains through the real ``fit``; its optimizer also records, after every step, a hash of
every parameter, and the gradient of the first step, into RECORDS/rank<r>.pt. With
``--die-at STEP``, rank 1 of torchrun's first attempt kills itself (SIGKILL) after that
step, for torchrun ``--max-restarts`` to restart the group. With ``--preempt-at STEP``,
rank 0 sends SIGTERM to torchrun itself after that step, as a cluster preempting the job
would: torchrun passes it on to every process."""

import argparse
import hashlib
import os
import signal
from pathlib import Path

import pyro
import torch

from pyro_vae import VAE, Config, fit, load_dataset
from pyro_vae import train as train_module

# The setting the test recomputes in one process.
CONFIG = dict(dataset="mnist-binary", batch_size=100, elbo="meanfield", lr=3e-3, seed=7)
NETWORK = dict(x_dim=784, z_dim=8, hidden=[32])
SUBSET = dict(train=2000, test=200)

hashes, first_grads = [], {}
die_at = None  # the step after which this process kills itself, if any
preempt_at = None  # the step after which this process sends SIGTERM to torchrun, if any


class RecordingAdam(torch.optim.Adam):
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        if not first_grads:
            first_grads.update({i: p.grad.clone() for i, p in enumerate(params)})
        result = super().step(closure)
        flat = torch.cat([p.detach().flatten() for p in params])
        hashes.append(hashlib.sha256(flat.numpy().tobytes()).hexdigest())
        if len(hashes) == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if len(hashes) == preempt_at:
            os.kill(os.getppid(), signal.SIGTERM)  # the parent: torchrun's agent
        return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--records", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--die-at", type=int)
    parser.add_argument("--preempt-at", type=int)
    args = parser.parse_args()
    global die_at, preempt_at
    if os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        die_at = args.die_at
    if os.environ["RANK"] == "0":
        preempt_at = args.preempt_at

    train_module.OPTIMIZERS["adam"] = RecordingAdam
    data = load_dataset("mnist-binary").subset(**SUBSET)
    config = Config(**CONFIG, epochs=args.epochs, checkpoint_every=args.checkpoint_every)
    pyro.set_rng_seed(config.seed)
    vae = VAE(**NETWORK)
    metrics = fit(vae.model, vae.guide, data, config, args.out, resume=args.resume, quiet=True)
    if args.records:
        args.records.mkdir(parents=True, exist_ok=True)
        torch.save(dict(hashes=hashes, first_grads=first_grads, metrics=metrics),
                   args.records / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main()
