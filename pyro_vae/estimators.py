r"""ELBO estimators by name, as configured ``pyro.infer`` objects.

Every estimator bounds :math:`\log p(x)` from below and returns, from ``loss`` and
``loss_and_grads``, the *negative* bound summed over the data plate (nats).

================== ==============================================================================
``trace``          ``Trace_ELBO``: Monte Carlo ELBO; the KL term is estimated by sampling
                   (Kingma & Welling, 2014; Ranganath et al., 2014).
``meanfield``      ``TraceMeanField_ELBO``: the KL term in closed form where one is known
                   (Gaussian guide against Gaussian prior), by sampling otherwise.
``graph``          ``TraceGraph_ELBO``: Rao-Blackwellized score-function terms for sites that
                   cannot be reparameterized (Schulman et al., 2015), minus the baseline the
                   guide gives the site (``infer={"baseline": ...}``; the built-in VAE's
                   discrete guides carry a learned one).
``enum``           ``TraceEnum_ELBO``: every discrete guide site is summed out exactly, in
                   parallel over its values (``config_enumerate`` applied here), instead of
                   sampled (Obermeyer et al., 2019, "Tensor Variable Elimination for Plated
                   Factor Graphs"); a discrete site without a finite support that can be
                   enumerated (a code of several groups, C**G values) is refused by name.
``vimco``          the importance-weighted bound for discrete guides, the score-function
                   gradient with leave-one-out baselines (Mnih & Rezende, 2016;
                   :class:`pyro_vae.iwae.VIMCO`).
``gumbel``         discrete guide sites relaxed to Gumbel-Softmax (Concrete) draws at an
                   annealed temperature, the discrete bound reported (Jang, Gu & Poole, 2017;
                   :mod:`pyro_vae.relaxed`); ``gumbel-st`` is its straight-through form.
``iwae``           the importance-weighted bound
                   :math:`\mathcal{L}_k = \mathbb{E}\log\frac1k\sum_i p(x,z_i)/q(z_i|x)`
                   of each data point (Burda, Grosse & Salakhutdinov, 2016); k is
                   ``num_particles``. This and the next four are our own
                   (:mod:`pyro_vae.iwae`), computed per data point and right under
                   ``poutine.scale``, which Pyro's ``RenyiELBO`` is not.
``renyi``          the variational Renyi bound of order ``alpha`` (Li & Turner, 2016).
``iwae-dreg``      :math:`\mathcal{L}_k` with doubly reparameterized guide gradients
                   (Tucker, Lawson, Gu & Maddison, 2019).
``stl``            sticking the landing: the guide's score term dropped (Roeder, Wu &
                   Duvenaud, 2017), for k = 1 and for k particles.
``tail-adaptive``  gradients of the tail-adaptive f-divergence, particles ranked within each
                   data point (Wang, Liu & Liu, 2018); reports the ELBO of its particles.
``semi-amortized`` the ELBO at q refined ``refine_steps`` steps per example, the encoder's
                   gradient through the steps (Kim et al., 2018; :mod:`pyro_vae.semi_amortized`).
================== ==============================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pyro.poutine as poutine
import torch
from pyro.infer import (
    ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)

from . import iwae
from .engine import Captured
from .relaxed import GumbelSoftmaxELBO
from .semi_amortized import SemiAmortizedELBO
from .traces import sample_sites


class Enumerated(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` with every discrete guide site marked for parallel enumeration
    (sites the guide marked itself keep their marks); a discrete site that cannot be
    enumerated is refused by name at the first step, not scored silently."""

    def _get_traces(self, model, guide, args, kwargs):
        guide = config_enumerate(guide, default="parallel")
        if not getattr(self, "_checked", False):
            self._check(guide, args, kwargs)
        return super()._get_traces(model, guide, args, kwargs)

    def _check(self, guide, args, kwargs):
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
        for name, site in sample_sites(trace):
            if site["is_observed"] or site["fn"].has_rsample:
                continue
            if site["infer"].get("enumerate") is None:
                shape = tuple(site["fn"].event_shape)
                raise ValueError(
                    f"enum sums each discrete site over its values, and guide site {name!r} "
                    f"({type(site['fn']).__name__}, event shape {shape}) is one joint code "
                    "that it cannot enumerate (G one-hot groups of C classes have C**G joint "
                    "values, D binary units 2**D; a categorical latent of one group can be "
                    "summed out); train it with 'graph', 'vimco' or 'gumbel'")
        self._checked = True


def describe(elbo: ELBO) -> str:
    """One line naming an estimator object and its options, recorded in a run directory;
    a captured estimator is named as the estimator it steps (capture changes no number)."""
    if isinstance(elbo, Captured):
        elbo = elbo.elbo
    options = {"num_particles": elbo.num_particles,
               "vectorize_particles": elbo.vectorize_particles}
    if getattr(elbo, "alpha", None) is not None:
        options["alpha"] = elbo.alpha
    if isinstance(elbo, SemiAmortizedELBO):
        options["refine_steps"] = elbo.steps
    if isinstance(elbo, GumbelSoftmaxELBO):
        options["straight_through"] = elbo.straight_through
        options["temperature"] = f"'{elbo.temperature}'"
    return f"{type(elbo).__name__}({', '.join(f'{k}={v}' for k, v in options.items())})"


