r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC): log-likelihoods
whose error can be bracketed.

Importance sampling with the guide as proposal (:func:`pyro_vae.log_likelihood`) is a
stochastic lower bound whose gap depends on the guide. AIS (Neal, 2001) instead moves
samples along the geometric path between an initial distribution :math:`q_0(z)` (the
guide's :math:`q(z \mid x)`, or the prior) and the posterior :math:`p(z \mid x) \propto
p(x, z)`:

.. math:: f_t(z) = q_0(z)^{1 - \beta_t}\, p(x, z)^{\beta_t}, \qquad
          0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

with a transition that leaves :math:`f_t` invariant at each step (here Hamiltonian Monte
Carlo: a fresh Gaussian momentum, ``leapfrog`` steps of Pyro's velocity Verlet integrator,
a Metropolis test), and the weight

.. math:: \log w = \sum_{t=1}^{T} (\beta_t - \beta_{t-1})
          \left[\log p(x, z_{t-1}) - \log q_0(z_{t-1})\right],

an unbiased estimate of :math:`p(x)`: :math:`\log \frac1C \sum_c w_c` over ``chains`` is a
stochastic lower bound that tightens as the steps grow. The schedule is the sigmoid one of
Wu, Burda, Salakhutdinov & Grosse (2017), "On the Quantitative Analysis of Decoder-Based
Generative Models"; each example's leapfrog step size adapts toward an acceptance rate of
0.65 (Wu et al. do the same; it is adapted on the chains' past only).

BDMC (Grosse, Ghahramani & Adams, 2015): on data simulated from the model, the ``z`` that
generated ``x`` is an exact posterior sample. AIS run backwards from it (``beta`` from 1 to
0) estimates :math:`1 / p(x)`, so its negated log-mean-exp is a stochastic *upper* bound.
Forward and reverse bracket the true :math:`\log p(x)`; their gap bounds the error of
forward AIS with the same schedule on data like these.

Any model/guide pair works whose latent sites are real-valued and lie in the data plate,
as for :func:`pyro_vae.log_likelihood`; examples and chains run batched, in one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from pyro.ops.integrator import velocity_verlet
from tqdm import tqdm

from .evaluate import latent_dims
from .memory import reuse_freed_memory
from .traces import data_dim, data_plate, log_prob_per_site, plate_nesting, sample_sites

_CHAINS = "_ais_chains"
INITIAL = ("guide", "prior")
ADAPT = 1.1  # the step grows by this after a step accepted above the target, else shrinks


class AIS(NamedTuple):
    """Per-example results, shape ``(N,)``."""

    log_likelihood: torch.Tensor  # log-mean-exp of the chains' weights
    acceptance: torch.Tensor  # mean Metropolis acceptance over chains and steps
    step_size: torch.Tensor  # the leapfrog step size it adapted to


class BDMC(NamedTuple):
    """Per simulated example, shape ``(N,)``: forward AIS (a stochastic lower bound),
    reverse AIS from the exact posterior sample (a stochastic upper bound), and ``x``."""

    forward: torch.Tensor
    reverse: torch.Tensor
    x: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        return self.reverse - self.forward


def sigmoid_schedule(steps: int, delta: float = 4.0) -> torch.Tensor:
    r""":math:`\beta_0 = 0, \dots, \beta_T = 1`: :math:`\sigma(\delta (2t/T - 1))`, rescaled
    to run from exactly 0 to 1 (Wu et al., 2017); ``steps + 1`` values, float64."""
    t = torch.linspace(-delta, delta, steps + 1, dtype=torch.float64)
    s = torch.sigmoid(t)
    return (s - s[0]) / (s[-1] - s[0])


def ais_log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 5,
    initial: str = "guide",
    step_size: float = 0.05,
    target_acceptance: float = 0.65,
    seed: int = 0,
    plate: str | None = None,
    progress: bool = False,
) -> AIS:
    """AIS estimates of :math:`\\log p(x)` for every row of ``x`` (see the module's text):
    ``chains`` independent chains per example, ``steps`` annealing steps of HMC with
    ``leapfrog`` integrator steps, from the ``initial`` distribution (``"guide"`` or
    ``"prior"``). Draws come from ``seed``; the caller's random state is left as it was."""
    _check(steps, chains, leapfrog, initial)
    reuse_freed_memory()  # chains x batch x D temporaries would otherwise page-fault afresh
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        pyro.set_rng_seed(seed)
        path = _Path(model, guide, x, chains, initial, plate)
        z = path.initial_sample()
        return _anneal(path, z, sigmoid_schedule(steps), leapfrog, step_size,
                       target_acceptance, progress, f"AIS, {steps} steps")


def bdmc(
    model: Callable,
    guide: Callable,
    x_like: torch.Tensor,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 5,
    initial: str = "guide",
    step_size: float = 0.05,
    target_acceptance: float = 0.65,
    seed: int = 0,
    plate: str | None = None,
    progress: bool = False,
) -> BDMC:
    """Bidirectional Monte Carlo on data simulated from ``model``: one ``x`` per row of
    ``x_like`` (whose values only stand in for the data the model is called with), drawn
    with its ``z`` kept; forward AIS on ``x``, and reverse AIS from that ``z``."""
    _check(steps, chains, leapfrog, initial)
    with torch.random.fork_rng(devices=[x_like.device] if x_like.is_cuda else []):
        pyro.set_rng_seed(seed)
        x, z_exact = _simulate(model, x_like)
        schedule = sigmoid_schedule(steps)
        path = _Path(model, guide, x, chains, initial, plate)
        forward = _anneal(path, path.initial_sample(), schedule, leapfrog, step_size,
                          target_acceptance, progress, f"BDMC forward, {steps} steps")
        z = {name: value.expand(chains, *value.shape[1:]).clone()
             for name, value in z_exact.items()}
        reverse = _anneal(path, z, schedule.flip(0), leapfrog, step_size,
                          target_acceptance, progress, f"BDMC reverse, {steps} steps")
    return BDMC(forward.log_likelihood, -reverse.log_likelihood, x)


def _check(steps: int, chains: int, leapfrog: int, initial: str) -> None:
    for name, value in (("steps", steps), ("chains", chains), ("leapfrog", leapfrog)):
        if value < 1:
            raise ValueError(f"AIS needs {name} >= 1, got {value}")
    if initial not in INITIAL:
        raise ValueError(f"unknown initial distribution {initial!r}; choose from: "
                         f"{', '.join(INITIAL)}")


class _Path:
    r"""The log-densities of the geometric path for a batch ``x``, per (chain, example):
    :math:`\log q_0(z)` and :math:`\log p(x, z)`, the chains in a plate of their own."""

    def __init__(self, model, guide, x, chains, initial, plate):
        self.model, self.guide, self.x = model, guide, x
        plate = plate or data_plate(model, guide, x[: min(len(x), 3)])
        self.chains, self.initial, self.plate = chains, initial, plate
        self.nesting = plate_nesting(model, guide, x[:1])
        with torch.no_grad(), self._chains():
            trace = poutine.trace(guide).get_trace(x)
        self.sites = {}  # latent site -> the (negative) dimension of its examples
        for name, site in sample_sites(trace):
            support = site["fn"].support
            while isinstance(support, constraints.independent):
                support = support.base_constraint
            if support is not constraints.real:
                raise ValueError(f"AIS moves real-valued latents, and site {name!r} has "
                                 f"support {site['fn'].support}")
            self.sites[name] = data_dim(site, name, plate) - site["fn"].event_dim

    def _chains(self):
        return pyro.plate(_CHAINS, self.chains, dim=-self.nesting - 1)

    def initial_sample(self) -> dict[str, torch.Tensor]:
        """``chains`` draws per example from :math:`q_0`."""
        with torch.no_grad(), self._chains():
            if self.initial == "guide":
                trace = poutine.trace(self.guide).get_trace(self.x)
            else:
                trace = poutine.trace(self.model).get_trace(self.x)
        return {name: trace.nodes[name]["value"].detach() for name in self.sites}

    def log_densities(self, z: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(:math:`\\log q_0(z)`, :math:`\\log p(x, z)`), each ``(chains, N)``."""
        with self._chains():
            model_trace = poutine.trace(poutine.condition(self.model, data=z)).get_trace(self.x)
            log_joint, log_prior = self._per_point(model_trace)
            if self.initial == "prior":
                return log_prior, log_joint
            guide_trace = poutine.trace(poutine.condition(self.guide, data=z)).get_trace(self.x)
            return self._per_point(guide_trace)[0], log_joint

    def _per_point(self, trace):
        """The trace's log-probabilities summed per (chain, example): all sites, and the
        latent sites alone."""
        per_site = log_prob_per_site(trace, self.plate)
        return (sum(per_site.values()),
                sum(log_p for name, log_p in per_site.items() if name in self.sites))

    def step_shape(self, step: torch.Tensor, name: str) -> torch.Tensor:
        """The per-example step sizes ``(N,)``, shaped to broadcast against site ``name``."""
        return step.reshape(step.shape[0], *[1] * (-self.sites[name] - 1))


def _anneal(path: _Path, z, schedule, leapfrog, step_size, target, progress, what) -> AIS:
    n = path.x.shape[0]
    step = path.x.new_full((n,), step_size)
    log_w = path.x.new_zeros(path.chains, n)
    accepted = path.x.new_zeros(n)
    with torch.no_grad():
        log_q, log_p = path.log_densities(z)
    betas = schedule.tolist()
    for t in tqdm(range(1, len(betas)), desc=what, unit="step", disable=not progress):
        beta, previous = betas[t], betas[t - 1]
        log_w += (beta - previous) * (log_p - log_q)
        z, log_q, log_p, acceptance = _hmc(path, z, log_q, log_p, beta, step, leapfrog)
        mean = acceptance.mean(0)
        accepted += mean
        step = torch.where(mean > target, step * ADAPT, step / ADAPT).clamp(1e-4, 2.0)
    ll = torch.logsumexp(log_w, dim=0) - math.log(path.chains)
    return AIS(ll, accepted / (len(betas) - 1), step)


def _hmc(path: _Path, z, log_q, log_p, beta, step, leapfrog):
    """One HMC transition leaving :math:`f_\\beta` invariant, every chain and example at
    once; returns the new state, its log-densities and the acceptance probabilities."""
    last = {}

    def potential(z_):
        q, p = path.log_densities(z_)
        last["q"], last["p"] = q.detach(), p.detach()
        return -((1 - beta) * q + beta * p).sum()

    r = {name: torch.randn_like(value) for name, value in z.items()}
    steps = {name: path.step_shape(step, name) for name in z}
    # velocity_verlet takes one step size; per-example sizes scale the momenta's units:
    # one leapfrog step of size s_n in z is one of size 1 in (z, s_n r), so integrate
    # with step 1 on s-scaled gradients, site by site.
    z_new, r_new = _leapfrog(path, z, r, potential, steps, leapfrog)
    energy_old = -((1 - beta) * log_q + beta * log_p) + _kinetic(r, path)
    energy_new = -((1 - beta) * last["q"] + beta * last["p"]) + _kinetic(r_new, path)
    log_accept = (energy_old - energy_new).nan_to_num(nan=-math.inf).clamp(max=0.0)
    accept = torch.rand_like(log_accept).log() < log_accept
    z_next = {}
    for name, value in z.items():
        keep = _shape_like(accept, value, path.sites[name])
        z_next[name] = torch.where(keep, z_new[name], value)
    log_q = torch.where(accept, last["q"], log_q)
    log_p = torch.where(accept, last["p"], log_p)
    return z_next, log_q, log_p, log_accept.exp()


def _leapfrog(path, z, r, potential, steps, leapfrog):
    """``leapfrog`` velocity-Verlet steps with a step size per example: Pyro's integrator
    with the momentum and gradient of each site scaled by its step (see :func:`_hmc`)."""

    def scaled_potential(u):  # u = z / s: the same point, in units of each example's step
        return potential({name: u[name] * steps[name] for name in u})

    u = {name: value / steps[name] for name, value in z.items()}
    u, r_new, _, _ = velocity_verlet(u, dict(r), scaled_potential, lambda r_: r_, 1.0, leapfrog)
    return {name: u[name].detach() * steps[name] for name in u}, r_new


def _kinetic(r: dict, path: _Path) -> torch.Tensor:
    """:math:`\\tfrac12 \\|r\\|^2` per (chain, example)."""
    total = 0.0
    for name, value in r.items():
        squares = (value**2).movedim(path.sites[name], -1)
        total = total + squares.reshape(squares.shape[0], -1, squares.shape[-1]).sum(1)
    return 0.5 * total


def _shape_like(accept: torch.Tensor, value: torch.Tensor, data_dim: int) -> torch.Tensor:
    """``accept`` ``(chains, N)`` broadcast against a site's ``value``."""
    return accept.reshape(*accept.shape, *[1] * (-data_dim - 1))


def _simulate(model, x_like) -> tuple[torch.Tensor, dict]:
    """One draw ``(x, z)`` of the model's joint per row of ``x_like``: ``x`` from its observed
    site, ``z`` with a leading chain dimension of 1."""
    latents = latent_dims(model, x_like)
    with torch.no_grad():
        trace = poutine.trace(poutine.uncondition(model)).get_trace(x_like)
    observed = [name for name, _ in sample_sites(trace) if name not in latents]
    if len(observed) != 1:
        raise ValueError(f"BDMC simulates the model's one observed site; it has {observed}")
    x = trace.nodes[observed[0]]["value"]
    z = {name: trace.nodes[name]["value"].unsqueeze(0) for name in latents}
    return x, z
