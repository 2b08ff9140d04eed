r"""Semi-amortized training: the ELBO at q refined K steps per example, differentiated through
the steps (Kim, Wiseman, Miller, Sontag & Rush, 2018, "Semi-Amortized Variational
Autoencoders", Algorithm 1).

The guide's diagonal Gaussian gives each example's :math:`\lambda_0 = (\mu, \log\sigma)
= \mathrm{enc}_\phi(x)`; K steps of stochastic gradient ascent on that example's ELBO follow,

.. math:: \lambda_{k} = \lambda_{k-1} + \alpha\, F(\lambda_{k-1})^{-1}
          \nabla_\lambda \widehat{\mathcal{L}}(\lambda_{k-1}, \theta; x),

with one reparameterized draw a step and :math:`F^{-1} = \mathrm{diag}(\sigma^2, \tfrac12)`
the inverse Fisher information of :math:`\mathcal{N}(\mu, \sigma^2)` in :math:`(\mu,
\log\sigma)`, so that a step of :math:`\alpha \le 1` is stable whatever the posterior's
scale (a natural-gradient step; Kim et al. take plain steps with a tuned rate), each
example's step shortened to :data:`MAX_STEP` where it is longer (Kim et al. clip too: early
in training the posterior is far narrower than q, and a natural step overshoots). Then

- the model's parameters follow :math:`\partial \mathcal{L}(\lambda_K, \theta) / \partial
  \theta` at :math:`\lambda_K` held fixed;
- the encoder's follow :math:`d\mathcal{L}(\lambda_K, \theta) / d\phi` through every step
  (``create_graph``: torch forms the Hessian-vector products of Kim et al.'s backward pass).

The loss that is reported is :math:`-\mathcal{L}(\lambda_K)`, the refined bound, a tighter
bound than the amortized one on the same model. K = 0 is the plain VAE's ``trace``
estimator. Needs one latent site, a diagonal Normal per example in the data plate.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO

from .traces import data_plate, log_joint, plate_nesting, sample_sites

STEP_SIZE = 0.5  # alpha, in natural-gradient units
MAX_STEP = 1.0  # the longest step of one example's (mu, log sigma), in Euclidean norm


class SemiAmortizedELBO(ELBO):
    """``steps`` (K) refinement steps of size :data:`STEP_SIZE` before each bound."""

    def __init__(self, steps: int = 5, num_particles: int = 1):
        if steps < 0:
            raise ValueError(f"refine_steps must be at least 0, got {steps}")
        super().__init__(num_particles=num_particles, vectorize_particles=True)
        self.steps = steps
        self._layout = {}  # (model, guide) -> (latent site, plate nesting, data plate)

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("the bound is computed from the refined q, not from a trace")

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.enable_grad():
            bound, _ = self._refined_bound(model, guide, args, train=False)
        return -bound.sum().item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        bound, (encoder, fixed) = self._refined_bound(model, guide, args, train=True)
        # the model's parameters at lambda_K held fixed; the encoder's through the K steps
        (-fixed.sum()).backward()
        grads = torch.autograd.grad(-bound.sum(), encoder, allow_unused=True)
        for p, g in zip(encoder, grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        return -bound.sum().item()

    def _refined_bound(self, model, guide, args, train: bool):
        site, nesting, plate, event = self._layout_of(model, guide, args)
        n = args[0].shape[0]
        # the guide's distribution, without a draw of it: every draw is one of eps below
        held = poutine.condition(guide, data={site: args[0].new_zeros(n, *event)})
        guide_trace = poutine.trace(held).get_trace(*args)
        q = guide_trace.nodes[site]["fn"]
        base = q.base_dist if isinstance(q, dist.Independent) else q
        if not isinstance(base, dist.Normal):
            raise ValueError(f"semi-amortized training refines a diagonal Normal, and the "
                             f"guide's site {site!r} is {type(base).__name__}")
        loc, log_scale = base.loc, base.scale.log()
        if not train:
            loc, log_scale = loc.detach().requires_grad_(), log_scale.detach().requires_grad_()
        eps = torch.randn((self.steps + 1, self.num_particles, *loc.shape), device=loc.device)
        for k in range(self.steps):
            bound = self._bound(model, args, site, nesting, plate, loc, log_scale, eps[k])
            g_loc, g_log_scale = torch.autograd.grad(bound.sum(), (loc, log_scale),
                                                     create_graph=train)
            step_loc = STEP_SIZE * (2 * log_scale).exp() * g_loc
            step_log_scale = STEP_SIZE / 2 * g_log_scale
            norm = (step_loc.pow(2).sum(-1) + step_log_scale.pow(2).sum(-1)).sqrt()
            shrink = (MAX_STEP / (norm + 1e-12)).clamp(max=1.0)[..., None]
            loc = loc + shrink * step_loc
            log_scale = log_scale + shrink * step_log_scale
        bound = self._bound(model, args, site, nesting, plate, loc, log_scale, eps[-1])
        if not train:
            return bound.detach(), None
        encoder = [node["value"].unconstrained() for node in guide_trace.nodes.values()
                   if node["type"] == "param"]
        fixed = self._bound(model, args, site, nesting, plate, loc.detach(),
                            log_scale.detach(), eps[-1])
        return bound, (encoder, fixed)

    def _bound(self, model, args, site, nesting, plate, loc, log_scale, eps):
        """The ELBO per example at N(loc, exp(log_scale)^2) from the standard normal draws
        ``eps`` ``(particles, n, D)``: ``(n,)``."""
        z = loc + log_scale.exp() * eps
        log_q = dist.Normal(loc, log_scale.exp()).log_prob(z).sum(-1)
        return (log_joint(model, args, {site: z}, nesting, plate) - log_q).mean(0)

    def _layout_of(self, model, guide, args):
        key = (model, guide)
        if key not in self._layout:
            with torch.no_grad(), torch.random.fork_rng(
                    devices=[args[0].device] if args[0].is_cuda else []):
                with poutine.block():
                    trace = poutine.trace(guide).get_trace(*args)
                latent = [name for name, s in sample_sites(trace) if not s["is_observed"]]
                if len(latent) != 1:
                    raise ValueError(f"semi-amortized training refines one latent site, and "
                                     f"the guide has {len(latent)}: {latent}")
                nesting = plate_nesting(model, guide, *(a[:1] for a in args))
                plate = data_plate(model, guide, *args)
            event = tuple(trace.nodes[latent[0]]["fn"].event_shape)
            if len(event) != 1:
                raise ValueError(f"semi-amortized training refines a vector per example, and "
                                 f"the guide's site {latent[0]!r} has event shape {event}")
            self._layout[key] = (latent[0], nesting, plate, event)
        return self._layout[key]
