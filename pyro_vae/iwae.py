r"""Importance-weighted estimators, computed per data point, as Pyro ``ELBO`` subclasses.

For each data point :math:`x_n` and k draws :math:`z_{n,i} \sim q_\phi(z \mid x_n)`, every
estimator here starts from the log-weights

.. math:: \log w_{n,i} = \log p_\theta(x_n, z_{n,i}) - \log q_\phi(z_{n,i} \mid x_n),
          \qquad \tilde w_{n,i} = w_{n,i} / \textstyle\sum_j w_{n,j},

and a batch's loss is :math:`-\sum_n s_n \mathcal{L}(x_n)`, with :math:`s_n` the scale of
point n (``poutine.scale`` around model and guide, a subsampled plate). The point's terms
are never scaled inside its logarithm; sites scaled unlike one another are refused
(:func:`pyro_vae.traces.scale_per_point`). Pyro's ``RenyiELBO`` takes its log-sum-exp over
scaled log-probabilities, so under a scale it optimizes another objective (pyro #3104).

=====================  ====================================================================
``iwae``               :math:`\mathcal{L}_k = \log \frac1k \sum_i w_i` and its gradient
                       (Burda, Grosse & Salakhutdinov, 2016).
``renyi``              :math:`\mathcal{L}_\alpha = \frac{1}{1-\alpha}\log\frac1k\sum_i
                       w_i^{1-\alpha}` and its gradient (Li & Turner, 2016).
``stl``                :math:`\mathcal{L}_k` with the guide's score term dropped: its guide
                       gradient is :math:`\sum_i \tilde w_i \nabla^{\rm path}_\phi \log w_i`,
                       zero when q is the exact posterior (Roeder, Wu & Duvenaud, 2017);
                       for k = 1 the ELBO's path-derivative estimator. Unbiased for k = 1
                       only (Tucker et al., 2019, sec. 4).
``iwae-dreg``          :math:`\mathcal{L}_k`; the guide's gradient doubly reparameterized,
                       :math:`\sum_i \tilde w_i^2 \nabla^{\rm path}_\phi \log w_i`, unbiased
                       for :math:`\nabla_\phi \mathcal{L}_k`, with an SNR that grows with k
                       (Tucker, Lawson, Gu & Maddison, 2019); the model's gradient is IWAE's,
                       :math:`\sum_i \tilde w_i \nabla_\theta \log p_\theta(x, z_i)`.
``tail-adaptive``      the gradient :math:`\sum_i \gamma_i \nabla \log w_i` with
                       :math:`\gamma_i \propto \hat F(w_i)^\beta`, :math:`\hat F(t) =
                       \frac1k \#\{j : w_j \ge t\}`, ranked within each point (Wang, Liu &
                       Liu, 2018; Pyro's ranks particles of the whole batch, wrongly:
                       pyro #3170); reports the ELBO :math:`\frac1k\sum_i \log w_i`.
``vimco``              :math:`\mathcal{L}_k` for guides that cannot be reparameterized
                       (discrete codes): the score-function gradient with each particle's
                       leave-one-out baseline (Mnih & Rezende, 2016, "Variational Inference
                       for Monte Carlo Objectives"), per data point.
=====================  ====================================================================

:math:`\nabla^{\rm path}_\phi` differentiates through the draws :math:`z = z(\epsilon, \phi)`
only, :math:`\log q_\phi` held at fixed :math:`\phi`. It is computed as
:math:`\log q_\phi(z) - \log q_\phi(\bar z) + \overline{\log q_\phi(z)}` (bars: no gradient),
where :math:`\log q_\phi(\bar z)` re-runs the guide with every latent held at its detached
value, so that a hierarchical guide's :math:`q(z_2 \mid z_1)` keeps its path through
:math:`z_1` (a guide with one latent site scores the detached draw directly). The guide must
be a function of x, its latents and parameters alone (no dropout in training mode).

Every guide site must be reparameterizable (``vimco``'s aside); every sample site must lie
in the data plate
(``plate``; by default the plate whose size is the batch's, :func:`~pyro_vae.traces.data_plate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.util import check_model_guide_match, check_site_shape

from .traces import (
    data_dim,
    data_plate,
    log_prob_per_point,
    per_point,
    plate_nesting,
    sample_sites,
    scale_per_point,
)

_PARTICLES = "_iw_particles"


class Weights(NamedTuple):
    """One batch's draws: log-densities per (particle, point), each ``(k, n)``."""

    log_p: torch.Tensor  # log p(x_n, z_ni), differentiable in theta and, through z, in phi
    log_q: torch.Tensor  # log q(z_ni | x_n)
    scale: torch.Tensor | float  # s_n, (n,) or a number
    model_trace: poutine.Trace
    guide_trace: poutine.Trace

    @property
    def log_w(self) -> torch.Tensor:
        return self.log_p - self.log_q


