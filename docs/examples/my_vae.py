"""A model in your own file: the VAE with a heavy-tailed Laplace(0, 1) prior on z.

Walked through in docs/extending.md, section 5: trained with ``fit``, then evaluated,
plotted and sampled from the command line with ``--model docs/examples/my_vae.py:make_vae``.
"""

import pyro
import pyro.distributions as dist

from pyro_vae import VAE


class LaplacePriorVAE(VAE):
    """The built-in VAE's networks and guide; the prior is Laplace(0, 1) in every dimension."""

    def model(self, x):
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        self.likelihood.check(x)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Laplace(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)


def make_vae(z_dim: int = 2, hidden: int = 256) -> LaplacePriorVAE:
    """The factory a run directory records: its arguments must be JSON values."""
    return LaplacePriorVAE(x_dim=784, z_dim=z_dim, hidden=[hidden])
