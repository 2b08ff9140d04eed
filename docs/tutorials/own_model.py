# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Your own model and guide
#
# pyro-vae trains any Pyro model/guide pair, not only its built-in `VAE`. This tutorial
# writes a model of its own in a file, trains it with `fit`, then opens the run from the
# command line (`pyro-vae evaluate`, `pyro-vae plot`) exactly as it would open a built-in
# one. Last, it breaks one of the few rules a model follows, to show the message you get.
#
# The change is small and easy to see: the prior. The built-in VAE draws $z \sim
# \mathcal{N}(0, I)$; ours draws $z$ from a *learned mixture of Gaussians*,
#
# $$p_\lambda(z) = \sum_{c=1}^{C} \pi_c\, \mathcal{N}\big(z;\ \mu_c,
#   \mathrm{diag}\,\sigma_c^2\big), \qquad
#   x \mid z \sim \prod_{d=1}^{784} \mathrm{Bernoulli}\big(x_d;\ \sigma(f_\theta(z))_d\big),$$
#
# with the weights $\pi = \mathrm{softmax}(\ell)$, the means $\mu_c$ and the scales
# $\sigma_c$ trained together with the networks. A single Gaussian pulls every code towards
# one blob; a mixture can give the digits' clusters room of their own (Tomczak & Welling,
# 2018, "VAE with a VampPrior", compare such mixture priors with their own). The guide is
# unchanged: $q_\phi(z \mid x) = \mathcal{N}(\mu_\phi(x), \mathrm{diag}\,\sigma_\phi(x)^2)$.
# The latent space is two-dimensional, as in the first tutorial, so that we can look at it.

# %%
import os

QUICK = os.environ.get("PYRO_VAE_QUICK") == "1"  # the test suite's size: seconds, not minutes

# Every size of this tutorial, in one place.
EPOCHS = 1 if QUICK else 20  # passes over the training set
N_TRAIN = 1_000 if QUICK else None  # training images (None: all 60,000)
N_TEST = 500 if QUICK else None  # test images (None: all 10,000)
N_EVAL = 100 if QUICK else 1_000  # test images that `pyro-vae evaluate` scores
K = 50 if QUICK else 1_000  # importance samples per image
COMPONENTS = 10  # Gaussians in the prior
SEED = 0

# %% [markdown]
# ## The model, in a file of its own
#
# The `pyro-vae` commands open a model of yours only through a *factory*: a function in a
# file, named on the command line as `--model FILE:FUNCTION`, that builds the model from
# JSON arguments. A run directory records the factory's name, its arguments and a digest of
# the file, and never runs code just because a record names it.
#
# So we write the model to a file. In your own project this is an ordinary `.py` file
# next to your scripts; here a cell writes it, so that the tutorial runs from anywhere.
# It subclasses `VAE` and overrides `model` alone: the same decoder and likelihood, the
# mixture at the site `z`. The prior's parameters live in a small `nn.Module`, registered
# with `pyro.module` on every call, so that `fit` trains and checkpoints them like the
# networks'.

# %%
import json
import logging
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch

from pyro_vae import Config, build_model, fit, load_dataset, log_likelihood
from pyro_vae.cli import main

logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" lines

OUT = Path("runs/tutorials/own_model")  # everything this tutorial writes goes here
MODEL_FILE = OUT / "my_model.py"
MODEL_FILE.parent.mkdir(parents=True, exist_ok=True)
MODEL_FILE.write_text('''\
"""A VAE whose prior is a learned mixture of Gaussians (the guide is VAE's own)."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import VAE


class MixturePrior(nn.Module):
    """p(z) = sum_c pi_c N(z; mu_c, diag sigma_c^2), every number learned."""

    def __init__(self, z_dim: int, components: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))  # pi = softmax(logits)
        self.loc = nn.Parameter(torch.randn(components, z_dim))  # mu_c
        self.log_scale = nn.Parameter(torch.zeros(components, z_dim))  # log sigma_c

    def forward(self, n: int) -> dist.Distribution:
        mixture = dist.Categorical(logits=self.logits)
        components = dist.Normal(self.loc, self.log_scale.exp()).to_event(1)
        return dist.MixtureSameFamily(mixture, components).expand([n])


class MixturePriorVAE(VAE):
    def __init__(self, components: int, **vae):
        super().__init__(**vae)
        self.prior = MixturePrior(self.z_dim, components)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        pyro.module("likelihood", self.likelihood)
        pyro.module("prior", self.prior)  # every call registers every learnable thing
        self.likelihood.check(x)
        with pyro.plate("data", x.shape[0]):  # every sample site inside the data plate
            z = pyro.sample("z", self.prior(x.shape[0]))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    # guide: unchanged, VAE.guide


def make_model(z_dim: int = 2, components: int = 10, hidden: tuple = (256, 128)):
    """The factory that a run directory records: its arguments are JSON values."""
    return MixturePriorVAE(components, x_dim=784, z_dim=z_dim, hidden=list(hidden))
''')
FACTORY = f"{MODEL_FILE}:make_model"  # FILE:FUNCTION, as the command line names it
print(f"factory: {FACTORY}")

