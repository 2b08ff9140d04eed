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
# # Comparing ELBO estimators
#
# A VAE is trained by following a noisy gradient of a lower bound on $\log p(x)$. Which
# bound, and which estimator of its gradient, is a choice: `fit` takes it by name
# (`Config(elbo=...)`, `pyro-vae train --elbo ...`). This tutorial trains the same VAE
# under four of them, from the same initial weights and on the same batches, over several
# seeds, and asks two questions:
#
# 1. Does the estimator change the model we end up with? We measure every model with the
#    same stick, an importance-sampled log-likelihood on the same test images, and call a
#    difference that lies inside its error bars a tie.
# 2. Why would it? We measure the signal-to-noise ratio of the encoder's gradient for the
#    importance-weighted bound and its doubly reparameterized variant as the number of
#    particles $k$ grows.
#
# The four estimators, by their names in pyro-vae:
#
# | name | bound | gradient |
# |---|---|---|
# | `trace` | ELBO | Pyro's `Trace_ELBO`: every term sampled, the KL too |
# | `meanfield` | ELBO | Pyro's `TraceMeanField_ELBO`: the KL term in closed form |
# | `iwae` | $\mathcal{L}_k$ | the importance-weighted bound (Burda et al., 2016) |
# | `iwae-dreg` | $\mathcal{L}_k$ | doubly reparameterized encoder gradient (Tucker et al., 2019) |

# %%
import os

QUICK = os.environ.get("PYRO_VAE_QUICK") == "1"  # the test suite's size: seconds, not minutes

# Every size of this tutorial, here and nowhere else.
SEEDS = [0, 1] if QUICK else [0, 1, 2]  # one model per estimator and seed
TRAIN, TEST = (200, 50) if QUICK else (10_000, 1_000)  # the first MNIST images of each split
EPOCHS = 1 if QUICK else 8
K = 5  # particles of iwae and iwae-dreg in training
IS_SAMPLES = 20 if QUICK else 500  # K of the IS-K measuring stick
SNR_KS = [1, 4] if QUICK else [1, 5, 20, 50]  # particles at which the gradient SNR is measured
SNR_DRAWS = 4 if QUICK else 100  # gradient draws per SNR estimate
SNR_BATCH = 20 if QUICK else 100  # training images in the SNR's batch