class ImportanceWeightedELBO(ELBO):
    r"""``iwae``: the k-sample importance-weighted bound of each data point, and its
    gradient (see the module's text)."""

    needs_path = False  # whether the surrogate uses the path-only log q
    scores = False  # whether guide sites that cannot be reparameterized are scored

    def __init__(self, num_particles: int = 1, plate: str | None = None):
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        super().__init__(num_particles=num_particles, vectorize_particles=True)
        self.plate = plate

    # ------------------------------------------------------------ what an estimator defines

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """The bound of each point from its log-weights ``(k, n)``: ``(n,)``."""
        return torch.logsumexp(log_w, 0) - math.log(self.num_particles)

    def surrogate(self, w: Weights, path_log_q: torch.Tensor | None) -> torch.Tensor:
        """Each point's surrogate objective ``(n,)``: its gradient is the estimator's."""
        return self.bound(w.log_w)

    # ------------------------------------------------------------ Pyro's ELBO interface

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative bound summed over the batch (nats), each point scaled."""
        with torch.no_grad():
            w = self.weights(model, guide, *args, **kwargs)
            return -torch_item((w.scale * self.bound(w.log_w)).sum())

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        loss, surrogate = self.objective(model, guide, *args, **kwargs)
        if surrogate.requires_grad:
            surrogate.backward()
        return torch_item(loss)

    def objective(self, model: Callable, guide: Callable, *args, **kwargs
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The negative bound summed over the batch and the surrogate loss whose gradient
        is the estimator's, as tensors (what :mod:`pyro_vae.engine` captures)."""
        w = self.weights(model, guide, *args, **kwargs)
        loss = -(w.scale * self.bound(w.log_w.detach())).sum()
        surrogate = -(w.scale * self.surrogate(w, self._path_log_q(w, guide, args, kwargs)))
        return loss, surrogate.sum()

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("importance-weighted estimators draw all k particles of "
                                  "a point together: see weights()")

    # ------------------------------------------------------------ the draws

    def weights(self, model: Callable, guide: Callable, *args, **kwargs) -> Weights:
        """Draw k latents per data point from the guide, run the model on them, and return
        the per-point log-densities (differentiable)."""
        if self.max_plate_nesting == math.inf:  # once, as Pyro guesses it
            self.max_plate_nesting = plate_nesting(model, guide, *args, **kwargs)
        if self.plate is None:  # once: the plate whose size is the batch's
            self.plate = data_plate(model, guide, *args, **kwargs)
        # The particles' plate wraps model and guide inside any replay or condition: a
        # plate outside them would not broadcast a replayed site's distribution.
        guide_trace = poutine.trace(self._particles(guide)).get_trace(*args, **kwargs)
        for name, site in sample_sites(guide_trace):
            if not site["fn"].has_rsample and not self.scores:
                raise ValueError(
                    f"guide site {name!r} ({type(site['fn']).__name__}) cannot be "
                    f"reparameterized: {type(self).__name__} differentiates through the "
                    "draws; use 'vimco' (its multi-sample twin for discrete codes), 'graph', "
                    "'trace', 'gumbel' or 'enum' instead")
        model_trace = poutine.trace(
            poutine.replay(self._particles(model), trace=self._for_model(guide_trace))
        ).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting + 1)
            for trace in (model_trace, guide_trace):
                trace.compute_log_prob()
                for _, site in sample_sites(trace):
                    check_site_shape(site, self.max_plate_nesting + 1)
        return Weights(log_prob_per_point(model_trace, self.plate),
                       log_prob_per_point(guide_trace, self.plate),
                       scale_per_point({"model": model_trace, "guide": guide_trace}, self.plate),
                       model_trace, guide_trace)

    def _particles(self, fn: Callable) -> Callable:
        return pyro.plate(_PARTICLES, self.num_particles, dim=-self.max_plate_nesting - 1)(fn)

    def _for_model(self, guide_trace):
        """The trace whose latent values the model is replayed on."""
        return guide_trace

    def _path_log_q(self, w: Weights, guide, args, kwargs) -> torch.Tensor | None:
        r""":math:`\log q_\phi(z)` whose gradient is the path derivative alone, ``(k, n)``:
        its value is ``w.log_q``; the score term :math:`\nabla_\phi \log q_\phi(\bar z)` is
        subtracted."""
        if not self.needs_path:
            return None
        latents = sample_sites(w.guide_trace)
        if len(latents) == 1:  # q's parameters depend on x and phi alone
            [(name, site)] = latents
            fixed = per_point(scale_and_mask(site["fn"].log_prob(site["value"].detach()),
                                             mask=site["mask"]), data_dim(site, name, self.plate))
        else:  # re-run the guide with every latent held at its detached value
            held = {name: site["value"].detach() for name, site in latents}
            trace = poutine.trace(poutine.condition(self._particles(guide), data=held)
                                  ).get_trace(*args, **kwargs)
            fixed = log_prob_per_point(trace, self.plate)
        return w.log_q - fixed + fixed.detach()


