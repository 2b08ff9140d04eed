"""A conditional VAE (Sohn, Lee & Yan, 2015, "Learning Structured Output Representation
using Deep Conditional Generative Models"): the label y given to the decoder and encoder.

    .venv/bin/python experiments/extending/conditional.py           # 2 runs, 10 epochs
    .venv/bin/python experiments/extending/conditional.py --quick   # seconds (tests)

What changed against pyro_vae.VAE: model and guide take the label as a second argument,

    model(x, y):  z ~ N(0, I),  x ~ p(x | z, y) = Bernoulli(decoder([z, onehot(y)]))
    guide(x, y):  q(z | x, y) = N(encoder([x, onehot(y)]))

and the networks' inputs grow by the ten entries of the one-hot code. Nothing else: ``fit``
sees a second parameter named ``y`` and gives every batch's labels (a dataset without
labels is refused before training), and ``elbo``, ``log_likelihood``, ``active_units`` and
``pyro-vae evaluate/plot`` pass them on. The bound is now of log p(x | y): the label tells
the decoder which digit to draw, so z is free to hold the style alone, and the figure shows
it: one row per class, the same z down each column.

Against the base, log p(x | y) = log p(x) + log p(y | x) - log p(y): for a digit whose label
is clear from the image (p(y | x) close to 1, p(y) = 1/10) the conditional likelihood is up
to log 10 = 2.30 nats higher than log p(x) without any better model of the image. So the
table's two likelihood columns are not a contest; the difference beyond 2.30 nats (or short
of it) is what the label does to the fit.

Writes results/extending/conditional/: README.md, metrics.csv, samples.png.
"""

import pyro
import pyro.distributions as dist
import torch
from common import NETWORK, arguments, build, config, load, measure, train, write

from pyro_vae import VAE
from pyro_vae.networks import Decoder, Encoder, concat
from pyro_vae.plots import image_panels

CLASSES = 10


class ConditionalVAE(VAE):
    """The base VAE's arguments; its encoder and decoder also read the one-hot label."""

    num_classes = CLASSES  # fit checks every label against it

    def __init__(self, **vae):
        super().__init__(**vae)
        hidden, activation = vae.get("hidden", [400]), vae.get("activation", "relu")
        self.encoder = Encoder(vae["x_dim"] + CLASSES, hidden, self.z_dim, activation)
        self.decoder = Decoder(self.z_dim + CLASSES, tuple(reversed(hidden)),
                               vae["x_dim"] * self.likelihood.params_per_dim, activation)

    def model(self, x, y):
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        self.likelihood.check(x)
        with pyro.plate("data", x.shape[0]):
            prior = dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood(self.decoder(concat(z, one_hot(y, z)))), obs=x)

    def guide(self, x, y):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(concat(x, one_hot(y, x)))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def samples_by_class(self, columns: int) -> torch.Tensor:
        """Decoder means, one row per class, the same draw z ~ N(0, I) down each column:
        ``(10 * columns, x_dim)``."""
        device = next(self.decoder.parameters()).device
        z = torch.randn(columns, self.z_dim, device=device)
        y = torch.arange(CLASSES, device=device).repeat_interleave(columns)
        return self.likelihood(self.decoder(concat(z.repeat(CLASSES, 1), one_hot(y, z)))).mean


def one_hot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The labels' one-hot codes in ``like``'s dtype, by comparison: ``F.one_hot`` reads the
    labels' values to check their range, which would keep the engine from capturing the
    step (pyro_vae.engine), and fit has checked them against the classes already."""
    return (y.unsqueeze(-1) == torch.arange(CLASSES, device=y.device)).to(like.dtype)


def main():
    args = arguments(__doc__, "conditional")
    data = load(args)
    cfg = config(args)
    rows = []
    runs = {"base": "unconditional (base VAE): log p(x)",
            "conditional": "conditional on the label: log p(x ∣ y)"}
    for run, name in runs.items():
        vae = build(data, args, ConditionalVAE if run == "conditional" else VAE)
        metrics = train(run, vae, data, cfg, args.out)
        rows.append(measure(name, vae, data, args, metrics))
    pyro.set_rng_seed(args.seed)
    image_panels({"conditional VAE: row = class y, column = one z ~ N(0, I)":
                  vae.samples_by_class(12)}, data.image_shape, args.out / "samples.png",
                 ncol=12, row_labels=[str(c) for c in range(CLASSES)])

    base, conditional = rows
    gain = conditional["log_likelihood"] - base["log_likelihood"]
    story = [
        f"- The conditional run's IS log-likelihood is of log p(x | y), the base's of log p(x): "
        f"the difference, {gain:+.2f} nats, is to be read against log 10 = 2.30 nats, what a "
        "label that is clear from the image adds by itself (the header of "
        "`experiments/extending/conditional.py`).",
        f"- Test ELBO: {conditional['test_elbo']:.2f} (a bound on log p(x | y)) against "
        f"{base['test_elbo']:.2f}; active units {conditional['active_units']} against "
        f"{base['active_units']}"
        + (": fewer, as the label takes over what z had to say about the digit's class."
           if conditional["active_units"] < base["active_units"] else "."),
        f"- Network ({NETWORK['hidden'][0]} hidden units, {NETWORK['z_dim']} latent "
        "dimensions) and budget are the same for both runs; only the one-hot inputs differ.",
        "- The figure: one row per class, the same z down each column, so a column shows one "
        "style (slant, width, stroke) written as every digit where the label steers the "
        "decoder. A column that shows one digit in every row is a draw of z that holds the "
        "class itself: nothing in the bound stops z from encoding the label too, and with "
        f"{NETWORK['z_dim']} latent dimensions it does for some codes.",
    ]
    write(args, data, rows, "A conditional VAE", story, "samples.png")


if __name__ == "__main__":
    main()
