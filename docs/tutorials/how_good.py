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
# # How good is my model, really?
#
# A trained VAE reports its test loss, the negative ELBO. That is a *lower bound* on the
# number we want, the held-out log-likelihood $\log p_\theta(x)$, and the bound can sit
# several nats below it, by an amount that differs from model to model. This tutorial
# trains one small VAE and then climbs a ladder of estimates of $\log p_\theta(x)$ on the
# same test images, each tighter and more expensive than the last:
#
# 1. the ELBO $\mathcal{L}[q]$;
# 2. importance sampling with $K$ draws from the encoder, IS-K, whose bound
#    $\mathcal{L}_K$ rises with $K$ (Burda, Grosse & Salakhutdinov, 2016);
# 3. annealed importance sampling, AIS (Neal, 2001; Wu, Burda, Salakhutdinov & Grosse,
#    2017), whose error we bracket by bidirectional Monte Carlo, BDMC (Grosse, Ghahramani &
#    Adams, 2015), on data simulated from the model.
#
# Then we ask where the missing nats go: how much of $\log p_\theta(x) - \mathcal{L}[q]$
# is the Gaussian family's fault, and how much the encoder's (Cremer, Li & Duvenaud,
# 2018).

# %%
import os

QUICK = os.environ.get("PYRO_VAE_QUICK") == "1"  # the test suite's size: seconds, not minutes

# Every size of this tutorial, here and nowhere else.
TRAIN = 500 if QUICK else None  # training images (None: all 60,000)
TEST = 100 if QUICK else None  # test images for the test loss during training (None: 10,000)
EPOCHS = 1 if QUICK else 10
EXAMPLES = 8 if QUICK else 100  # test images every estimate below is computed on
IS_KS = [1, 10, 100] if QUICK else [1, 10, 100, 1000, 5000]  # K of IS-K
CHAINS = 2 if QUICK else 8  # AIS chains per image
AIS_STEPS = [2, 4] if QUICK else [10, 100, 300]  # annealing steps of AIS on test images
BDMC_STEPS = [2, 4] if QUICK else [10, 30, 100, 300]  # annealing steps of BDMC
REFINE_STEPS = 10 if QUICK else 1000  # the most optimisation steps of refine
REFINE_DRAWS = 10 if QUICK else 100  # fresh draws per image for refine's two bounds
REFINE_WINDOW = None if QUICK else 100  # stop when the mean over this many steps stalls

# %%
import json
import logging
import math
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pyro

from pyro_vae import (
    VAE,
    Config,
    ais_log_likelihood,
    bdmc,
    elbo,
    fit,
    load_dataset,
    log_likelihood,
    refine,
)

logging.getLogger("pyro").setLevel(logging.WARNING)  # no "Guessed max_plate_nesting" lines

OUT = Path("runs/tutorials/how_good")  # everything this tutorial writes goes here
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A model to measure
#
# pyro-vae's base VAE: encoder 784-400 ReLU to the mean and scale of 50 latent dimensions,
# decoder 50-400-784 ReLU with a Bernoulli output, trained with `meanfield` (the ELBO with
# its Gaussian KL in closed form), Adam at learning rate $10^{-3}$, batches of 128, into
# the run directory `runs/tutorials/how_good/run` (so that it can be evaluated again later,
# `pyro-vae evaluate runs/tutorials/how_good/run`). The data are `mnist-binary`: MNIST
# binarized dynamically in training (a fresh Bernoulli draw of every batch), and read at
# one fixed draw (seed 0) whenever we evaluate, so every estimate below sees the same
# binary images.

# %%
data = load_dataset("mnist-binary").subset(train=TRAIN, test=TEST)
pyro.set_rng_seed(0)
vae = VAE(x_dim=784, z_dim=50, hidden=[400], activation="relu", likelihood="bernoulli")
config = Config(elbo="meanfield", epochs=EPOCHS, lr=1e-3, batch_size=128, seed=0)
run_dir = OUT / "run"
shutil.rmtree(run_dir, ignore_errors=True)  # fit refuses a folder that holds a run already
metrics = fit(vae.model, vae.guide, data, config, run_dir)
print(f"test loss after {EPOCHS} epoch(s): {metrics[-1]['test_loss']:.2f} nats per example "
      f"(negative ELBO, {data.x_test.shape[0]} test images)")

