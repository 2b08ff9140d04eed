r"""Test-time refinement of q: the best member of a variational family for each data point.

An amortized guide :math:`q_\phi(z \mid x)` computes every example's variational parameters
with one encoder. Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational
Autoencoders", split what that costs. With :math:`q^*_x = \arg\max_{q \in \mathcal{Q}}
\mathcal{L}[q]` the best member of the family :math:`\mathcal{Q}` *for this one* x,

.. math:: \underbrace{\log p(x) - \mathcal{L}[q_\phi]}_{\text{inference gap}}
          = \underbrace{\log p(x) - \mathcal{L}[q^*_x]}_{\text{approximation gap}}
          + \underbrace{\mathcal{L}[q^*_x] - \mathcal{L}[q_\phi]}_{\text{amortization gap}},
   \qquad \mathcal{L}[q] = \mathbb{E}_{q(z)}[\log p(x, z) - \log q(z)].

:func:`refine` finds :math:`q^*_x` by stochastic optimisation of local parameters, one set
per example, all in one tensor with one Adam optimiser (Adam is elementwise, so the
examples do not interact; each step draws ``particles`` reparameterized samples per example):

- ``family="gaussian"``: the fully factorised Gaussian (FFG) :math:`\mathcal{N}(\mu,
  \mathrm{diag}\,\sigma^2)`, from the guide's own :math:`\mu, \sigma` where it is a diagonal
  Normal, else from the mean and standard deviation of 256 of its draws (a flow guide);
- ``family="flow"``: that Gaussian pushed through ``flows`` planar transforms (Rezende &
  Mohamed, 2015, "Variational Inference with Normalizing Flows"),
  :math:`f(z) = z + \hat u \tanh(w^\top z + b)` with :math:`\hat u` constrained so that
  :math:`w^\top \hat u \ge -1` (invertible), :math:`\log|\det \partial f / \partial z| =
  \log|1 + \hat u^\top \psi(z)|`, :math:`\psi(z) = (1 - \tanh^2(w^\top z + b))\, w`, every
  example with its own :math:`u, w, b`; it starts as the identity (:math:`u = 0`), so at
  step 0 it is the Gaussian above.

The model's and the encoder's parameters are read, never changed (the gradient is taken
with respect to the local parameters alone), and the caller's random state is left as it was.

Stopping: ``steps`` is the number of steps, or with ``window`` the most: every ``window``
steps the mean objective over the last ``window`` steps (over the examples of the batch) is
compared with the best such mean so far, and the optimisation stops when it did not improve
(Cremer et al. stop "when there is no improvement over a number of steps").

The bound that is reported is estimated afresh at the end with ``eval_particles`` draws per
example: for the refined q and for the family's starting point, each scored twice on
independent draws; the first score picks, per example, the better of the two (so refinement
never returns a worse member of the family than it started from), the second is reported, so
that the pick does not bias the reported bound upward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from tqdm import tqdm

from .evaluate import _arguments, latent_site
from .traces import data_plate, draw_latents, log_joint, plate_nesting

FAMILIES = ("gaussian", "flow")
_EVAL_CHUNK = 10  # particles scored at a time in the final estimates


class Refined(NamedTuple):
    """Per-example results of :func:`refine`, the tensors of shape ``(N,)`` in nats."""

    elbo: torch.Tensor  # the refined bound L[q*] (an estimate with eval_particles draws)
    amortized_elbo: torch.Tensor  # the guide's own bound L[q_phi], same draws per example
    q: dist.Distribution  # the refined local distributions: batch (N,), event (z_dim,)
    steps: int  # optimisation steps taken (the most over batches)
    history: torch.Tensor  # (steps,): the mean training objective at each step, batch 1


class Planar(torch.distributions.Transform):
    r"""A planar transform with one set of parameters per example: ``u``, ``w`` ``(..., n, D)``
    and ``b`` ``(..., n)``, broadcast against ``z`` ``(..., n, D)``:
    :math:`z + \hat u \tanh(w^\top z + b)`."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
        super().__init__(cache_size=1)
        self.u, self.w, self.b = u, w, b

    def _u_hat(self) -> torch.Tensor:
        wu = (self.w * self.u).sum(-1, keepdim=True)
        return self.u + (F.softplus(wu) - 1 - wu) * self.w / (self.w**2).sum(-1, keepdim=True)

    def _call(self, z):
        h = (self.w * z).sum(-1, keepdim=True) + self.b[..., None]
        return z + self._u_hat() * torch.tanh(h)

    def log_abs_det_jacobian(self, z, y):
        h = (self.w * z).sum(-1) + self.b
        psi = (1 - torch.tanh(h) ** 2)[..., None] * self.w
        return torch.log((1 + (self._u_hat() * psi).sum(-1)).abs() + 1e-12)


