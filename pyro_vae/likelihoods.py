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
from torch.distributions import constraints


class Likelihood(nn.Module):
    """Base class: ``forward(params) -> Distribution`` with ``event_shape == (D,)``."""

    params_per_dim = 1

    def check(self, x: torch.Tensor) -> None:
        """Called by the model with the observed data; warns about ill-suited data."""

    def options(self) -> dict:
        """The keyword arguments this likelihood was built with (``get_likelihood``'s)."""
        return {}


def _in_unit_interval(x: torch.Tensor, name: str) -> None:
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"likelihood {name!r} needs data in [0, 1]; these data lie in "
                         f"[{lo:g}, {hi:g}]: use a Gaussian-family likelihood (gaussian, "
                         "gaussian-shared, gaussian-fixed, laplace)")


class _BernoulliLogMass(torch.autograd.Function):
    r""":math:`x\,l - \mathrm{softplus}(l)` with its gradient :math:`x - \sigma(l)` in one pass.

    Autograd through the three operations keeps more intermediates and makes more passes over
    memory; with this, a training step at batch 256 is about 10% faster on a CPU (see
    benchmarks/README.md)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, value)
        return F.softplus(logits).neg_().addcmul_(value, logits)  # one allocation

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, value = ctx.saved_tensors
        grad_logits = grad_value = None
        if ctx.needs_input_grad[0] and torch.is_grad_enabled():
            # this backward is itself differentiated (create_graph: semi-amortized training's
            # steps): out of place, so that autograd records it
            grad_logits = (value - torch.sigmoid(logits)) * grad
        elif ctx.needs_input_grad[0]:
            grad_logits = torch.sigmoid(logits).neg_().add_(value).mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_value = (grad * logits).sum_to_size(value.shape)
        return grad_logits, grad_value


class _LogitBernoulli(dist.Bernoulli):
    r"""``dist.Bernoulli`` with :math:`\log p(x) = x\,l - \mathrm{softplus}(l)`: the values of
    torch's binary cross-entropy with logits (for any x in [0, 1]) in fewer passes over
    memory, which matters when the decoder runs on thousands of samples per example. Its
    support is [0, 1], the values that mass is defined for (grey levels give a binary
    cross-entropy, with the warning of :meth:`Bernoulli.check`)."""

    support = constraints.unit_interval

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if type(self.logits) is not torch.Tensor or type(value) is not torch.Tensor:
            # A tensor subclass (Pyro's provenance tracking of discrete draws, in
            # TraceGraph_ELBO) reaches its data through torch functions, not through a
            # custom autograd Function, which would cut the decoder off from its gradient
            return value * self.logits - F.softplus(self.logits)
        return _BernoulliLogMass.apply(self.logits, value)


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
        return _LogitBernoulli(logits=logits).to_event(1)

    def check(self, x: torch.Tensor) -> None:
        if self._checked:  # the first batch tells; later batches cost nothing
            return
        self._checked = True
        _in_unit_interval(x, "bernoulli")
        if ((x != 0) & (x != 1)).any():
            warnings.warn(  # stacklevel 2: the model's line that checks the data
                "bernoulli likelihood on non-binary data: its loss is a binary cross-entropy, "
                "not a normalized log-likelihood. Use dataset 'mnist-binary' (dynamic "
                "binarization) or likelihood 'continuous-bernoulli' for grey levels.",
                stacklevel=2,
            )


class Gaussian(Likelihood):
    r"""Gaussian pixels with a mean and a per-pixel log-variance from the decoder, as the
    Gaussian MLP of Kingma & Welling (2014, appendix C.2):
    :math:`x_d \sim \mathcal{N}(\mu_d(z), \sigma_d(z)^2)`,
    :math:`\sigma_d = \text{min\_scale} + \exp(\tfrac12 \log\sigma^2_d(z))`.

    Ill-posed with ``min_scale = 0`` on data with near-constant pixels (such as MNIST's
    black borders): the decoder can shrink :math:`\sigma_d \to 0` there and the loss is
    unbounded below (Mattei & Frellsen, 2018, "Leveraging the Exact Likelihood of Deep
    Latent Variable Models"). Allowed, with a warning; a floor ``min_scale > 0`` bounds it.
    """

    params_per_dim = 2

    def __init__(self, min_scale: float = 0.0):
        super().__init__()
        if not (min_scale >= 0 and math.isfinite(min_scale)):
            raise ValueError(f"gaussian needs min_scale >= 0, got {min_scale}")
        self.min_scale = float(min_scale)
        if self.min_scale == 0:
            warnings.warn(
                "gaussian likelihood with a learned per-pixel variance: the loss is unbounded "
                "below on data with constant pixels and can run to -inf or NaN. A floor "
                "(min_scale > 0), 'gaussian-shared' or 'gaussian-fixed' bounds it.",
                stacklevel=3,
            )

    def options(self) -> dict:
        return {"min_scale": self.min_scale}

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        loc, log_variance = params.chunk(2, dim=-1)
        return dist.Normal(loc, self.min_scale + (0.5 * log_variance).exp()).to_event(1)


class GaussianFixed(Likelihood):
    r"""Gaussian pixels with a fixed scale: :math:`x_d \sim \mathcal{N}(\mu_d(z), \sigma^2)`,
    identity covariance for :math:`\sigma = 1`. Its log-density includes
    :math:`-\tfrac{D}{2}\log(2\pi\sigma^2)` (720.44 nats for D = 784, sigma = 1)."""

    def __init__(self, sigma: float = 1.0):
        super().__init__()
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"gaussian-fixed needs sigma > 0, got {sigma}")
        self.sigma = float(sigma)

    def options(self) -> dict:
        return {"sigma": self.sigma}

    def forward(self, loc: torch.Tensor) -> dist.Distribution:
        return dist.Normal(loc, torch.full_like(loc, self.sigma)).to_event(1)


class _SharedScale(Likelihood):
    """A location from the decoder and one learned log-scale ``s`` shared by all pixels, a
    parameter trained with the networks (registered by the model's ``pyro.module``)."""

    family: type[dist.Distribution]

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, loc: torch.Tensor) -> dist.Distribution:
        return self.family(loc, self.log_scale.exp().expand_as(loc)).to_event(1)


class GaussianShared(_SharedScale):
    r"""Gaussian pixels with one learned scale shared by all pixels:
    :math:`x_d \sim \mathcal{N}(\mu_d(z), \sigma^2)`, :math:`\sigma = e^s`. The calibrated
    decoder of Rybkin, Daniilidis & Levine (2021), "Simple and Effective VAE Training with
    Calibrated Decoders": one variance cannot collapse on a few constant pixels, so the loss
    stays bounded, and its optimum is the mean squared error of the reconstructions."""

    family = dist.Normal


class Laplace(_SharedScale):
    r"""Laplace pixels with one learned scale shared by all pixels, as in
    :class:`GaussianShared`: :math:`\log p(x_d \mid z) = -|x_d - \mu_d(z)| / b - \log 2b`,
    :math:`b = e^s`. The absolute error fits each pixel's conditional median rather than its
    mean, so outlying pixels sway it less; the shared ``b`` keeps the loss bounded below."""

    family = dist.Laplace


class _LogitContinuousBernoulli(dist.ContinuousBernoulli):
    r"""``dist.ContinuousBernoulli`` with its log-density written in logits,
    :math:`x l - \mathrm{softplus}(l) + \log C`, where :math:`C = l / \tanh(l/2)`, so
    :math:`\log C = \log|l| - \log\tanh(|l|/2)`, and near 0 its Taylor series
    :math:`\log 2 + l^2/12 - 7 l^4/1440`: the same values as torch's, in fewer passes."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.logits
        size = logits.abs()
        small = size < 0.1
        safe = torch.where(small, torch.ones_like(size), size)  # no NaN in either branch
        square = logits * logits
        log_norm = torch.where(small, math.log(2.0) + square / 12 - 7 * square * square / 1440,
                               safe.log() - torch.tanh(safe / 2).log())
        return log_norm.sub_(F.softplus(logits)).addcmul_(value, logits)


class ContinuousBernoulli(Likelihood):
    r"""The continuous Bernoulli, a normalized density on [0, 1] for grey levels
    (Loaiza-Ganem & Cunningham, 2019, "The continuous Bernoulli: fixing a pervasive
    error in variational autoencoders"):
    :math:`p(x \mid \lambda) = C(\lambda)\, \lambda^x (1 - \lambda)^{1 - x}`."""

    def __init__(self):
        super().__init__()
        self._checked = False

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        return _LogitContinuousBernoulli(logits=logits).to_event(1)

    def check(self, x: torch.Tensor) -> None:
        if not self._checked:  # the first batch tells
            self._checked = True
            _in_unit_interval(x, "continuous-bernoulli")


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian-fixed": GaussianFixed,
    "continuous-bernoulli": ContinuousBernoulli,
    "gaussian-shared": GaussianShared,
    "laplace": Laplace,
}


def likelihood_name(likelihood: Likelihood) -> str | None:
    """The name ``likelihood``'s class is registered under (None for any other class)."""
    return next((name for name, cls in LIKELIHOODS.items() if type(likelihood) is cls), None)


def get_likelihood(name: str, **options) -> Likelihood:
    r"""The likelihood registered as ``name``, built with ``options`` (``sigma`` of
    gaussian-fixed, ``min_scale`` of gaussian).

    Example: ``gaussian-fixed`` is :math:`\mathcal{N}(x; \mu, I)`, every constant kept, so
    at :math:`x = \mu` in D = 3 dimensions its log-density is
    :math:`-\tfrac{3}{2}\log 2\pi`:

    >>> import torch
    >>> from pyro_vae import get_likelihood
    >>> likelihood = get_likelihood("gaussian-fixed")
    >>> likelihood(torch.zeros(1, 3)).log_prob(torch.zeros(1, 3))
    tensor([-2.7568])
    """
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose from: {', '.join(LIKELIHOODS)}")
    try:
        return LIKELIHOODS[name](**options)
    except TypeError as e:
        raise ValueError(f"likelihood {name!r} does not take options {sorted(options)}") from e