# %% [markdown]
# `build_model` imports the factory by that name, calls it with keyword arguments and
# records on the result how it was built (`vae.spec`); `fit` writes the record into the
# run directory. (Calling `make_model` directly would train just as well, but the run
# could then not say which model it holds.)

# %%
pyro.set_rng_seed(SEED)  # the initial weights and mixture means
vae = build_model(FACTORY, z_dim=2, components=COMPONENTS, hidden=[256, 128])
print(f"model spec: {vae.spec}")
print(f"latent dimensions: {vae.z_dim}")

# %% [markdown]
# ## Training
#
# The data are `mnist-binary`: dynamically binarized MNIST (a fresh Bernoulli draw of every
# training batch), evaluated on one fixed draw of the test set (seed 0).
#
# The estimator: there is no closed-form KL divergence between a Gaussian and a mixture, so
# the ELBO's KL term is estimated from the same draw $z \sim q_\phi(z \mid x)$ as the
# reconstruction term,
#
# $$\mathcal{L}(x) \approx \log p_\theta(x \mid z) + \log p_\lambda(z)
#   - \log q_\phi(z \mid x),$$
#
# which is Pyro's `Trace_ELBO`, `elbo="trace"`. (`meanfield` would fall back to the same
# sampled term at this site.) The other settings are the first tutorial's (the same
# networks, batch 100, Adam with learning rate $10^{-3}$, the same epochs, and below the
# same test images and K), so the numbers below can be read against its numbers.

# %%
data = load_dataset("mnist-binary")
if N_TRAIN is not None or N_TEST is not None:
    data = data.subset(train=N_TRAIN, test=N_TEST)
print(f"training images: {data.x_train.shape[0]}")
print(f"test images: {data.x_test.shape[0]}")

config = Config(elbo="trace", optimizer="adam", lr=1e-3, batch_size=100, epochs=EPOCHS,
                seed=SEED)
run_dir = OUT / "run"
shutil.rmtree(run_dir, ignore_errors=True)  # fit refuses a folder that holds a run already
metrics = fit(vae.model, vae.guide, data, config, run_dir)
print(f"test loss (negative ELBO, sampled KL), last epoch: {metrics[-1]['test_loss']:.2f} nats")

# %% [markdown]
# The prior's parameters were trained with the networks. Its learned weights and means:

# %%
with torch.no_grad():
    weights = vae.prior.logits.softmax(0)
    for c in weights.argsort(descending=True).tolist():
        mu = vae.prior.loc[c].tolist()
        sigma = vae.prior.log_scale[c].exp().tolist()
        print(f"component {c}: weight {weights[c]:.3f}, mean ({mu[0]:+.2f}, {mu[1]:+.2f}), "
              f"scales ({sigma[0]:.2f}, {sigma[1]:.2f})")

# %% [markdown]
# ## Opening the run from the command line
#
# The run directory holds everything but the model's code. Any command that rebuilds the
# model is told which factory to use, and refuses another one (or an edited file) by name.
# In a shell, evaluating the run on the first test images reads
#
# ```sh
# pyro-vae evaluate runs/tutorials/own_model/run \
#     --model runs/tutorials/own_model/my_model.py:make_model \
#     --is-samples 1000 --examples 1000
# ```
#
# and from Python the same command is `pyro_vae.cli.main` with the same words. It reports
# the ELBO and the IS-K estimate of $\log p(x)$ (Burda, Grosse & Salakhutdinov, 2016):
# with $z_1, \dots, z_K \sim q_\phi(z \mid x)$,
#
# $$\log p(x) \ge \mathcal{L}_K(x) = \mathbb{E}\left[\log \frac{1}{K} \sum_{k=1}^{K}
#   \frac{p_\theta(x \mid z_k)\, p_\lambda(z_k)}{q_\phi(z_k \mid x)}\right]
#   \ge \mathcal{L}(x),$$
#
# and their difference, a lower bound on $\mathrm{KL}(q_\phi(z \mid x) \,\|\,
# p(z \mid x))$. It skips, with a line saying why, what does not apply: the KL per
# dimension is measured against $\mathcal{N}(0, 1)$, and this prior is not that.