# %% [markdown]
# ## The bounds and their gradients
#
# **The ELBO.** For an encoder $q_\phi(z \mid x)$ and a model $p_\theta(x, z) = p(z)\,
# p_\theta(x \mid z)$,
#
# $$
# \log p_\theta(x) \;\ge\; \mathcal{L}(x) = \mathbb{E}_{q_\phi(z \mid x)}\!\left[\log
# \frac{p_\theta(x, z)}{q_\phi(z \mid x)}\right] = \mathbb{E}_{q}[\log p_\theta(x \mid z)]
# - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big).
# $$
#
# With the reparameterization $z = \mu_\phi(x) + \sigma_\phi(x) \odot \epsilon$,
# $\epsilon \sim \mathcal{N}(0, I)$ (Kingma & Welling, 2014), both `trace` and `meanfield`
# estimate this one $\mathcal{L}$ and differentiate through the draw. `trace` samples
# everything, $\hat{\mathcal{L}} = \log p_\theta(x, z) - \log q_\phi(z \mid x)$;
# `meanfield` samples only the reconstruction term and takes the Gaussian KL in closed form,
#
# $$
# \hat{\mathcal{L}} = \log p_\theta(x \mid z) - \tfrac12 \sum_{j} \left(\mu_j^2 + \sigma_j^2
# - 1 - \log \sigma_j^2\right).
# $$
#
# Same expectation, same optimum: they can differ only through the noise of their
# gradients.
#
# **The importance-weighted bound** (Burda, Grosse & Salakhutdinov, 2016). With $k$ draws
# $z_1, \dots, z_k \sim q_\phi(z \mid x)$ and weights $w_i = p_\theta(x, z_i) /
# q_\phi(z_i \mid x)$,
#
# $$
# \mathcal{L}_k(x) = \mathbb{E}\left[\log \frac1k \sum_{i=1}^k w_i\right], \qquad
# \mathcal{L} = \mathcal{L}_1 \le \mathcal{L}_k \le \mathcal{L}_{k+1} \le \log p_\theta(x),
# $$
#
# and $\mathcal{L}_k \to \log p_\theta(x)$ as $k \to \infty$. Its reparameterized gradient
# weighs each particle by its normalized weight $\tilde w_i = w_i / \sum_j w_j$:
# $\nabla \mathcal{L}_k = \mathbb{E}\left[\sum_i \tilde w_i \nabla \log w_i\right]$. A
# tighter bound is a better objective for the model, but Rainforth et al. (2018, "Tighter
# Variational Bounds are Not Necessarily Better") show that the signal-to-noise ratio of
# the *encoder's* gradient falls like $O(1/\sqrt{k})$ (the decoder's rises like
# $O(\sqrt{k})$): the gradient's mean shrinks toward zero faster than its noise.
#
# **DReG** (Tucker, Lawson, Gu & Maddison, 2019, "Doubly Reparameterized Gradient
# Estimators for Monte Carlo Objectives"). The encoder's gradient hides a score-function
# term, $\nabla_\phi \log q_\phi(z_i \mid x)$ at a fixed $z_i$, which is the noisy part.
# Reparameterizing it a second time removes it and leaves an unbiased estimator of the same
# $\nabla_\phi \mathcal{L}_k$,
#
# $$
# \nabla_\phi \mathcal{L}_k = \mathbb{E}_\epsilon\left[\sum_{i=1}^k \tilde w_i^{\,2}\,
# \frac{\partial \log w_i}{\partial z_i} \frac{\partial z_i}{\partial \phi}\right],
# $$
#
# whose SNR does not collapse with $k$. The decoder's gradient is IWAE's. For $k = 1$ it is
# the path-derivative ("sticking the landing") estimator of the ELBO (Roeder, Wu & Duvenaud,
# 2017).
#
# Cost: `iwae` and `iwae-dreg` run the decoder on $k$ particles per example, so a step
# costs more than a `meanfield` step, and more as $k$ grows (less than $k$ times: the
# encoder runs once, and $k$ particles fill the cores better than one). We compare them
# here at an equal number of epochs (the same data, the same steps), not at equal time;
# the seconds per epoch are printed with the results.

# %%
import json
import logging
import math
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import pyro

from pyro_vae import VAE, Config, elbo, fit, gradient_snr, load_dataset, log_likelihood, make_elbo

logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" lines

OUT = Path("runs/tutorials/estimators")  # everything this tutorial writes goes here
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Data and model
#
# `mnist-binary` is MNIST binarized dynamically: every training batch is a fresh Bernoulli
# draw of the grey levels, while every evaluation reads one fixed draw (seed 0), so all
# models are scored on the same binary images. We take the first `TRAIN` training and
# `TEST` test images (`Dataset.subset`).
#
# The model is the single-stochastic-layer network of the IWAE paper: encoder 784-200-200
# tanh to the mean and scale of 50 latent dimensions, decoder 50-200-200-784 tanh with a
# Bernoulli output, Adam with learning rate $10^{-3}$, batches of 100. Training runs in
# memory (`fit(..., run_dir=None)`), and with Pyro's own eager step (`jit=False`), so that
# the seconds compare the estimators and not the engine's capture. The figures and a file
# of every number (`numbers.json`) go to `runs/tutorials/estimators/`.

# %%
data = load_dataset("mnist-binary").subset(train=TRAIN, test=TEST)
x_test = data.evaluation("test")  # the fixed binarization (seed 0) of the test images
print(f"training images: {data.x_train.shape[0]}, test images: {x_test.shape[0]}")

NETWORK = dict(x_dim=784, z_dim=50, hidden=[200, 200], activation="tanh",
               likelihood="bernoulli")
