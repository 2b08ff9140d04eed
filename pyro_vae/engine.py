r"""The engine: every estimator's training step as one captured tensor function.

A Pyro step does two kinds of work: the tensor operations of the estimator (networks,
log-densities, the bound and its gradient) and Python around them (messengers, traces,
distribution objects), which at a small batch costs as much again on a CPU
(benchmarks/README.md). :class:`Captured` keeps the first and drops the second:

1. **Learn the model and guide once per batch shape**, after Pyro has stepped it
   ``warmup`` times (50; a shape stepped fewer times, as in a test's run, does not repay
   its capture; with ``compile``, which is for long runs, at once). The estimator's
   *objective* (its loss and surrogate loss as tensors, :func:`objective_of`) is run once
   on the batch under
   ``torch.fx.experimental.proxy_tensor.make_fx``: Pyro traces the guide and replays the
   model on its draws (``poutine.trace``/``poutine.replay``) as always, and every tensor
   operation on the way, with the gradient of the surrogate loss (``torch.autograd.grad``,
   so gradient hooks and custom backward functions are recorded too), lands in one graph:

   .. math:: (\theta, \phi, x) \;\mapsto\; \big(-\hat{\mathcal L}(x),\;
             \nabla_{\theta,\phi}\, \text{surrogate}(x)\big).

   The parameters are the graph's inputs (the param store's unconstrained tensors), so the
   graph is a pure function: no Pyro, no messengers, no ``.item()`` inside.
2. **Check it against Pyro.** The graph and the estimator's own eager ``loss_and_grads``
   are run from the same random state; they must agree (loss to 1e-5, gradients to 1e-3 of
   their norm). Then the graph draws exactly what eager Pyro draws: a captured run and an
   eager one are the same run.
3. **Step with the graph**, eager (its operations called one by one; autograd is not
   involved) or, with ``compile=True``, through ``torch.compile`` (inductor; random draws
   left to torch's own generator, ``fallback_random``, so that they stay the same).

Capturing runs on a forked random stream and leaves no gradient behind: the caller's
random state is untouched, so resuming a run is exact.

What cannot be captured steps eagerly through the estimator itself, after one warning
saying why (:class:`EagerFallback`): an estimator without a tensor objective (``graph``'s
decaying baselines, ``gumbel``'s changing temperature, ``semi-amortized``'s inner
optimization), a model that reads a tensor's value in Python (``.item()``, ``if`` on a
tensor), or a graph that does not reproduce Pyro's step. A model whose Python changes
between steps without reading a tensor (an annealing factor given as a float) is frozen at
its first value: capture is for static models, as every trace-based compiler.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence
from torch.fx.experimental.proxy_tensor import make_fx

from .traces import replayed, sample_sites

Objective = Callable[..., tuple[torch.Tensor, torch.Tensor]]


class EagerFallback(UserWarning):
    """An estimator that the engine could not capture steps eagerly; the message says why."""


class Captured(ELBO):
    """``elbo`` stepped by its captured graph (see the module's text); ``loss`` (the test
    loss, evaluation) is the estimator's own. Attributes it does not define are the
    estimator's (a temperature's ``state_dict``)."""

    def __init__(self, elbo: ELBO, compile: bool = False, warmup: int | None = None):
        super().__init__(num_particles=elbo.num_particles,
                         vectorize_particles=elbo.vectorize_particles)
        self.elbo = elbo
        self.compile = compile
        # Pyro's steps on a batch shape before it is captured: capturing costs about as
        # much as a few hundred steps save, so a shape stepped a few times (a test's run,
        # the last batch of a short run) is not worth it; a compiled run is a long one.
        self.warmup = (0 if compile else 50) if warmup is None else warmup
        self.eager_reason: str | None = None  # why it steps eagerly, once it does
        self._steps: dict[tuple, Callable | None] = {}

    def __getattr__(self, name):  # called for what this object does not define
        if name == "elbo":
            raise AttributeError(name)
        return getattr(self.elbo, name)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        return self.elbo.loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        if kwargs or self.eager_reason is not None:
            return self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        key = (model, guide, *((a.shape, a.dtype, a.device) for a in args))
        step = self._steps.get(key, 0)
        if isinstance(step, int):  # the steps Pyro has taken on batches of this shape
            if step < self.warmup:
                self._steps[key] = step + 1
                return self.elbo.loss_and_grads(model, guide, *args)
            step = self._steps[key] = self._capture(model, guide, args)
        if step is None:
            return self.elbo.loss_and_grads(model, guide, *args)
        return step(*args)

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("a captured estimator steps by its graph: see loss_and_grads")

    # ------------------------------------------------------------------ capture

    def _capture(self, model: Callable, guide: Callable, args: tuple) -> Callable | None:
        """The step for batches shaped as ``args``, or None (after a warning) where the
        estimator cannot be captured."""
        objective = objective_of(self.elbo, model, guide, args)
        if isinstance(objective, str):
            return self._eager(objective)
        devices = _cuda(args)
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self.elbo.loss(model, guide, *args)  # the estimator's one-off guesses (its plate
            # nesting), which draw, made before the reference and outside the graph; and
            # the parameters, if this is the first call
        named = dict(pyro.get_param_store().named_parameters())
        names, leaves = list(named), list(named.values())
        with torch.random.fork_rng(devices=devices), _grads_kept(leaves):  # the reference
            eager_loss = self.elbo.loss_and_grads(model, guide, *args)
            eager = [p.grad for p in leaves]
        try:
            with (torch.random.fork_rng(devices=devices), pyro.validation_enabled(False),
                  warnings.catch_warnings()):
                warnings.simplefilter("ignore")  # the tracer's notices; Pyro's on the way
                step = _joint(objective, names, leaves, args, self.compile)
        except RuntimeError as e:
            if "_local_scalar_dense" not in str(e) and "data-dependent" not in str(e):
                raise
            return self._eager("the model, guide or estimator reads a tensor's value in "
                               "Python (.item(), or an if on a tensor), which a captured "
                               "graph would freeze")
        with torch.random.fork_rng(devices=devices), _grads_kept(leaves):
            loss = step(*args)  # from the state Pyro's step began at
            grads = [p.grad for p in leaves]
        mismatch = _differences(loss, dict(zip(leaves, grads, strict=True)), eager_loss,
                                dict(zip(leaves, eager, strict=True)))
        if mismatch is not None:
            return self._eager(f"its captured graph does not reproduce Pyro's step ({mismatch})")
        return step

    def _eager(self, reason: str) -> None:
        self.eager_reason = reason
        warnings.warn(f"{type(self.elbo).__name__} steps eagerly through Pyro: {reason}",
                      EagerFallback, stacklevel=4)
        return None


def _joint(objective: Objective, names: list[str], leaves: list[torch.Tensor], args: tuple,
           compile: bool) -> Callable[..., float]:
    """The step as one graph of the loss and the gradients (``torch.autograd.grad`` traced
    through, hooks and custom backward functions included), run without autograd: the very
    operations of Pyro's eager step, so that, uncompiled, a captured run is the eager run to
    the last bit and a run resumed at any epoch ends where the straight run ends. (A graph
    of the loss alone, differentiated by autograd at each step, rounds its gradients
    otherwise, through the custom backward functions it cannot hold: resumed runs then
    differed in the last bits.)"""
    used: list[bool] = []

    def joint(leaves: list[torch.Tensor], *args: torch.Tensor):
        loss, surrogate = objective(*args)
        grads = torch.autograd.grad(surrogate, leaves, allow_unused=True)
        used[:] = [g is not None for g in grads]
        return loss.detach(), [g for g in grads if g is not None]

    graph = make_fx(joint)(leaves, *args)
    function = _compiled(graph) if compile else graph
    graded = [p for p, u in zip(leaves, used, strict=True) if u]

    def step(*args: torch.Tensor) -> float:
        current = dict(pyro.get_param_store().named_parameters())
        with torch.no_grad():
            loss, grads = function([current[n] for n in names], *args)
        for p, g in zip(graded, grads, strict=True):
            if p.grad is None:
                p.grad = g
            else:
                p.grad += g
        return loss.item()

    return step


def _compiled(graph: torch.fx.GraphModule) -> Callable:
    """``graph`` through torch.compile (inductor), its random draws left to torch's own
    generator (``fallback_random``), so that they are the eager step's."""
    return torch.compile(graph, dynamic=False, options={"fallback_random": True})