def refine(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    steps: int = 1000,
    lr: float = 1e-2,
    particles: int = 10,
    family: str = "gaussian",
    window: int | None = None,
    flows: int = 8,
    eval_particles: int = 100,
    batch_size: int = 500,
    seed: int = 0,
    site: str | None = None,
    y: torch.Tensor | None = None,
    progress: bool = False,
) -> Refined:
    r"""Optimise a local variational distribution for every row of ``x`` from the amortized
    guide's output, ``batch_size`` rows at a time (each batch from a random stream of its
    own, seeded by ``(seed, batch)``), and estimate the refined bound and the guide's own.

    ``site`` is the one continuous latent site refined (default: the guide's one; a guide
    with several is refused by name); its value per example must be a vector (event shape
    ``(D,)``) inside the data plate. ``y`` are the labels of a model of ``(x, y)``.

    Example (20 steps from an untrained encoder already raise the bound per example):

    >>> import torch
    >>> from pyro_vae import VAE, refine
    >>> vae = VAE(x_dim=4, z_dim=2, hidden=[8])
    >>> refined = refine(vae.model, vae.guide, torch.rand(5, 4).round(), steps=20)
    >>> refined.elbo.shape, bool(refined.elbo.mean() > refined.amortized_elbo.mean())
    (torch.Size([5]), True)
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from: {', '.join(FAMILIES)}")
    for name, value in (("steps", steps), ("particles", particles), ("flows", flows),
                        ("eval_particles", eval_particles), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1 (or None: a fixed step count), got {window}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    devices = [x.device] if x.device.type == "cuda" else []
    n = x.shape[0]
    results, taken, history = [], 0, None
    bar = tqdm(total=n * steps, desc=f"refining q ({family})", unit="step·example",
               disable=not progress)
    with torch.random.fork_rng(devices=devices):
        site = site or latent_site(guide, x, y)
        for index, start in enumerate(range(0, n, batch_size)):
            rows = slice(start, start + batch_size)
            args = _arguments(x[rows], None if y is None else y[rows])
            stream = (seed * 0x9E3779B1 + index) % 2**32
            torch.manual_seed(stream)
            result, curve = _refine_batch(model, guide, args, site, steps, lr, particles,
                                          family, window, flows, eval_particles, bar)
            results.append(result)
            taken = max(taken, len(curve))
            history = curve if history is None else history
    bar.close()
    params = {key: torch.cat([r[0][key] for r in results], dim=_BATCH_DIM[key])
              for key in results[0][0]}
    return Refined(elbo=torch.cat([r[1] for r in results]),
                   amortized_elbo=torch.cat([r[2] for r in results]),
                   q=_distribution(params), steps=taken, history=history)


_BATCH_DIM = {"loc": 0, "log_scale": 0, "u": 1, "w": 1, "b": 1}


def _refine_batch(model, guide, args, site, steps, lr, particles, family, window, flows,
                  eval_particles, bar):
    nesting = plate_nesting(model, guide, *(a[:1] for a in args))
    plate = data_plate(model, guide, *args)
    q_phi = _guide_distribution(guide, args, site)
    start = _start(q_phi, family, flows)
    params = {key: value.clone().requires_grad_() for key, value in start.items()}
    optimizer = torch.optim.Adam(params.values(), lr=lr)

    def objective(q, k):
        z = q.rsample((k,))
        return (log_joint(model, args, {site: z}, nesting, plate) - q.log_prob(z)).mean(0)

    curve, best = [], -math.inf
    for step in range(steps):
        per_example = objective(_distribution(params), particles)
        grads = torch.autograd.grad(-per_example.sum(), list(params.values()))
        for p, g in zip(params.values(), grads, strict=True):
            p.grad = g
        optimizer.step()
        curve.append(per_example.mean().item())
        bar.update(args[0].shape[0])
        if window and (step + 1) % window == 0:
            recent = sum(curve[-window:]) / window
            if recent <= best:
                bar.update(args[0].shape[0] * (steps - step - 1))
                break
            best = recent
    params = {key: value.detach() for key, value in params.items()}

    with torch.no_grad():
        def bound(q):
            return sum(objective(q, k) * k for k in _parts(eval_particles)) / eval_particles

        refined, initial = _distribution(params), _distribution(start)
        pick = bound(refined) >= bound(initial)  # the first draws pick ...
        reported_refined, reported_initial = bound(refined), bound(initial)  # ... fresh ones tell
        elbo = torch.where(pick, reported_refined, reported_initial)
        amortized = sum(_guide_bound(model, guide, args, k, nesting, plate) * k
                        for k in _parts(eval_particles)) / eval_particles
    chosen = {key: torch.where(_shape_like(pick, key, value), value, start[key])
              for key, value in params.items()}
    return (chosen, elbo, amortized), torch.tensor(curve)


def _parts(k: int) -> list[int]:
    return [min(_EVAL_CHUNK, k - i) for i in range(0, k, _EVAL_CHUNK)]


def _shape_like(pick: torch.Tensor, key: str, value: torch.Tensor) -> torch.Tensor:
    """``pick`` (n,) broadcast against a parameter of :data:`_BATCH_DIM`'s layout."""
    return pick[:, None] if _BATCH_DIM[key] == 0 else pick.view(1, -1, *[1] * (value.dim() - 2))