# %% [markdown]
# Everything from here on is computed on the first `EXAMPLES` test images, the same ones
# for every estimator, so that differences between estimators are paired: we report each
# estimator's mean over the images, and for comparisons the mean of the per-image
# differences with its standard error. (The images themselves differ by tens of nats, so
# an unpaired standard error would hide every difference that matters here.)

# %%
x = data.evaluation("test")[:EXAMPLES]  # the fixed binarization (seed 0)
n = x.shape[0]


def mean_se(t):
    """Mean over the images and its standard error."""
    return t.mean().item(), ((t.std() / math.sqrt(len(t))).item() if len(t) > 1 else math.nan)


# %% [markdown]
# ## Rung 1: the ELBO
#
# $$
# \begin{aligned}
# \mathcal{L}[q](x) &= \mathbb{E}_{q_\phi(z \mid x)}\big[\log p_\theta(x, z) - \log
# q_\phi(z \mid x)\big] \\
# &= \log p_\theta(x) - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\,
# p_\theta(z \mid x)\big) \;\le\; \log p_\theta(x).
# \end{aligned}
# $$
#
# The gap is exactly the KL divergence from the encoder's $q$ to the true posterior.
# `elbo(model, guide, data)` estimates the ELBO on a dataset's test split (closed-form KL);
# with `num_particles=100` the Monte Carlo noise of the reconstruction term is small.

# %%
elbo_value = elbo(vae.model, vae.guide, data.subset(test=EXAMPLES), num_particles=100)
print(f"ELBO: {elbo_value:.2f} nats per example ({n} test images)")

# %% [markdown]
# ## Rung 2: importance sampling, IS-K
#
# The encoder is a good proposal for importance sampling. With $z_1, \dots, z_K \sim
# q_\phi(z \mid x)$,
#
# $$
# \hat p_K(x) = \frac1K \sum_{k=1}^K \frac{p_\theta(x, z_k)}{q_\phi(z_k \mid x)}
# $$
#
# is an unbiased estimate of $p_\theta(x)$, and so by Jensen's inequality $\log \hat p_K$
# is a stochastic lower bound: $\mathcal{L}_K = \mathbb{E}[\log \hat p_K(x)]$ satisfies
# $\mathcal{L}_1 = \mathcal{L}[q] \le \mathcal{L}_K \le \mathcal{L}_{K+1} \le \log
# p_\theta(x)$, and $\mathcal{L}_K \to \log p_\theta(x)$ as $K \to \infty$ (Burda et al.,
# 2016, who report IS-5000). `log_likelihood(model, guide, x, K)` returns $\log \hat p_K$
# per image; it costs $K$ decoder passes per image.

# %%
is_ll = {}  # K -> per-image IS-K estimates
for k in IS_KS:
    start = time.perf_counter()
    is_ll[k] = log_likelihood(vae.model, vae.guide, x, k)
    mean, se = mean_se(is_ll[k] - is_ll[IS_KS[0]])
    print(f"IS-{k:<5d} log-likelihood: {is_ll[k].mean().item():8.2f} nats per example; "
          f"minus IS-{IS_KS[0]}: {mean:+.2f} ± {se:.2f}  ({time.perf_counter() - start:.1f} s)")
is_mean = {k: v.mean().item() for k, v in is_ll.items()}

# %%
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(IS_KS, [is_mean[k] for k in IS_KS], "o-", label="IS-K, $\\mathcal{L}_K$")
ax.axhline(elbo_value, color="tab:red", ls="--", label="ELBO, $\\mathcal{L}[q]$")
ax.set_xscale("log")
ax.set_xlabel("K, importance samples per image")
ax.set_ylabel("nats per example")
ax.set_title(f"$\\mathcal{{L}}_K$ rises with K ({n} test images, mnist-binary)")
ax.grid(alpha=0.3, which="both")
ax.legend()
fig.savefig(OUT / "is_k.png", dpi=100)
plt.show()

