r"""Observation models :math:`p(x \mid z)`, one small class each, chosen by name.

A likelihood turns the decoder's output for ``z`` into a distribution over ``x`` with one
event dimension (the data dimension ``D``), so the model reads::

    pyro.sample("x", likelihood(decoder(z)), obs=x)

The decoder emits ``params_per_dim * D`` numbers per example. Any leading batch
dimensions (data plate, vectorized particles) pass through unchanged.

Every ``log_prob`` is a properly normalized density or mass in nats, including every
constant; none is dropped.
"""

from __future__ import annotations

import math
import warnings

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn


class Likelihood(nn.Module):
    """Base class: ``forward(params) -> Distribution`` with ``event_shape == (D,)``."""

    params_per_dim = 1

    def check(self, x: torch.Tensor) -> None:
        """Called by the model with the observed data; warns about ill-suited data."""


class _LogitBernoulli(dist.Bernoulli):
    r"""``dist.Bernoulli`` with :math:`\log p(x) = x\,l - \mathrm{softplus}(l)`: the values of
    torch's binary cross-entropy with logits (for any x in [0, 1]) in fewer passes over
    memory, which matters when the decoder runs on thousands of samples per example."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.logits).neg_().addcmul_(value, self.logits)  # one allocation


class Bernoulli(Likelihood):
    r"""Bernoulli pixels with logits from the decoder:
    :math:`\log p(x \mid z) = \sum_d x_d \log \lambda_d + (1 - x_d) \log(1 - \lambda_d)`.

    A normalized likelihood only for binary ``x``. On grey levels it is the usual binary
    cross-entropy, not a density: :class:`ContinuousBernoulli` (Loaiza-Ganem & Cunningham,
    2019) normalizes it, and ``mnist-binary`` binarizes the data instead.
    """

    def __init__(self):
        super().__init__()
        self._checked = False

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        # validate_args=False: grey-level data is allowed (with the warning of `check`).
        return _LogitBernoulli(logits=logits, validate_args=False).to_event(1)

    def check(self, x: torch.Tensor) -> None:
        if self._checked:  # the first batch tells; later batches cost nothing
            return
        self._checked = True
        if ((x != 0) & (x != 1)).any():
            warnings.warn(
                "bernoulli likelihood on non-binary data: its loss is a binary cross-entropy, "
                "not a normalized log-likelihood. Use dataset 'mnist-binary' (dynamic "
                "binarization) or likelihood 'continuous-bernoulli' for grey levels.",
                stacklevel=3,
            )


class Gaussian(Likelihood):
    r"""Gaussian pixels with a mean and a per-pixel log-scale from the decoder:
    :math:`x_d \sim \mathcal{N}(\mu_d(z), \sigma_d(z)^2)`.

    Ill-posed on data with near-constant pixels (such as MNIST's black borders): the
    decoder can shrink :math:`\sigma_d \to 0` there and the loss is unbounded below
    (Mattei & Frellsen, 2018, "Leveraging the Exact Likelihood of Deep Latent Variable
    Models"). Allowed, with a warning.
    """

    params_per_dim = 2

    def __init__(self):
        super().__init__()
        warnings.warn(
            "gaussian likelihood with a learned per-pixel variance: the loss is unbounded "
            "below on data with constant pixels and can run to -inf or NaN. "
            "'gaussian-fixed' fixes the variance.",
            stacklevel=3,
        )

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        loc, log_scale = params.chunk(2, dim=-1)
        return dist.Normal(loc, log_scale.exp()).to_event(1)


class GaussianFixed(Likelihood):
    r"""Gaussian pixels with a fixed scale: :math:`x_d \sim \mathcal{N}(\mu_d(z), \sigma^2)`,
    identity covariance for :math:`\sigma = 1`. Its log-density includes
    :math:`-\tfrac{D}{2}\log(2\pi\sigma^2)` (720.44 nats for D = 784, sigma = 1)."""

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"gaussian-fixed needs sigma > 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, loc: torch.Tensor) -> dist.Distribution:
        return dist.Normal(loc, torch.full_like(loc, self.sigma)).to_event(1)


class ContinuousBernoulli(Likelihood):
    r"""The continuous Bernoulli, a normalized density on [0, 1] for grey levels
    (Loaiza-Ganem & Cunningham, 2019, "The continuous Bernoulli: fixing a pervasive
    error in variational autoencoders"):
    :math:`p(x \mid \lambda) = C(\lambda)\, \lambda^x (1 - \lambda)^{1 - x}`."""

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=logits).to_event(1)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian-fixed": GaussianFixed,
    "continuous-bernoulli": ContinuousBernoulli,
}


def get_likelihood(name: str, **options) -> Likelihood:
    """The likelihood registered as ``name``, built with ``options`` (e.g. ``sigma``)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose from: {', '.join(LIKELIHOODS)}")
    try:
        return LIKELIHOODS[name](**options)
    except TypeError as e:
        raise ValueError(f"likelihood {name!r} does not take options {sorted(options)}") from e
