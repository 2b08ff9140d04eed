r"""The variational autoencoder (Kingma & Welling, 2014, "Auto-Encoding Variational Bayes")
as a Pyro model and guide.

Generative model, for each example in the data plate:

.. math:: z \sim \mathcal{N}(0, I), \qquad
          x \sim p_\theta(x \mid z) = \text{likelihood}(\text{decoder}(z)).

Amortized guide:
:math:`q_\phi(z \mid x) = \mathcal{N}(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2)`.

Discrete codes (``latent=``) swap only the distributions at ``z``:

- ``"categorical"``: G independent one-hot codes of C classes, a uniform prior
  :math:`z_g \sim \mathrm{OneHotCategorical}(1/C)`, the guide
  :math:`q(z_g \mid x) = \mathrm{OneHotCategorical}(\mathrm{softmax}(\ell_g(x)))`, the
  decoder reading the G*C numbers together (the categorical VAE of Jang, Gu & Poole, 2017);
  one group (G = 1) is a site of C values that ``enum`` sums out exactly;
- ``"bernoulli"``: D binary units, :math:`z_d \sim \mathrm{Bernoulli}(1/2)`,
  :math:`q(z_d \mid x) = \mathrm{Bernoulli}(\sigma(\ell_d(x)))`.

Neither can be reparameterized: ``graph`` (REINFORCE with the guide's learned baseline,
a small network of x given to Pyro as ``infer={"baseline": ...}``), ``vimco``, the relaxed
``gumbel``/``gumbel-st`` and, for one group, ``enum`` train them (:mod:`pyro_vae.estimators`).

``model`` and ``guide`` are plain Pyro functions of ``x`` alone, so any ELBO estimator
trains them and :func:`pyro_vae.fit` treats them like any user's model/guide pair.

A VAE built from its arguments alone records them (``vae.spec``), so that a run directory
can rebuild it; one given its own ``encoder``/``decoder`` modules, or a subclass, cannot
say how it was built: make it through :func:`pyro_vae.build_model` instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .likelihoods import Likelihood, get_likelihood, likelihood_name
from .networks import NETWORKS, Baseline, ConvDecoder, ConvEncoder, Decoder, Encoder, mlp
from .spec import ModelSpec

LATENTS = ("gaussian", "categorical", "bernoulli")


class VAE(nn.Module):
    """A VAE with MLP encoder/decoder, convolutional ones (``network="conv"``, for images of
    ``image_shape`` (channels, height, width); ``hidden`` is then the dense layers between
    the convolutions and z), or the ``encoder``/``decoder`` you pass.

    A custom encoder maps ``x (..., x_dim)`` to ``(loc, scale)``, each ``(..., z_dim)``;
    a custom decoder maps ``z`` to ``likelihood.params_per_dim * x_dim`` numbers.
    ``likelihood`` is a name with its ``likelihood_options`` (``sigma`` of gaussian-fixed,
    ``min_scale`` of gaussian), or a :class:`~pyro_vae.likelihoods.Likelihood`.

    ``latent`` is ``"gaussian"`` (``z_dim`` dimensions, default 50), ``"categorical"``
    (``groups`` one-hot codes of ``classes`` classes) or ``"bernoulli"`` (``z_dim`` binary
    units); a discrete guide's encoder emits logits, and the guide carries the baseline
    network that ``graph`` uses (MLP networks only).

    Example:

    >>> import pyro.poutine as poutine
    >>> import torch
    >>> from pyro_vae import VAE
    >>> vae = VAE(x_dim=784, z_dim=2, hidden=[400])
    >>> vae.sample(3).shape  # decoder means of z ~ N(0, I)
    torch.Size([3, 784])
    >>> trace = poutine.trace(vae.model).get_trace(torch.zeros(5, 784))
    >>> [name for name, site in trace.nodes.items() if site["type"] == "sample"]
    ['data', 'z', 'x']
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int | None = None,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str | Likelihood = "bernoulli",
        likelihood_options: dict | None = None,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        network: str = "mlp",
        image_shape: Sequence[int] | None = None,
        latent: str = "gaussian",
        groups: int | None = None,
        classes: int | None = None,
    ):
        super().__init__()
        self.latent, self.groups, self.classes = latent, groups, classes
        self.z_dim = z_dim = _code_size(latent, z_dim, groups, classes)
        if isinstance(likelihood, str):
            likelihood = get_likelihood(likelihood, **(likelihood_options or {}))
        elif likelihood_options:
            raise ValueError("likelihood_options go with a likelihood given by name")
        self.likelihood = likelihood
        out_dim = x_dim * self.likelihood.params_per_dim
        # Only what the arguments alone build can be rebuilt from them.
        rebuildable = (type(self) is VAE and encoder is None and decoder is None
                       and likelihood_name(self.likelihood) is not None)
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; choose from: {', '.join(NETWORKS)}")
        if latent != "gaussian" and (network != "mlp" or encoder is not None):
            raise ValueError(f"a {latent} latent is built with the MLP encoder that emits its "
                             f"logits: network 'mlp' and no encoder of your own (got network "
                             f"{network!r}{' and an encoder' if encoder is not None else ''})")
        if network == "conv":
            if image_shape is None:
                raise ValueError(f"network 'conv' is for images; these data are vectors of "
                                 f"{x_dim} numbers: use network 'mlp'")
            if len(image_shape) != 3 or math.prod(image_shape) != x_dim:
                raise ValueError(f"network 'conv' needs image_shape (channels, height, width) "
                                 f"of {x_dim} numbers in all, got {image_shape}")
            encoder = encoder or ConvEncoder(image_shape, hidden, z_dim, activation)
            decoder = decoder or ConvDecoder(z_dim, tuple(reversed(hidden)), image_shape,
                                             self.likelihood.params_per_dim, activation)
        self.baseline = None
        if latent != "gaussian":  # logits, and the score-function estimators' baseline
            encoder = mlp([x_dim, *hidden, z_dim], activation)
            self.baseline = Baseline(x_dim, activation=activation)
        if encoder is None:
            encoder = Encoder(x_dim, hidden, z_dim, activation)
        if decoder is None:
            decoder = Decoder(z_dim, tuple(reversed(hidden)), out_dim, activation)
        self.encoder, self.decoder = encoder, decoder
        self.spec: ModelSpec | None = None
        if rebuildable:
            # a Gaussian MLP's spec reads as it always did
            extra = dict(network=network, image_shape=list(image_shape)) \
                if network == "conv" else {}
            if latent == "categorical":
                extra.update(latent=latent, groups=groups, classes=classes)
            elif latent == "bernoulli":
                extra.update(latent=latent)
            self.spec = ModelSpec("pyro_vae.model:VAE", dict(
                x_dim=x_dim, z_dim=z_dim, hidden=list(hidden), activation=activation,
                likelihood=likelihood_name(self.likelihood),
                likelihood_options=self.likelihood.options(), **extra))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        self.likelihood.check(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.latent_prior(x.shape[0], like=x))
            pyro.sample("x", self.likelihood(self.decoder(self.code(z))), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        if self.baseline is not None:
            pyro.module("baseline", self.baseline)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.latent_posterior(x), infer=self._infer(x))

    def latent_prior(self, n: int, like: torch.Tensor) -> dist.Distribution:
        """p(z) for ``n`` examples: N(0, I), or the discrete codes' uniform prior (on the
        device and in the dtype of ``like``)."""
        if self.latent == "categorical":
            return self._one_hot(like.new_zeros(n, self.z_dim))  # uniform
        if self.latent == "bernoulli":
            return dist.Bernoulli(probs=like.new_full((n, self.z_dim), 0.5)).to_event(1)
        return dist.Normal(like.new_zeros(n, self.z_dim), 1.0).to_event(1)

    def latent_posterior(self, x: torch.Tensor) -> dist.Distribution:
        """q(z | x) for the rows of ``x``: N(loc(x), diag scale(x)^2), or the discrete
        codes' from the encoder's logits."""
        if self.latent == "gaussian":
            loc, scale = self.encoder(x)
            return dist.Normal(loc, scale).to_event(1)
        logits = self.encoder(x)
        if self.latent == "categorical":
            return self._one_hot(logits)
        return dist.Bernoulli(logits=logits).to_event(1)

    def code(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's input for a value of ``z``: G one-hot codes side by side."""
        return z.flatten(-2) if self.latent == "categorical" and self.groups > 1 else z

    def _one_hot(self, logits: torch.Tensor) -> dist.Distribution:
        """G one-hot codes from ``logits (..., G*C)``. One group is a site of C values,
        which enumeration can sum out; several are one joint code of C**G values (the
        decoder reads all of them), an event of shape (G, C)."""
        if self.groups == 1:
            return dist.OneHotCategorical(logits=logits)
        return dist.OneHotCategorical(logits=logits.unflatten(-1, (self.groups, self.classes))
                                      ).to_event(1)

    def _infer(self, x: torch.Tensor) -> dict:
        """The guide site's ``infer``: the baseline that ``graph`` (Pyro's TraceGraph_ELBO)
        subtracts from the learning signal of a discrete draw; read by no other estimator."""
        if self.baseline is None:
            return {}
        return {"baseline": {"nn_baseline": self.baseline, "nn_baseline_input": x}}

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` for the latent codes ``z``."""
        return self.likelihood(self.decoder(self.code(z))).mean

    def sample(self, n: int) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` for ``n`` draws of the prior."""
        device = next(self.decoder.parameters()).device
        return self.decode(self.latent_prior(n, like=torch.zeros((), device=device)).sample())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` at the guide's posterior mean of ``z``."""
        return self.decode(self.latent_posterior(x).mean)


def _code_size(latent: str, z_dim: int | None, groups: int | None,
               classes: int | None) -> int:
    """The decoder's input size for a latent of this kind; every impossible combination
    refused by name."""
    if latent not in LATENTS:
        raise ValueError(f"unknown latent {latent!r}; choose from: {', '.join(LATENTS)}")
    if latent != "categorical":
        if groups is not None or classes is not None:
            raise ValueError(f"groups and classes describe a categorical latent, not a "
                             f"{latent} one (its size is z_dim)")
        z_dim = 50 if z_dim is None else z_dim
        if z_dim < 1:
            raise ValueError(f"z_dim must be at least 1, got {z_dim}")
        return z_dim
    if groups is None or classes is None:
        raise ValueError("a categorical latent needs groups (one-hot codes) and classes (the "
                         "values of each), for example groups=20, classes=10")
    if groups < 1 or classes < 2:
        raise ValueError(f"a categorical latent needs groups >= 1 and classes >= 2, got "
                         f"groups={groups}, classes={classes}")
    if z_dim is not None and z_dim != groups * classes:
        raise ValueError(f"z_dim={z_dim} does not fit a categorical latent of {groups} x "
                         f"{classes} = {groups * classes} numbers: leave z_dim out")
    return groups * classes