# %% [markdown]
# Typically each tenfold increase of $K$ buys less than the one before (compare the
# printed differences), but a flattening curve has not necessarily arrived: how far below
# $\log p_\theta(x)$ it flattens depends on how well $q$ covers the posterior. To see past
# it we need an estimator that does not rely on $q$ alone.
#
# ## Rung 3: annealed importance sampling
#
# AIS (Neal, 2001) moves samples from an initial distribution $q_0(z)$, here the encoder's
# $q_\phi(z \mid x)$, to the posterior along the geometric path
#
# $$
# f_t(z) = q_0(z)^{1 - \beta_t}\, p_\theta(x, z)^{\beta_t}, \qquad 0 = \beta_0 < \beta_1 <
# \dots < \beta_T = 1,
# $$
#
# with one transition at each step that leaves $f_t$ invariant (here Hamiltonian Monte
# Carlo, 5 leapfrog steps, its step size adapted toward an acceptance of 0.65), and
# accumulates the weight
#
# $$
# \log w = \sum_{t=1}^T (\beta_t - \beta_{t-1}) \big[\log p_\theta(x, z_{t-1}) - \log
# q_0(z_{t-1})\big].
# $$
#
# $w$ is an unbiased estimate of $p_\theta(x)$, so $\log \frac1C \sum_c w_c$ over $C$
# chains is again a stochastic lower bound, which tightens as the number of steps $T$
# grows, whatever $q_0$ is. The schedule of $\beta_t$ is the sigmoid one of Wu et al.
# (2017). `ais_log_likelihood(model, guide, x, steps, chains)` returns per image the
# estimate, the mean acceptance rate and the adapted step size. It costs about
# steps $\times$ chains $\times$ 6 decoder passes (forward and backward) per image: this is
# why we use only `EXAMPLES` images.

# %%
ais = {}  # steps -> per-image AIS estimates
top_is = is_ll[IS_KS[-1]]
for steps in AIS_STEPS:
    start = time.perf_counter()
    result = ais_log_likelihood(vae.model, vae.guide, x, steps=steps, chains=CHAINS)
    ais[steps] = result.log_likelihood
    mean, se = mean_se(ais[steps] - top_is)
    print(f"AIS, {steps:4d} steps x {CHAINS} chains: {ais[steps].mean().item():8.2f} nats per "
          f"example; minus IS-{IS_KS[-1]}: {mean:+.2f} ± {se:.2f}; acceptance "
          f"{result.acceptance.mean().item():.2f}  ({time.perf_counter() - start:.1f} s)")
ais_mean = {s: v.mean().item() for s, v in ais.items()}

best_ais = ais[AIS_STEPS[-1]]
d, se = mean_se(best_ais - top_is)
if d > 2 * se:
    print(f"AIS with {AIS_STEPS[-1]} steps is above IS-{IS_KS[-1]} by {d:.2f} ± {se:.2f} nats: "
          f"IS-{IS_KS[-1]} sits at least that far below log p(x) on these images")
elif d < -2 * se:
    print(f"AIS with {AIS_STEPS[-1]} steps is still {-d:.2f} ± {se:.2f} nats below "
          f"IS-{IS_KS[-1]}: too few steps to improve on importance sampling")
else:
    print(f"AIS with {AIS_STEPS[-1]} steps and IS-{IS_KS[-1]} agree: a tie ({d:+.2f} ± "
          f"{se:.2f} nats, inside two standard errors)")

# %% [markdown]
# ## How far is AIS from the truth? Bidirectional Monte Carlo
#
# AIS is still a lower bound, and a stalled estimate need not be a converged one. BDMC
# (Grosse et al., 2015; used for VAEs by Wu et al., 2017) brackets the truth from both
# sides, on data where we know an exact posterior sample: data simulated from the model.
# Draw $z \sim p(z)$ and $x \sim p_\theta(x \mid z)$; then $z$ is an exact sample of
# $p_\theta(z \mid x)$. Run AIS *backwards* from it ($\beta$ from 1 to 0): its weight is an
# unbiased estimate of $1/p_\theta(x)$, so its negated log-mean-exp is a stochastic
# **upper** bound. Forward AIS from the encoder gives the lower bound on the same $x$:
#
# $$
# \mathbb{E}[\log \hat p_{\rm forward}(x)] \;\le\; \log p_\theta(x) \;\le\;
# \mathbb{E}[\log \hat p_{\rm reverse}(x)].
# $$
#
# The gap between them bounds the error of forward AIS with that schedule, on data like
# these. `bdmc(model, guide, x_like, steps, chains)` simulates one image per row of
# `x_like` (whose values only stand in for the data's shape), with the same seed every
# call, so every schedule brackets the same simulated images.

