r"""The variational autoencoder (Kingma & Welling, 2014, "Auto-Encoding Variational Bayes")
as a Pyro model and guide.

Generative model, for each example in the data plate:

.. math:: z \sim \mathcal{N}(0, I), \qquad
          x \sim p_\theta(x \mid z) = \text{likelihood}(\text{decoder}(z)).

Amortized guide:
:math:`q_\phi(z \mid x) = \mathcal{N}(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2)`.

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
from .networks import NETWORKS, ConvDecoder, ConvEncoder, Decoder, Encoder
from .spec import ModelSpec


class VAE(nn.Module):
    """A VAE with MLP encoder/decoder, convolutional ones (``network="conv"``, for images of
    ``image_shape`` (channels, height, width); ``hidden`` is then the dense layers between
    the convolutions and z), or the ``encoder``/``decoder`` you pass.

    A custom encoder maps ``x (..., x_dim)`` to ``(loc, scale)``, each ``(..., z_dim)``;
    a custom decoder maps ``z`` to ``likelihood.params_per_dim * x_dim`` numbers.
    ``likelihood`` is a name with its ``likelihood_options`` (``sigma`` of gaussian-fixed,
    ``min_scale`` of gaussian), or a :class:`~pyro_vae.likelihoods.Likelihood`.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 50,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
        likelihood: str | Likelihood = "bernoulli",
        likelihood_options: dict | None = None,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        network: str = "mlp",
        image_shape: Sequence[int] | None = None,
    ):
        super().__init__()
        self.z_dim = z_dim
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
        if encoder is None:
            encoder = Encoder(x_dim, hidden, z_dim, activation)
        if decoder is None:
            decoder = Decoder(z_dim, tuple(reversed(hidden)), out_dim, activation)
        self.encoder, self.decoder = encoder, decoder
        self.spec: ModelSpec | None = None
        if rebuildable:
            conv = dict(network=network, image_shape=list(image_shape)) \
                if network == "conv" else {}  # an MLP's spec reads as it always did
            self.spec = ModelSpec("pyro_vae.model:VAE", dict(
                x_dim=x_dim, z_dim=z_dim, hidden=list(hidden), activation=activation,
                likelihood=likelihood_name(self.likelihood),
                likelihood_options=self.likelihood.options(), **conv))

    def model(self, x: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        self.likelihood.check(x)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` for the latent codes ``z``."""
        return self.likelihood(self.decoder(z)).mean

    def sample(self, n: int) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` for ``n`` draws :math:`z \\sim \\mathcal{N}(0, I)`."""
        device = next(self.decoder.parameters()).device
        return self.decode(torch.randn(n, self.z_dim, device=device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Means of :math:`p(x \\mid z)` at the guide's posterior mean of ``z``."""
        loc, _ = self.encoder(x)
        return self.decode(loc)