ESTIMATORS: dict[str, str] = {
    "trace": "Trace_ELBO, KL by sampling",
    "meanfield": "TraceMeanField_ELBO, analytic KL",
    "graph": "TraceGraph_ELBO, Rao-Blackwellized score function",
    "enum": "TraceEnum_ELBO, enumerated discrete sites summed out exactly",
    "iwae": "importance-weighted bound per data point, k = particles",
    "renyi": "variational Renyi bound of order alpha, per data point",
    "iwae-dreg": "importance-weighted bound, doubly reparameterized guide gradients",
    "stl": "sticking the landing: the guide's score term dropped (k = particles)",
    "tail-adaptive": "tail-adaptive f-divergence, particles ranked per data point",
    "semi-amortized": "ELBO at q refined refine_steps natural-gradient steps, through them",
    "vimco": "importance-weighted bound, score function with leave-one-out baselines",
    "gumbel": "discrete sites relaxed to Gumbel-Softmax draws, annealed temperature",
    "gumbel-st": "gumbel, straight-through: the decoder sees the hard code",
}
_PLAIN = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "graph": TraceGraph_ELBO,
          "enum": Enumerated}
_WEIGHTED = {"iwae": iwae.ImportanceWeightedELBO, "renyi": iwae.RenyiELBO,
             "iwae-dreg": iwae.DReG, "stl": iwae.StickingTheLanding,
             "tail-adaptive": iwae.TailAdaptiveELBO, "vimco": iwae.VIMCO}


def make_elbo(
    name: str,
    num_particles: int = 1,
    vectorize_particles: bool = True,
    jit: bool = False,
    alpha: float | None = None,
    refine_steps: int | None = None,
    compile: bool = False,
) -> ELBO:
    """The estimator registered as ``name``, configured; impossible combinations raise
    ``ValueError`` saying why. Vectorizing a single particle is a no-op. ``refine_steps``
    is K of ``semi-amortized`` (default 5). ``jit``: stepped by its captured graph
    (:class:`pyro_vae.engine.Captured`; an estimator that cannot be captured says why and
    steps eagerly), through ``torch.compile`` with ``compile``.

    Example:

    >>> from pyro_vae import make_elbo
    >>> type(make_elbo("iwae", num_particles=5)).__name__
    'ImportanceWeightedELBO'
    >>> make_elbo("iwea")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown estimator 'iwea'; choose from: trace, meanfield, graph, enum, iwae, ...
    """
    if compile and not jit:
        raise ValueError("compile=True compiles the captured step: it needs jit=True")
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose from: {', '.join(ESTIMATORS)}")
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    if alpha is not None and name != "renyi":
        raise ValueError(
            f"alpha is an option of 'renyi' only, not of {name!r} ('iwae' is renyi with alpha=0)"
        )
    if name == "renyi" and (alpha is None or alpha == 1 or not alpha >= 0):
        raise ValueError(
            f"renyi needs an alpha of at least 0 other than 1 (got {alpha}); alpha=0 is 'iwae', "
            "alpha=1 is the standard ELBO ('trace'), and below 0 the Renyi bound is an upper "
            "bound of log p(x), not a lower bound (Li & Turner, 2016)"
        )
    if refine_steps is not None and name != "semi-amortized":
        raise ValueError(f"refine_steps is an option of 'semi-amortized' only, not of {name!r}")
    if name in _WEIGHTED and num_particles > 1 and not vectorize_particles:
        raise ValueError(f"{name!r} weighs each data point's k particles against each other, "
                         "so it draws them together: it needs vectorized particles")
    options = dict(
        num_particles=num_particles,
        # graph's baselines are one number per data point (Pyro compares their shape with
        # the learning signal's), so its particles are drawn one by one
        vectorize_particles=vectorize_particles and num_particles > 1 and name != "graph",
    )
    if name == "renyi":
        elbo = iwae.RenyiELBO(num_particles, alpha=alpha)
    elif name == "semi-amortized":
        elbo = SemiAmortizedELBO(5 if refine_steps is None else refine_steps, num_particles)
    elif name in ("gumbel", "gumbel-st"):
        if num_particles != 1:
            raise ValueError(f"{name!r} takes one relaxed draw per data point and step (as "
                             f"Jang et al.), not {num_particles} particles")
        elbo = GumbelSoftmaxELBO(straight_through=name == "gumbel-st")
    elif name in _WEIGHTED:
        elbo = _WEIGHTED[name](num_particles)
    else:
        elbo = _PLAIN[name](**options)
    return Captured(elbo, compile) if jit else elbo


@torch.no_grad()
def mean_loss(
    elbo: ELBO, model: Callable, guide: Callable, batches: Iterable
) -> float:
    """The estimator's negative bound averaged over every example of ``batches`` (nats);
    a batch is ``x`` or the model's arguments ``(x, y)``."""
    total, n = 0.0, 0
    for batch in batches:
        args = batch if isinstance(batch, tuple) else (batch,)
        total += elbo.loss(model, guide, *args)
        n += args[0].shape[0]
    return total / n