# %%
brackets = {}  # steps -> (forward, reverse) per simulated image
for steps in BDMC_STEPS:
    start = time.perf_counter()
    result = bdmc(vae.model, vae.guide, x, steps=steps, chains=CHAINS)
    brackets[steps] = (result.forward, result.reverse)
    gap, gap_se = mean_se(result.gap)
    print(f"BDMC, {steps:4d} steps: forward {result.forward.mean().item():8.2f}, reverse "
          f"{result.reverse.mean().item():8.2f} nats per example, gap {gap:.3f} ± {gap_se:.3f}"
          f"  ({time.perf_counter() - start:.1f} s)")
bdmc_gap = {s: (r - f).mean().item() for s, (f, r) in brackets.items()}
closing = all(b <= a for a, b in zip(
    [bdmc_gap[s] for s in BDMC_STEPS], [bdmc_gap[s] for s in BDMC_STEPS[1:]], strict=False))
print(f"the bracket {'narrows at every' if closing else 'does not narrow at every'} step "
      f"count here: from {bdmc_gap[BDMC_STEPS[0]]:.3f} nats at {BDMC_STEPS[0]} steps to "
      f"{bdmc_gap[BDMC_STEPS[-1]]:.3f} at {BDMC_STEPS[-1]}")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
forward = [brackets[s][0].mean().item() for s in BDMC_STEPS]
reverse = [brackets[s][1].mean().item() for s in BDMC_STEPS]
left.plot(BDMC_STEPS, reverse, "v-", color="tab:orange", label="reverse AIS (upper bound)")
left.plot(BDMC_STEPS, forward, "^-", color="tab:blue", label="forward AIS (lower bound)")
left.fill_between(BDMC_STEPS, forward, reverse, color="grey", alpha=0.2)
left.set_xscale("log")
left.set_xticks(BDMC_STEPS, [str(s) for s in BDMC_STEPS])
left.tick_params(axis="x", which="minor", labelbottom=False)
left.set_xlabel("AIS steps")
left.set_ylabel("log p(x), nats per example")
left.set_title(f"BDMC on {n} images simulated from the model")
left.legend()
left.grid(alpha=0.3, which="both")
gaps_se = [mean_se(brackets[s][1] - brackets[s][0])[1] for s in BDMC_STEPS]
right.errorbar(BDMC_STEPS, [bdmc_gap[s] for s in BDMC_STEPS], yerr=gaps_se, marker="o",
               capsize=3)
right.axhline(0, color="black", lw=0.8)
right.set_xscale("log")
right.set_xticks(BDMC_STEPS, [str(s) for s in BDMC_STEPS])
right.tick_params(axis="x", which="minor", labelbottom=False)
right.set_yscale("symlog", linthresh=0.01)  # a gap closed into the noise may dip below 0
right.set_xlabel("AIS steps")
right.set_ylabel("reverse - forward, nats (± 1 s.e.)")
right.set_title("The width of the bracket")
right.grid(alpha=0.3, which="both")
fig.tight_layout()
fig.savefig(OUT / "bdmc.png", dpi=100)
plt.show()

# %% [markdown]
# Two cautions. The bracket is measured on the model's own samples: it bounds AIS's error
# on test images only as far as they look like those samples (Wu et al., 2017). And a
# closed bracket certifies the AIS *schedule*, not the model: a bad model can have a
# perfectly estimated, bad log-likelihood.
#
# ## Where the nats go: approximation and amortization
#
# The inference gap $\log p_\theta(x) - \mathcal{L}[q]$ has two causes (Cremer, Li &
# Duvenaud, 2018, "Inference Suboptimality in Variational Autoencoders"). Let $q^*_x$ be the
# best member of the encoder's family (a diagonal Gaussian) for this one image, found by
# optimising its mean and scale directly. Then
#
# $$
# \underbrace{\log p_\theta(x) - \mathcal{L}[q]}_{\text{inference gap}} =
# \underbrace{\log p_\theta(x) - \mathcal{L}[q^*_x]}_{\text{approximation gap}} +
# \underbrace{\mathcal{L}[q^*_x] - \mathcal{L}[q]}_{\text{amortization gap}}.
# $$
#
# The approximation gap is the family's fault: no diagonal Gaussian fits the posterior
# better. The amortization gap is the encoder's: one network computes every image's $q$,
# and it does not find each image's best. `refine(model, guide, x, steps, window=...)`
# optimises one Gaussian per image from the encoder's output (Adam, 10 reparameterized
# draws a step, stopped when the mean bound over `window` steps stops rising) and returns
# both bounds from `REFINE_DRAWS` fresh draws per image: `elbo` ($\mathcal{L}[q^*_x]$) and
# `amortized_elbo` ($\mathcal{L}[q]$). For $\log p_\theta(x)$ we take the AIS estimate
# with the most steps; as it is itself slightly below the truth, the approximation gap
# comes out slightly too small.

