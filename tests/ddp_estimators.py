"""One process of tests/test_distributed.py's per-estimator checks, launched by
``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_estimators.py FOLDER``.

For each case of CASES (every estimator on a latent it can train, and the conditional VAE
of experiments/extending, a model of (x, y), with its labels):

1. **gradients**: it builds the model from the seed, takes the data-parallel step of ``fit``
   (:func:`pyro_vae.distributed.data_parallel_step`, the estimator captured as ``fit``
   captures it) on one global batch, and saves the loss and the gradient on every parameter
   into FOLDER/gradients/rank<r>.pt;
2. **resume**: it trains through the real ``fit`` on 64 random binary rows, 4 global
   batches an epoch: straight for 2 epochs into FOLDER/<case>/straight, and for 1 epoch into
   FOLDER/<case>/resumed, resumed there to 2 epochs; a hash of this process's parameters
   after each run goes into FOLDER/<case>/rank<r>.json.

One launch for both: a torchrun launch costs seconds of the suite."""

import hashlib
import json
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae import VAE, Config, fit, make_elbo
from pyro_vae.data import Dataset
from pyro_vae.distributed import World, data_parallel_step
from pyro_vae.train import _create_params

SEED, BATCH, ROWS = 3, 16, 64
GAUSSIAN = dict(x_dim=784, z_dim=4, hidden=[16])
CATEGORICAL = dict(x_dim=784, hidden=[16], latent="categorical", groups=2, classes=3)
ONE_GROUP = dict(x_dim=784, hidden=[16], latent="categorical", groups=1, classes=4)  # summable
BERNOULLI = dict(x_dim=784, z_dim=4, hidden=[16], latent="bernoulli")
LABELLED = "meanfield, labelled"  # the conditional VAE: model(x, y), guide(x, y)
# (case, estimator, model, particles): every estimator, on a latent it can train
CASES = [
    ("meanfield", "meanfield", GAUSSIAN, 1), ("trace", "trace", GAUSSIAN, 1),
    ("iwae", "iwae", GAUSSIAN, 5), ("iwae-dreg", "iwae-dreg", GAUSSIAN, 5),
    ("stl", "stl", GAUSSIAN, 5), ("renyi", "renyi", GAUSSIAN, 5),
    ("tail-adaptive", "tail-adaptive", GAUSSIAN, 5),
    ("semi-amortized", "semi-amortized", GAUSSIAN, 1), ("enum", "enum", ONE_GROUP, 1),
    ("gumbel", "gumbel", CATEGORICAL, 1), ("gumbel-st", "gumbel-st", CATEGORICAL, 1),
    ("vimco", "vimco", BERNOULLI, 5), ("graph", "graph", BERNOULLI, 1),
    (LABELLED, "meanfield", GAUSSIAN, 1),
]


def data() -> Dataset:
    """64 + 16 random binary rows of 784 with random labels of 10 classes; the first
    global batch (the gradient check's) is its first 16 training rows."""
    g = torch.Generator().manual_seed(SEED)
    rows = lambda n: (torch.rand(n, 784, generator=g) < 0.3).float()  # noqa: E731
    x_train, x_test = rows(ROWS), rows(16)
    y_train, y_test = torch.randint(10, (ROWS,), generator=g), torch.randint(10, (16,), generator=g)
    return Dataset("tiny", x_train, x_test, y_train, y_test)


def batch(case: str) -> tuple[torch.Tensor, ...]:
    tiny = data()
    x, y = tiny.x_train[:BATCH], tiny.y_train[:BATCH]
    return (x, y) if case == LABELLED else (x,)


def vae(case: str, network: dict):
    if case != LABELLED:
        return VAE(**network)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "extending"))
    from conditional import ConditionalVAE

    return ConditionalVAE(**network)


def estimator(name: str, particles: int, jit: bool):
    return make_elbo(name, particles, jit=jit, alpha=0.5 if name == "renyi" else None)


def first_use(case: str, elbo, model) -> dict:
    """What ``fit`` does before its first step: one evaluation of the estimator on a batch
    (the parameters declared, Pyro's one-off guesses made: they draw from the random
    stream), and the parameters by name."""
    return _create_params(elbo, model.model, model.guide, data(), labelled=case == LABELLED)


def params_hash() -> str:
    store = dict(sorted(pyro.get_param_store().named_parameters()))
    flat = torch.cat([p.detach().flatten() for p in store.values()])
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()


def gradients(world: World, folder: Path):
    out = {}
    for case, name, network, particles in CASES:
        pyro.clear_param_store()
        pyro.set_rng_seed(SEED)
        model, elbo = vae(case, network), estimator(name, particles, jit=True)
        params = first_use(case, elbo, model)
        pyro.set_rng_seed(SEED + world.rank)  # as fit: each process its own noise
        step = data_parallel_step(elbo, model.model, model.guide, params, world)
        loss = step(*batch(case))
        out[case] = dict(loss=loss, grads={k: p.grad.clone() for k, p in params.items()})
    (folder / "gradients").mkdir(parents=True, exist_ok=True)
    torch.save(out, folder / "gradients" / f"rank{world.rank}.pt")


def resume(world: World, folder: Path):
    tiny = data()
    for case, name, network, particles in CASES:
        settings = dict(elbo=name, particles=particles, alpha=0.5 if name == "renyi" else None,
                        batch_size=BATCH, lr=3e-3, seed=SEED)
        hashes = {}
        for run, epochs, again in (("straight", 2, False), ("resumed", 1, False),
                                   ("resumed", 2, True)):
            pyro.set_rng_seed(SEED)
            model = vae(case, network)
            fit(model.model, model.guide, tiny, Config(**settings, epochs=epochs),
                folder / case / run, resume=again, quiet=True)
            hashes[f"{run}, {epochs} epoch(s)"] = params_hash()
        (folder / case).mkdir(parents=True, exist_ok=True)
        (folder / case / f"rank{world.rank}.json").write_text(json.dumps(hashes))


if __name__ == "__main__":
    world = World.from_env()
    gradients(world, Path(sys.argv[1]))
    resume(world, Path(sys.argv[1]))
