r"""Held-out evaluation of a trained model/guide pair.

``elbo`` is the standard evidence lower bound
:math:`\mathbb{E}_{q(z|x)}[\log p(x, z) - \log q(z \mid x)]` per example, estimated with
``TraceMeanField_ELBO`` (closed-form KL where one is known, sampling otherwise), on one fixed
binarization of the split (seed :data:`pyro_vae.data.EVAL_SEED`) for binarized datasets.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro

from .data import EVAL_SEED, Dataset
from .estimators import make_elbo, mean_loss


def elbo(
    model: Callable,
    guide: Callable,
    data: Dataset,
    split: str = "test",
    num_particles: int = 1,
    batch_size: int = 500,
    seed: int = 0,
) -> float:
    """The ELBO of ``split`` in nats per example (higher is better)."""
    pyro.set_rng_seed(seed)
    estimator = make_elbo("meanfield", num_particles=num_particles)
    return -mean_loss(estimator, model, guide, data.eval_batches(split, batch_size, EVAL_SEED))