# %%
start = time.perf_counter()
refined = refine(vae.model, vae.guide, x, steps=REFINE_STEPS, window=REFINE_WINDOW,
                 eval_particles=REFINE_DRAWS)
print(f"refine: {refined.steps} steps ({time.perf_counter() - start:.1f} s)")
parts = {
    "inference": best_ais - refined.amortized_elbo,
    "approximation": best_ais - refined.elbo,
    "amortization": refined.elbo - refined.amortized_elbo,
}
gaps = {name: mean_se(t)[0] for name, t in parts.items()}
print(f"L[q]  (the encoder's q, {REFINE_DRAWS} draws): "
      f"{refined.amortized_elbo.mean().item():8.2f} nats per example")
print(f"L[q*] (refined per image, {REFINE_DRAWS} draws): {refined.elbo.mean().item():8.2f} nats "
      "per example")
print(f"log p(x) (AIS, {AIS_STEPS[-1]} steps):     {best_ais.mean().item():8.2f} nats per example")
for name, t in parts.items():
    mean, se = mean_se(t)
    print(f"{name} gap: {mean:.2f} ± {se:.2f} nats")
d, se = mean_se(parts["amortization"] - parts["approximation"])
which = ("a tie (inside two standard errors)" if not abs(d) > 2 * se else
         "the amortization gap is the larger" if d > 0 else "the approximation gap is the larger")
print(f"amortization - approximation: {d:+.2f} ± {se:.2f} nats: {which}")

# %%
fig, ax = plt.subplots(figsize=(5, 4))
ax.bar([0], [gaps["approximation"]], color="tab:blue", label="approximation gap")
ax.bar([0], [gaps["amortization"]], bottom=[gaps["approximation"]], color="tab:orange",
       label="amortization gap")
ax.set_xticks([0], [f"diagonal Gaussian encoder\n{EPOCHS} epoch(s)"])
ax.set_xlim(-1, 1)
ax.set_ylabel("nats per example")
ax.set_title(f"log p(x) - L[q] = {gaps['inference']:.2f} nats")
ax.legend()
ax.grid(alpha=0.3, axis="y")
fig.savefig(OUT / "gaps.png", dpi=100)
plt.show()

# %% [markdown]
# ## The ladder, side by side
#
# Every number is the mean over the same test images, nats per example, `mnist-binary` at
# its fixed evaluation binarization (seed 0).

# %%
ladder = [("ELBO, L[q] (elbo, 100 draws)", elbo_value)]
ladder += [(f"IS-{k} (log_likelihood)", is_mean[k]) for k in IS_KS]
ladder += [(f"AIS, {s} steps x {CHAINS} chains", ais_mean[s]) for s in AIS_STEPS]
for label, value in ladder:
    print(f"{label:34s} {value:8.2f}")
print(f"ELBO to best AIS: {ais_mean[AIS_STEPS[-1]] - elbo_value:.2f} nats")
numbers = dict(examples=n, elbo=elbo_value, is_k=is_mean, ais=ais_mean, chains=CHAINS,
               bdmc_gap=bdmc_gap, gaps=gaps)
(OUT / "numbers.json").write_text(json.dumps(numbers, indent=1))
print(f"wrote {OUT / 'numbers.json'}")

# %% [markdown]
# What to take away: the test loss a training run prints is the bottom rung. For comparing
# models, report an IS-K log-likelihood with a large $K$ (as Burda et al., 5000) on the same
# images for every model; where the numbers matter, check it against AIS, and check AIS's
# schedule with BDMC. The package's own studies of these questions, at larger sizes, are
# in `results/ais/README.md` (`experiments/ais.py`) and `results/inference_gap/README.md`
# (`experiments/inference_gap.py`).
