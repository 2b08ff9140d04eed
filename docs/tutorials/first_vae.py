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
# # Your first VAE
#
# This tutorial trains a variational autoencoder (Kingma & Welling, 2014) with a
# **two-dimensional** latent space on MNIST, on a CPU, in about two minutes. Two dimensions
# are too few for a good density model, but they let us *see* the whole model: every
# latent code is a point in the plane, and we can draw the digit the decoder makes at each
# point.
#
# The model, for each image $x$ (784 pixels, each 0 or 1):
#
# $$z \sim \mathcal{N}(0, I_2), \qquad x \mid z \sim \prod_{d=1}^{784}
#   \mathrm{Bernoulli}\big(x_d;\ \sigma(f_\theta(z))_d\big),$$
#
# with a decoder network $f_\theta$ (2-128-256-784, ReLU). The guide, or encoder, is an
# amortized Gaussian $q_\phi(z \mid x) = \mathcal{N}(\mu_\phi(x),
# \mathrm{diag}\,\sigma_\phi(x)^2)$ (784-256-128, ReLU). Training maximizes the evidence
# lower bound (ELBO) on $\log p_\theta(x)$:
#
# $$\mathcal{L}(x) = \mathbb{E}_{q_\phi(z \mid x)}\big[\log p_\theta(x \mid z)\big]
#   - \mathrm{KL}\big(q_\phi(z \mid x)\,\|\,p(z)\big) \;\le\; \log p_\theta(x).$$
#
# The setting is that of `experiments/latent2d.py` (its run (b), which reproduces a course
# notebook): batch 100, Adam with learning rate $10^{-3}$, the KL term in closed form.

# %%
import os

QUICK = os.environ.get("PYRO_VAE_QUICK") == "1"  # the test suite's size: seconds, not minutes

# Every size of this tutorial, in one place.
EPOCHS = 1 if QUICK else 20  # passes over the training set
N_TRAIN = 1_000 if QUICK else None  # training images (None: all 60,000)
N_TEST = 500 if QUICK else None  # test images (None: all 10,000)
N_EVAL = 100 if QUICK else 1_000  # test images for the ELBO and the IS-K estimate
K = 50 if QUICK else 1_000  # importance samples per image
SEED = 0

# %% [markdown]
# ## The data
#
# `mnist-binary` is MNIST with *dynamic binarization*: each grey level in $[0, 1]$ is the
# probability that the pixel is on, and every training batch is a fresh Bernoulli draw
# (a little data augmentation). Evaluation uses one fixed draw (seed 0) of each split, so
# that every number below is computed on the same binary images.

# %%
import logging
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import torch

from pyro_vae import VAE, Config, elbo, fit, load_dataset, log_likelihood
from pyro_vae.plots import (
    latent_embedding,
    latent_manifold,
    learning_curves,
    reconstructions,
    samples,
)

logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" lines

OUT = Path("runs/tutorials/first_vae")  # everything this tutorial writes goes here
data = load_dataset("mnist-binary")
if N_TRAIN is not None or N_TEST is not None:
    data = data.subset(train=N_TRAIN, test=N_TEST)
print(f"training images: {data.x_train.shape[0]}")
print(f"test images: {data.x_test.shape[0]}")
print(f"pixels per image: {data.x_dim}, image shape {data.image_shape}")

# %% [markdown]
# ## The model and its training
#
# `VAE` builds the model and guide as two Pyro functions, `vae.model(x)` and
# `vae.guide(x)`. `Config` says how to train them: the estimator `meanfield` is Pyro's
# `TraceMeanField_ELBO`, which computes the KL term in closed form (two Gaussians) and
# estimates the reconstruction term with one draw of $z$ per image. `fit` runs stochastic
# variational inference and writes a *run directory*: the config, the model's description,
# a line of metrics per epoch and a checkpoint, from which the run can be resumed or
# evaluated later (also from the command line: `pyro-vae evaluate RUN_DIR`).
#
# Losses are the negative ELBO in nats per example: the train loss averages the epoch's
# batches (each a fresh binarization), the test loss is computed after each epoch on the
# fixed binarization of the test set.