def _guide_bound(model, guide, args, k, nesting, plate) -> torch.Tensor:
    """The amortized guide's own bound per example, from k of its draws: ``(n,)``."""
    latents, log_q = draw_latents(guide, args, k, nesting, plate)
    return (log_joint(model, args, {s: v for s, (v, _) in latents.items()}, nesting, plate)
            - log_q).mean(0)


def _guide_distribution(guide, args, site) -> dist.Distribution:
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide).get_trace(*args)
    if site not in trace.nodes:
        raise ValueError(f"the guide has no sample site {site!r}")
    q = trace.nodes[site]["fn"]
    n = args[0].shape[0]
    if tuple(q.batch_shape) != (n,) or len(q.event_shape) != 1:
        raise ValueError(
            f"refine optimises one vector per example: the guide's site {site!r} has batch "
            f"shape {tuple(q.batch_shape)} and event shape {tuple(q.event_shape)}, and it needs "
            f"({n},) (the data plate alone) and (D,) (.to_event(1))")
    return q


def _start(q: dist.Distribution, family: str, flows: int) -> dict[str, torch.Tensor]:
    """The family's starting point: the guide's diagonal Normal, or the moments of its
    draws; for a flow, identity planar transforms on top (u = 0, w small and random)."""
    base = q.base_dist if isinstance(q, dist.Independent) else q
    if isinstance(base, dist.Normal):
        loc, scale = base.loc.expand(q.batch_shape + q.event_shape), \
            base.scale.expand(q.batch_shape + q.event_shape)
    else:
        draws = q.sample((256,))
        loc, scale = draws.mean(0), draws.std(0)
    start = {"loc": loc.detach().clone(), "log_scale": scale.detach().log()}
    if family == "flow":
        n, d = loc.shape
        w = 0.1 * torch.randn(flows, n, d, device=loc.device) / d**0.5
        start.update(u=loc.new_zeros(flows, n, d), w=w, b=loc.new_zeros(flows, n))
    return start


def _distribution(params: dict[str, torch.Tensor]) -> dist.Distribution:
    base = dist.Normal(params["loc"], params["log_scale"].exp()).to_event(1)
    if "u" not in params:
        return base
    layers = zip(params["u"], params["w"], params["b"], strict=True)
    return dist.TransformedDistribution(base, [Planar(u, w, b) for u, w, b in layers])