class RenyiELBO(ImportanceWeightedELBO):
    r"""``renyi``: the variational Rényi bound of order ``alpha`` of each data point."""

    def __init__(self, num_particles: int = 1, alpha: float = 0.5, plate: str | None = None):
        if alpha == 1:
            raise ValueError("alpha=1 is the standard ELBO ('trace'); the Renyi bound needs "
                             "another order")
        if not alpha >= 0:  # Li & Turner (2016), Theorem 1: L_alpha >= log p(x) for alpha < 0
            raise ValueError(f"renyi with alpha={alpha}: below 0 the Renyi bound is an upper "
                             "bound of log p(x), not a lower bound, and it is reported and "
                             "trained as a lower bound here; choose alpha >= 0 (0 is 'iwae')")
        super().__init__(num_particles, plate)
        self.alpha = alpha

    def bound(self, log_w):
        a = 1 - self.alpha
        return (torch.logsumexp(a * log_w, 0) - math.log(self.num_particles)) / a


class StickingTheLanding(ImportanceWeightedELBO):
    r"""``stl``: the importance-weighted bound with the guide's score term dropped."""

    needs_path = True

    def surrogate(self, w, path_log_q):
        return self.bound(w.log_p - path_log_q)


class DReG(ImportanceWeightedELBO):
    r"""``iwae-dreg``: the importance-weighted bound with doubly reparameterized guide
    gradients (Tucker et al., 2019, eq. 7).

    One backward pass gives both gradients. The model is replayed on views of the draws
    whose incoming gradient is multiplied by :math:`\tilde w_i` (a hook), and the surrogate
    is :math:`\sum_i \overline{\tilde w_i} \log p_\theta(x, z_i') - \overline{\tilde w_i^2}
    \log q^{\rm path}_\phi(z_i)`: the model's parameters get :math:`\sum_i \tilde w_i
    \nabla_\theta \log p`, the guide's :math:`\sum_i \tilde w_i^2 (\nabla_z \log p\,
    \partial_\phi z - \nabla^{\rm path}_\phi \log q)`.
    """

    needs_path = True

    def _for_model(self, guide_trace):
        copy = guide_trace.copy()  # new nodes, so the guide trace keeps its own values
        for name, site in sample_sites(guide_trace):
            copy.nodes[name] = dict(site, value=site["value"].view_as(site["value"]))
        return copy

    def surrogate(self, w, path_log_q):
        normalized = torch.softmax(w.log_w.detach(), 0)  # w~, (k, n)
        for name, site in sample_sites(w.model_trace):
            if name in w.guide_trace.nodes and site["value"].requires_grad:
                site["value"].register_hook(_times(normalized, site, name, self.plate))
        return (normalized * w.log_p - normalized**2 * path_log_q).sum(0)