# %%
pyro.set_rng_seed(SEED)  # the networks' initial weights
vae = VAE(x_dim=784, z_dim=2, hidden=[256, 128], activation="relu", likelihood="bernoulli")
config = Config(elbo="meanfield", optimizer="adam", lr=1e-3, batch_size=100, epochs=EPOCHS,
                seed=SEED)
run_dir = OUT / "run"
shutil.rmtree(run_dir, ignore_errors=True)  # fit refuses a folder that holds a run already
metrics = fit(vae.model, vae.guide, data, config, run_dir)

# %% [markdown]
# `fit` returned the per-epoch metrics (the same as `run_dir/metrics.jsonl`). The
# learning curves plot them against the epoch (left) and against the training time
# (right); the solid line is the train loss, the dashed line the test loss.

# %%
FIGURES = OUT / "figures"


def show(png: Path) -> None:
    """Display a PNG that pyro_vae.plots wrote, at its own size."""
    image = plt.imread(png)
    height, width = image.shape[:2]
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image)
    ax.axis("off")


show(learning_curves({"Adam lr 1e-3": metrics}, FIGURES / "learning_curves.png",
                     title="2-D VAE on dynamically binarized MNIST, batch 100"))
plt.show()

# %%
final = metrics[-1]
print(f"epochs trained: {final['epoch']}")
print(f"train loss (negative ELBO), last epoch: {final['train_loss']:.2f} nats")
print(f"test loss (negative ELBO), last epoch: {final['test_loss']:.2f} nats")
print(f"training time: {sum(m['seconds'] for m in metrics):.0f} s")

# %% [markdown]
# With the full data and 20 epochs, this is the setting of run (b) of
# `experiments/latent2d.py`, whose README reports a test loss of 141.99 nats after 20
# epochs.
#
# ## How good is it? The ELBO and an importance-sampled log-likelihood
#
# The ELBO is a lower bound on $\log p(x)$, and the quantity we would like to know is
# $\log p(x)$ itself. Importance sampling with the guide as proposal gives a tighter bound
# (Burda, Grosse & Salakhutdinov, 2016, "Importance Weighted Autoencoders"): with
# $z_1, \dots, z_K \sim q_\phi(z \mid x)$ independently,
#
# $$\mathcal{L}_K(x) = \mathbb{E}\left[\log \frac{1}{K} \sum_{k=1}^{K}
#   \frac{p_\theta(x, z_k)}{q_\phi(z_k \mid x)}\right], \qquad
#   \mathcal{L}(x) = \mathcal{L}_1(x) \le \mathcal{L}_K(x) \le \mathcal{L}_{K+1}(x)
#   \le \log p_\theta(x),$$
#
# and $\mathcal{L}_K(x) \to \log p_\theta(x)$ as $K \to \infty$. We call one draw of the
# inside of the expectation the **IS-K** estimate. So IS-K $\ge$ ELBO (in expectation), and
# the difference measures how far the guide is from the true posterior:
#
# $$\log p_\theta(x) - \mathcal{L}(x) = \mathrm{KL}\big(q_\phi(z \mid x)\,\|\,
#   p_\theta(z \mid x)\big) \;\ge\; \mathcal{L}_K(x) - \mathcal{L}(x).$$
#
# The IS-K minus ELBO gap is a lower bound on this KL, the price of approximating each
# posterior by a diagonal Gaussian (the *inference gap* of Cremer, Li & Duvenaud, 2018). We
# estimate both on the same test images, with `elbo` (closed-form KL, one draw for the
# reconstruction term) and `log_likelihood` (K importance samples per image).