def _differences(loss: float, grads: dict, eager_loss: float, eager: dict) -> str | None:
    """How the graph's loss and gradients differ from Pyro's, or None: loss to 1e-5,
    each gradient to 1e-3 of its norm."""
    if not math.isclose(loss, eager_loss, rel_tol=1e-5, abs_tol=1e-4):
        return f"loss {loss} against {eager_loss}"
    for p, e in eager.items():
        g = grads.get(p)
        e = torch.zeros_like(p) if e is None else e
        g = torch.zeros_like(p) if g is None else g
        gap, norm = (g - e).norm().item(), e.norm().item()
        if not gap <= 1e-3 * norm + 1e-6:
            return f"a gradient of shape {tuple(p.shape)} differs by {gap:.3g} in norm ({norm:.3g})"
    return None


@contextmanager
def _grads_kept(leaves: list[torch.Tensor]):
    """Gradients set to None inside, as they were after."""
    saved = [p.grad for p in leaves]
    for p in leaves:
        p.grad = None
    try:
        yield
    finally:
        for p, g in zip(leaves, saved, strict=True):
            p.grad = g


def _cuda(args: tuple) -> list:
    return [a.device for a in args if torch.is_tensor(a) and a.is_cuda][:1]


# ---------------------------------------------------------------------- objectives