# %%
command = ["evaluate", str(run_dir), "--model", FACTORY,
           "--is-samples", str(K), "--examples", str(N_EVAL)]
print("pyro-vae " + " ".join(command))
evaluate_status = main(command)
print(f"exit status: {evaluate_status}")

# %% [markdown]
# The numbers are also in `run_dir/evaluation.json`, with the estimators and the
# binarization written beside them:

# %%
evaluation = json.loads((run_dir / "evaluation.json").read_text())
print(f"examples: {evaluation['examples']} (binarization: {evaluation['binarization']})")
print(f"test ELBO: {evaluation['elbo']:.2f} nats per example ({evaluation['elbo_estimator']})")
print(f"test log-likelihood: {evaluation['log_likelihood']:.2f} nats per example "
      f"({evaluation['log_likelihood_estimator']})")
print(f"gap: {evaluation['gap']:.2f} nats per example")

# %% [markdown]
# `pyro-vae plot` draws every figure that applies to the run into `run_dir/figures/`: the
# learning curves, reconstructions, samples from the model's own prior, and, because $z$
# has two dimensions, the latent manifold and the test set's posterior means coloured by
# label. It finds the latent site, the observed site and the data plate from the model's
# and guide's traces, not from methods of `VAE`.
#
# ```sh
# pyro-vae plot runs/tutorials/own_model/run \
#     --model runs/tutorials/own_model/my_model.py:make_model
# ```

# %%
plot_status = main(["plot", str(run_dir), "--model", FACTORY])
print(f"exit status: {plot_status}")
FIGURES = run_dir / "figures"


def show(png: Path) -> None:
    """Display a PNG that pyro-vae wrote, at its own size."""
    image = plt.imread(png)
    height, width = image.shape[:2]
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.axis("off")


# %% [markdown]
# The test set's posterior means: with a mixture prior, the encoder may place the digits
# around the components' means rather than all around the origin.

# %%
show(FIGURES / "latent_embedding.png")
plt.show()

# %% [markdown]
# Samples: $z$ drawn from the learned mixture, each decoded to its pixel probabilities.

# %%
show(FIGURES / "samples.png")
plt.show()

# %% [markdown]
# ## A broken rule, and the message it gives
#
# A model follows Pyro's rules and a few of pyro-vae's (listed in `docs/extending.md`, "The
# rules a model of yours follows"). One of them: every sample site sits inside one
# `pyro.plate` over the data. The importance-sampled log-likelihood, and every
# importance-weighted estimator, weigh each data point's samples by themselves, and they
# find the data points through that plate.
#
# A common slip is to leave the plate out and make the shapes work with `.to_event(2)`,
# which declares the whole batch one event. Pyro's `Trace_ELBO` trains such a pair without
# complaint (it only needs the batch's total); `log_likelihood` cannot tell the data points
# apart, and says so:

# %%
def model_without_plate(x):
    pyro.module("decoder", vae.decoder)
    z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))
    pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)).to_event(2), obs=x)


def guide_without_plate(x):
    pyro.module("encoder", vae.encoder)
    loc, scale = vae.encoder(x)
    pyro.sample("z", dist.Normal(loc, scale).to_event(2))


x_few = data.evaluation("test")[:3]  # three test images
plate_error = None
try:
    log_likelihood(model_without_plate, guide_without_plate, x_few, num_samples=2)
except ValueError as e:
    plate_error = str(e)
print(f"ValueError: {plate_error}")

# %% [markdown]
# The fix is the two lines of the file above: `with pyro.plate("data", x.shape[0]):`
# around the sample sites of the model and of the guide, with `.to_event(1)` (one image,
# one code) in place of `.to_event(2)`.
#
# ## Where next
#
# - The same factory trains from the command line too:
#   `pyro-vae train --model runs/tutorials/own_model/my_model.py:make_model
#   --model-args '{"z_dim": 2}' --elbo trace --epochs 2 --out runs/my-run`.
# - `docs/extending.md` changes one piece at a time: the likelihood, the guide (a
#   normalizing flow), the estimator, and a model of $(x, y)$ given the labels.