PARTICLES = {"trace": 1, "meanfield": 1, "iwae": K, "iwae-dreg": K}

# %% [markdown]
# ## Training: one model per estimator and seed
#
# For a seed, `pyro.set_rng_seed` before building the VAE gives every estimator the same
# initial weights, and `Config(seed=...)` the same order and binarization of batches: only
# the estimator differs. `fit` returns one record per epoch; its `test_loss` is the
# training estimator's own negative bound on the test images (nats per example), so
# $-$`test_loss` is the ELBO for `trace` and `meanfield` and $\mathcal{L}_5$ for `iwae` and
# `iwae-dreg`.

# %%
runs = {}  # (estimator, seed) -> the trained VAE and its numbers
for seed in SEEDS:
    for name, k in PARTICLES.items():
        pyro.set_rng_seed(seed)
        vae = VAE(**NETWORK)
        config = Config(elbo=name, particles=k, epochs=EPOCHS, batch_size=100, lr=1e-3,
                        seed=seed, jit=False)
        metrics = fit(vae.model, vae.guide, data, config, quiet=True)
        runs[name, seed] = dict(
            vae=vae,
            bound=-metrics[-1]["test_loss"],
            seconds_per_epoch=sum(m["seconds"] for m in metrics) / len(metrics),
        )
        print(f"seed {seed}, {name:9s} (k = {k}): test bound {runs[name, seed]['bound']:8.2f} "
              f"nats, {runs[name, seed]['seconds_per_epoch']:5.2f} s per epoch")

# %% [markdown]
# ## One measuring stick for every model
#
# The bounds above are not comparable: $\mathcal{L}_5$ is tighter than the ELBO by
# construction, so a higher $\mathcal{L}_5$ says nothing yet about a better model. Every
# model gets the same two measurements on the same fixed test images:
#
# - the ELBO, `elbo(model, guide, data)`: the closed-form KL and one draw per image;
# - the IS-K log-likelihood, `log_likelihood(model, guide, x, K)`: $\log \frac1K
#   \sum_{i=1}^K p_\theta(x, z_i)/q_\phi(z_i \mid x)$ per image with $K$ draws from the
#   encoder, the bound $\mathcal{L}_K$ of Burda et al. at a large $K$ (they used 5000),
#   the closest of the two to $\log p_\theta(x)$.

# %%
for run in runs.values():
    vae = run["vae"]
    run["elbo"] = elbo(vae.model, vae.guide, data)
    run["log_likelihood"] = log_likelihood(vae.model, vae.guide, x_test, IS_SAMPLES).mean().item()


