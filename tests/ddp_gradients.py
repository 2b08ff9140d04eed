"""One process of tests/test_distributed.py's estimator check, launched by
``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_gradients.py RECORDS``.

For each case of CASES (a model and an estimator), it builds the model from the seed, takes
the data-parallel step of ``fit`` (:func:`pyro_vae.distributed.data_parallel_step`, the
estimator captured as ``fit`` captures it) on one global batch, and saves the gradient on
every parameter and the loss into RECORDS/rank<r>.pt."""

import os
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae import VAE, make_elbo
from pyro_vae.data import Dataset
from pyro_vae.distributed import World, data_parallel_step
from pyro_vae.train import _create_params

SEED, BATCH = 3, 16
GAUSSIAN = dict(x_dim=784, z_dim=4, hidden=[16])
CATEGORICAL = dict(x_dim=784, hidden=[16], latent="categorical", groups=2, classes=3)
ONE_GROUP = dict(x_dim=784, hidden=[16], latent="categorical", groups=1, classes=4)  # summable
BERNOULLI = dict(x_dim=784, z_dim=4, hidden=[16], latent="bernoulli")
# (estimator, model, particles): every estimator, on a latent it can train
CASES = [
    ("meanfield", GAUSSIAN, 1), ("trace", GAUSSIAN, 1), ("iwae", GAUSSIAN, 5),
    ("iwae-dreg", GAUSSIAN, 5), ("stl", GAUSSIAN, 5), ("renyi", GAUSSIAN, 5),
    ("tail-adaptive", GAUSSIAN, 5), ("semi-amortized", GAUSSIAN, 1),
    ("enum", ONE_GROUP, 1), ("gumbel", CATEGORICAL, 1), ("gumbel-st", CATEGORICAL, 1),
    ("vimco", BERNOULLI, 5), ("graph", BERNOULLI, 1),
]


def batch() -> torch.Tensor:
    return (torch.rand(BATCH, 784, generator=torch.Generator().manual_seed(SEED)) < 0.3).float()


def first_use(elbo, vae) -> dict:
    """What ``fit`` does before its first step: one evaluation of the estimator on a batch
    (the parameters declared, Pyro's one-off guesses made: they draw from the random
    stream), and the parameters by name."""
    return _create_params(elbo, vae.model, vae.guide, Dataset("tiny", batch(), batch()))


def estimator(name: str, particles: int, jit: bool):
    return make_elbo(name, particles, jit=jit, alpha=0.5 if name == "renyi" else None)


def main(records: Path):
    world = World.from_env()
    out = {}
    for name, network, particles in CASES:
        pyro.clear_param_store()
        pyro.set_rng_seed(SEED)
        vae, elbo = VAE(**network), estimator(name, particles, jit=True)
        params = first_use(elbo, vae)
        pyro.set_rng_seed(SEED + world.rank)  # as fit: each process its own noise
        step = data_parallel_step(elbo, vae.model, vae.guide, params, world)
        x = batch()
        loss = step(x)
        out[name] = dict(loss=loss, grads={k: p.grad.clone() for k, p in params.items()})
    records.mkdir(parents=True, exist_ok=True)
    torch.save(out, records / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