def objective_of(elbo: ELBO, model: Callable, guide: Callable, args: tuple) -> Objective | str:
    """``args -> (loss, surrogate loss)`` of an estimator, tensors computed without reading
    any tensor's value in Python; or the reason there is none. The estimator's own
    ``objective(model, guide, *args)`` where it defines one (:mod:`pyro_vae.iwae`), Pyro's
    ``Trace_ELBO`` and ``TraceMeanField_ELBO`` written out below (Pyro's own turn their
    terms into Python floats)."""
    if hasattr(elbo, "objective"):
        return lambda *a: elbo.objective(model, guide, *a)
    if type(elbo) not in _WRITTEN_OUT:
        return f"{type(elbo).__name__} has no objective written as tensors"
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda(args)), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args)
    if any(not site["fn"].has_rsample for _, site in sample_sites(guide_trace)):
        return ("a guide site cannot be reparameterized, and its score-function terms are "
                "not written as tensors here")
    term = _meanfield_particle if type(elbo) is TraceMeanField_ELBO else _trace_particle
    k = elbo.num_particles
    vectorized = elbo.vectorize_particles and k > 1

    def objective(*args):
        fns = (model, guide)
        if vectorized:  # as Pyro's; its nesting, guessed by then, counts the particles' plate
            particles = pyro.plate("num_particles_vectorized", k, dim=-elbo.max_plate_nesting)
            fns = (particles(model), particles(guide))
        total = sum(term(*fns, args) for _ in range(1 if vectorized else k)) / k
        return total, total

    return objective


_WRITTEN_OUT = (Trace_ELBO, TraceMeanField_ELBO)  # Pyro's estimators written out here


def _log_prob_sum(site: dict) -> torch.Tensor:
    return scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"]).sum()


def _trace_particle(model, guide, args) -> torch.Tensor:
    """Minus Trace_ELBO's bound of one (vectorized) particle: log q - log p at the draws."""
    model_trace, guide_trace = replayed(model, guide, *args)
    return (sum(_log_prob_sum(site) for _, site in sample_sites(guide_trace))
            - sum(_log_prob_sum(site) for _, site in sample_sites(model_trace)))


def _meanfield_particle(model, guide, args) -> torch.Tensor:
    """Minus TraceMeanField_ELBO's bound: KL(q || p) in closed form where one is known, by
    sampling elsewhere, minus the observed sites' log-likelihood."""
    model_trace, guide_trace = replayed(model, guide, *args)
    loss = 0.0
    for name, site in sample_sites(model_trace):
        if site["is_observed"]:
            loss = loss - _log_prob_sum(site)
            continue
        q = guide_trace.nodes[name]
        try:
            kl = scale_and_mask(kl_divergence(q["fn"], site["fn"]), q["scale"], q["mask"])
            loss = loss + kl.sum()
        except NotImplementedError:
            loss = loss + _log_prob_sum(q) - _log_prob_sum(site)
    for name, site in sample_sites(guide_trace):  # the guide's own auxiliary sites
        if name not in model_trace.nodes:
            loss = loss + _log_prob_sum(site)
    return loss