def mean_se(values):
    """The mean over seeds and its standard error (sample std / sqrt(seeds))."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


summary = {name: {key: mean_se([runs[name, s][key] for s in SEEDS])
                  for key in ("bound", "elbo", "log_likelihood", "seconds_per_epoch")}
           for name in PARTICLES}
print(f"mean ± standard error over {len(SEEDS)} seeds, nats per test example "
      f"(mnist-binary, fixed binarization seed 0):")
print(f"{'estimator':11s} {'its test bound':>16s} {'ELBO':>16s} {f'IS-{IS_SAMPLES}':>16s} "
      f"{'s / epoch':>10s}")
for name, s in summary.items():
    cells = [f"{s[key][0]:8.2f} ± {s[key][1]:5.2f}" for key in ("bound", "elbo", "log_likelihood")]
    print(f"{name:11s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s} "
          f"{s['seconds_per_epoch'][0]:10.2f}")

# %% [markdown]
# Ties and differences. The seeds are paired (same initial weights, same batches), so we
# compare two estimators by the per-seed difference of their IS-K log-likelihoods and its
# standard error over seeds. A difference inside two standard errors (or measured on a
# single seed) is a **tie**; outside, the estimators **differ**. The verdicts below are
# computed from the numbers above, whatever they turn out to be.

# %%
PAIRS = [("meanfield", "trace"), ("iwae", "meanfield"), ("iwae-dreg", "iwae")]


def paired(a, b, key="log_likelihood"):
    """a - b, seed by seed: the mean difference and its standard error."""
    return mean_se([runs[a, s][key] - runs[b, s][key] for s in SEEDS])


verdicts = {}
for a, b in PAIRS:
    d, se = paired(a, b)
    verdicts[a, b] = "differs" if abs(d) > 2 * se else "tie"  # a nan se (one seed): a tie
    if verdicts[a, b] == "tie":
        said = "a tie: the difference is inside two standard errors"
    else:
        said = f"differs: {a if d > 0 else b} is higher"
    print(f"IS-{IS_SAMPLES}, {a} - {b}: {d:+.2f} ± {se:.2f} nats -> {said}")

# %% [markdown]
# Two things to look for. `trace` and `meanfield` optimize the same bound, so any
# difference between them is what the closed-form KL's lower gradient noise bought in
# this many steps. `iwae` trains with a tighter bound, and its ELBO column is not what it
# optimizes: $\mathcal{L}_k$ no longer asks $q$ to match the posterior closely, only to
# propose well (Burda et al., 2016), so its gain shows more in the IS-K column than in
# the ELBO column, which can even fall below `meanfield`'s on other settings. The package's
# own study of these estimators, at five epochs of all 60,000 images and IS-5000, is in
# `results/estimators/README.md` (written by `experiments/compare_estimators.py`).

# %%
names = list(PARTICLES)
fig, ax = plt.subplots(figsize=(7, 4))
for offset, key, label in ((-0.12, "elbo", "ELBO"),
                           (0.12, "log_likelihood", f"IS-{IS_SAMPLES} log-likelihood")):
    ax.errorbar([i + offset for i in range(len(names))],
                [summary[n][key][0] for n in names],
                yerr=[0 if math.isnan(summary[n][key][1]) else summary[n][key][1] for n in names],
                fmt="o", capsize=4, label=label)
ax.set_xticks(range(len(names)), names)
ax.set_ylabel("nats per test example")
ax.set_title(f"Same model, four estimators: mean ± s.e. over {len(SEEDS)} seeds")
ax.grid(alpha=0.3, axis="y")
ax.legend()
fig.savefig(OUT / "log_likelihood.png", dpi=100)
plt.show()

# %% [markdown]
# ## Gradient signal-to-noise ratio
#
# `gradient_snr(model, guide, estimator, x, num_draws)` draws the estimator's gradient
# `num_draws` times on the batch `x` at the current parameters, and returns, for the
# encoder's (the guide's) and the decoder's (the model's) parameters, the SNR
# $|\mathbb{E}[g]| / \mathrm{std}[g]$ per parameter averaged over them, and the summed
# variance: `{"encoder": {"snr": ..., "variance": ...}, "decoder": {...}}`. It leaves no
# gradient behind.
#
# We measure at one fixed point, the seed-0 model trained by `meanfield`, so that the only
# thing that changes is the estimator and its $k$. `make_elbo(name, num_particles=k)` builds
# each estimator.
#
# One detail: `gradient_snr` reads the gradients off Pyro's parameter store, and each model
# registers its networks there under the same names (`encoder`, `decoder`). After several
# models have been trained and evaluated, the store holds the tensors of the last one, so
# we clear it first: the next call of the guide and model then registers this model's own.

# %%
pyro.clear_param_store()
vae = runs["meanfield", SEEDS[0]]["vae"]
x_snr = data.evaluation("train")[:SNR_BATCH]
snr = {}  # (estimator, k) -> the encoder's gradient SNR
snr_decoder = {}
for name in ("iwae", "iwae-dreg"):
    for k in SNR_KS:
        result = gradient_snr(vae.model, vae.guide, make_elbo(name, num_particles=k), x_snr,
                              SNR_DRAWS)
        snr[name, k] = result["encoder"]["snr"]
        snr_decoder[name, k] = result["decoder"]["snr"]
        print(f"{name:9s} k = {k:3d}: encoder SNR {snr[name, k]:.3f}, "
              f"decoder SNR {snr_decoder[name, k]:.3f}")


def slope(values, name):
    """Least-squares slope of log SNR against log k."""
    points = [(math.log(k), math.log(values[name, k])) for k in SNR_KS]
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    return (sum((a - mx) * (b - my) for a, b in points)
            / sum((a - mx) ** 2 for a, _ in points))


for name in ("iwae", "iwae-dreg"):
    b = slope(snr, name)
    trend = "rises" if b > 0.05 else "falls" if b < -0.05 else "stays about flat"
    said = {"iwae": "Rainforth et al. predict -0.5",
            "iwae-dreg": "Tucker et al. report a rising one"}[name]
    print(f"{name}: encoder SNR {trend} with k (log-log slope {b:+.2f}; {said})")
last = SNR_KS[-1]
print(f"at k = {last}, iwae-dreg's encoder SNR is {snr['iwae-dreg', last] / snr['iwae', last]:.2f}"
      " times iwae's")

numbers = dict(
    runs=[{"estimator": name, "seed": seed, **{key: run[key] for key in (
        "bound", "elbo", "log_likelihood", "seconds_per_epoch")}}
        for (name, seed), run in runs.items()],
    verdicts=[{"a": a, "b": b, "verdict": v} for (a, b), v in verdicts.items()],
    gradient_snr=[{"estimator": name, "k": k, "encoder": snr[name, k],
                   "decoder": snr_decoder[name, k]} for name, k in snr],
)
(OUT / "numbers.json").write_text(json.dumps(numbers, indent=1))
print(f"wrote {OUT / 'numbers.json'}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4))
for ax, values, group in ((axes[0], snr, "encoder"), (axes[1], snr_decoder, "decoder")):
    for name, colour in (("iwae", "tab:red"), ("iwae-dreg", "tab:green")):
        ax.plot(SNR_KS, [values[name, k] for k in SNR_KS], "o-", color=colour, label=name)
    anchor = values["iwae", SNR_KS[0]]
    power = -0.5 if group == "encoder" else 0.5
    ax.plot(SNR_KS, [anchor * (k / SNR_KS[0]) ** power for k in SNR_KS], ":", color="grey",
            label=f"k^{power:+.1f} (Rainforth et al.)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(SNR_KS, [str(k) for k in SNR_KS])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.set_xlabel("k (particles)")
    ax.set_ylabel("gradient SNR, mean over parameters")
    ax.set_title(f"{group} gradient, {SNR_DRAWS} draws on {SNR_BATCH} images")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "gradient_snr.png", dpi=100)
plt.show()

# %% [markdown]
# The decoder's gradient is the same estimator under `iwae` and `iwae-dreg` (DReG changes
# only the encoder's), so the right panel differs between them only by the draws. In the
# left panel the question is how the encoder SNR moves with $k$: the printed slopes say it
# for these numbers. The SNR here is averaged over every encoder parameter at one point of
# training; Rainforth et al.'s $O(1/\sqrt{k})$ is an asymptotic statement about each
# parameter, so the measured slope can be shallower. `experiments/gradient_snr.py` measures
# the same at more values of $k$, at the initial and the trained weights
# (`results/estimators/gradient_snr/README.md`).
#
# At $k = 1$ both estimators bound the plain ELBO: `iwae` is then `trace`'s estimator, and
# `iwae-dreg` the path-derivative one, which drops the score term whose expectation is
# zero; any difference between the two curves at $k = 1$ comes from that term alone.
#
# What to take away: `iwae-dreg` costs about what `iwae` costs per step (compare the
# seconds per epoch above) and changes only the encoder's gradient; whether the cleaner
# gradient shows up in the model after this much training is what the IS-K verdict of
# `iwae-dreg` against `iwae` above says. `meanfield` is the cheapest estimator of the plain
# ELBO wherever the KL has a closed form.