class TailAdaptiveELBO(ImportanceWeightedELBO):
    r"""``tail-adaptive``: gradients of the tail-adaptive f-divergence, particles ranked
    within each data point; its loss is the negative ELBO of the same particles."""

    def __init__(self, num_particles: int = 2, beta: float = -1.0, plate: str | None = None):
        if num_particles < 2:
            raise ValueError("tail-adaptive ranks particles against each other: it needs "
                             f"num_particles >= 2 (got {num_particles})")
        super().__init__(num_particles, plate)
        self.beta = beta

    def bound(self, log_w):
        return log_w.mean(0)

    def surrogate(self, w, path_log_q):
        return (tail_weights(w.log_w.detach(), self.beta) * w.log_w).sum(0)


class VIMCO(ImportanceWeightedELBO):
    r"""``vimco``: :math:`\mathcal{L}_k` of each data point with the gradient of Mnih &
    Rezende (2016), eq. 8-10, for guides whose draws cannot be differentiated:

    .. math:: \nabla \mathcal{L}_k = \sum_i \hat L(z_i \mid z_{-i})\,
              \nabla \log q(z_i \mid x) + \sum_i \tilde w_i \nabla \log w_i,
              \qquad \hat L(z_i \mid z_{-i}) = \mathcal{L}_k - \log \frac1k \Big(
              \sum_{j \ne i} w_j + \hat w_{-i}\Big),

    where :math:`\hat w_{-i} = \exp \frac{1}{k-1}\sum_{j \ne i} \log w_j`, the geometric
    mean of the other particles, stands in for particle i: each particle's learning signal
    has a baseline built from the others of its own data point, so it needs no learned
    network. The score term takes the sites that cannot be reparameterized; reparameterized
    sites of the same guide are differentiated through their draws, as in ``iwae``."""

    scores = True

    def __init__(self, num_particles: int = 2, plate: str | None = None):
        if num_particles < 2:
            raise ValueError("vimco's baseline for each particle is built from the others of "
                             f"its data point: it needs num_particles >= 2 (got {num_particles})")
        super().__init__(num_particles, plate)

    def surrogate(self, w, path_log_q):
        signal = leave_one_out_signal(w.log_w.detach())  # (k, n)
        scored = sum((per_point(scale_and_mask(site["fn"].log_prob(site["value"]),
                                               mask=site["mask"]),
                                data_dim(site, name, self.plate))
                      for name, site in sample_sites(w.guide_trace)
                      if not site["fn"].has_rsample), torch.zeros(()))
        return self.bound(w.log_w) + (signal * scored).sum(0)


def leave_one_out_signal(log_w: torch.Tensor) -> torch.Tensor:
    r"""VIMCO's learning signal :math:`\hat L(z_i \mid z_{-i})` of every particle, ``(k, n)``
    from log-weights ``(k, n)``: the bound less the bound with particle i replaced by the
    geometric mean of the others."""
    k = log_w.shape[0]
    bound = torch.logsumexp(log_w, 0) - math.log(k)
    others = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # (k, n): mean log w_{-i}
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device).unsqueeze(-1)  # (k, k, 1)
    replaced = torch.where(eye, others.unsqueeze(1), log_w.unsqueeze(0))  # [i, j, n]
    return bound - (torch.logsumexp(replaced, 1) - math.log(k))


def tail_weights(log_w: torch.Tensor, beta: float = -1.0) -> torch.Tensor:
    r""":math:`\gamma_i \propto \hat F(w_i)^\beta` per data point (columns of ``log_w``,
    ``(k, n)``), normalized over the k particles; :math:`\hat F(w_i) = \frac1k \#\{j : w_j
    \ge w_i\}`, so with :math:`\beta < 0` the heaviest particle weighs most."""
    tail = (log_w.unsqueeze(0) >= log_w.unsqueeze(1)).sum(1).to(log_w.dtype) / log_w.shape[0]
    gamma = tail.pow(beta)
    return gamma / gamma.sum(0)


def _times(weights: torch.Tensor, site: dict, name: str, plate: str):
    """A gradient hook multiplying a latent value's gradient by each (particle, point)'s
    weight ``(k, n)``, broadcast over the value's other dimensions."""
    value = site["value"]
    shape = [1] * value.dim()
    shape[0] = weights.shape[0]
    shape[value.dim() - site["fn"].event_dim + data_dim(site, name, plate)] = weights.shape[1]
    factor = weights.reshape(shape)
    return lambda grad: grad * factor