# %%
evaluation = data.subset(test=N_EVAL)  # the first N_EVAL test images, fixed binarization
x_eval = evaluation.evaluation("test")
test_elbo = elbo(vae.model, vae.guide, evaluation, split="test", seed=SEED)
ll_per_image = log_likelihood(vae.model, vae.guide, x_eval, num_samples=K, seed=SEED)
ll = ll_per_image.mean().item()
ll_stderr = (ll_per_image.std() / len(ll_per_image) ** 0.5).item()
print(f"test images evaluated: {x_eval.shape[0]} (one fixed binarization, seed 0)")
print(f"test ELBO: {test_elbo:.2f} nats per example")
print(f"test IS-{K} log-likelihood: {ll:.2f} +- {ll_stderr:.2f} nats per example "
      "(standard error over images)")
print(f"gap IS-{K} - ELBO: {ll - test_elbo:.2f} nats per example")

# %% [markdown]
# How to read them: the gap is what a better guide could win at most for this decoder (up
# to the slack left in IS-K itself); what it cannot win is the distance from the IS-K
# estimate to the log-likelihood of a richer model. Two latent dimensions cannot hold the
# details of a digit: with 50 of them and 500-wide layers, the VAEs of
# `results/route_to_88/README.md` reach about $-87$ nats (IS-5000, all 10,000 test images)
# after 12 minutes of training. The rest of this tutorial shows what two dimensions do hold.
#
# ## Reconstructions
#
# Each test image (top) is encoded to its posterior mean $\mu_\phi(x)$ and decoded to the
# pixel probabilities $\sigma(f_\theta(\mu_\phi(x)))$ (bottom). With two latent
# dimensions a reconstruction is the nearest digit-like shape the decoder can draw, not a
# copy: slant and thickness survive, the small details do not.

# %%
x_shown = x_eval[:12]
show(reconstructions(x_shown, vae.reconstruct(x_shown), data.image_shape,
                     FIGURES / "reconstructions.png"))
plt.show()

# %% [markdown]
# ## Samples
#
# New digits: draw $z \sim \mathcal{N}(0, I)$ and show the decoder's pixel probabilities
# (its mean), not a binary draw from them, which would look noisier.

# %%
pyro.set_rng_seed(SEED)
show(samples(vae.sample(64), data.image_shape, FIGURES / "samples.png"))
plt.show()

# %% [markdown]
# ## The latent manifold
#
# Because $z$ has two dimensions we can decode a whole grid of it: here $20 \times 20$
# points of $[-4, 4]^2$, $z_1$ growing to the right and $z_2$ upwards. Most of the prior's
# mass lies within 2 of the origin; the digits change smoothly from one to the next, and the
# classes sit side by side.

# %%
show(latent_manifold(vae.decode, data.image_shape, FIGURES / "latent_manifold.png"))
plt.show()

# %% [markdown]
# ## The test set in the latent plane
#
# The other direction: encode every test image to its posterior mean and colour it by its
# label, which the VAE never saw. Digits of one class gather in one region, and classes
# that look alike (4 and 9, 3, 5 and 8) are neighbours, as in the manifold above.

# %%
x_test = data.evaluation("test")
with torch.no_grad():
    z_test = vae.latent_posterior(x_test).mean
print(f"test images embedded: {z_test.shape[0]}")
show(latent_embedding(z_test, data.y_test, FIGURES / "latent_embedding.png"))
plt.show()

# %% [markdown]
# ## Where next
#
# - The run directory `runs/tutorials/first_vae/run` (under the folder this notebook ran
#   in) opens from the command line: `pyro-vae evaluate runs/tutorials/first_vae/run
#   --is-samples 1000 --examples 1000` computes the same estimates on the same images, and
#   `pyro-vae plot runs/tutorials/first_vae/run` draws the same figures into the run's own
#   `figures/` folder.
# - A larger latent space (`z_dim=50`) gets far better bounds; the next tutorial writes a
#   model and guide of your own.
