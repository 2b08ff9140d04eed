r"""Gumbel-Softmax (Concrete) training of discrete latents: ``gumbel`` and ``gumbel-st``.

A one-hot draw :math:`z = \mathrm{onehot}(\arg\max_c (\ell_c + g_c))`, :math:`g_c` i.i.d.
Gumbel(0, 1), is a draw of :math:`\mathrm{OneHotCategorical}(\mathrm{softmax}\,\ell)`; its
relaxation at temperature :math:`\tau`,

.. math:: \tilde z = \mathrm{softmax}\big((\ell + g) / \tau\big),

is differentiable in :math:`\ell` and tends to :math:`z` as :math:`\tau \to 0` (Jang, Gu &
Poole, 2017, "Categorical Reparameterization with Gumbel-Softmax"; Maddison, Mnih & Teh,
2017, "The Concrete Distribution"); a Bernoulli unit relaxes alike,
:math:`\tilde z = \sigma((\ell + \log u - \log(1 - u)) / \tau)`. Each training step here
replaces every discrete guide site (``OneHotCategorical`` or ``Bernoulli``, inside any
``to_event``) by its relaxation, replays the model on the relaxed draw and ascends

.. math:: \log p_\theta(x \mid \tilde z) + \dots
          - \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big),

the KL term of the *discrete* distributions in closed form, as Jang et al. do (every other
site as in ``Trace_ELBO``). ``gumbel-st`` (straight-through) feeds the decoder the hard code
:math:`z` and differentiates as if it were :math:`\tilde z`.

The bound that is reported is always the discrete one: the training loss is evaluated at
the hard code :math:`z` of the same Gumbel noise (itself an exact draw of q), and ``loss``
(the test loss) draws hard codes; the relaxed objective is never reported. (That costs
``gumbel`` one more pass of the model per step, counted in its seconds; a continuous guide
site drawn *given* the discrete one keeps its relaxed-pass draw in the reported number.)

The temperature follows the paper's schedule, :math:`\tau = \max(\tau_{\min}, \tau_0
e^{-r t})`, t the training steps taken, updated every ``every`` steps
(:class:`Temperature`); its state (the step count) is in the checkpoint, so a resumed run
continues at the temperature where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.util import torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from .traces import sample_sites


@dataclass
class Temperature:
    r""":math:`\tau_t = \max(\tau_{\min}, \tau_0 \exp(-r \cdot t_N))`, :math:`t_N` the step
    count rounded down to a multiple of ``every``. The defaults are of Jang et al. (2017),
    sec. 4.2 (r from their grid {1e-5, 1e-4}; N from {500, 1000}), and of the authors'
    categorical-VAE notebook (:math:`\tau_0 = 1`, floor 0.5).

    Example: the default schedule holds for 500 steps, then decays to its floor.

    >>> from pyro_vae import Temperature
    >>> tau = Temperature(start=1.0, rate=1e-4, floor=0.5, every=500)
    >>> [round(tau.at(step), 4) for step in (0, 499, 500, 10_000)]
    [1.0, 1.0, 0.9512, 0.5]
    """

    start: float = 1.0
    rate: float = 1e-4
    floor: float = 0.5
    every: int = 500

    def __post_init__(self):
        if not (self.start > 0 and self.floor > 0 and self.rate >= 0 and self.every >= 1):
            raise ValueError(f"a temperature schedule needs start > 0, floor > 0, rate >= 0 and "
                             f"every >= 1, got {self}")

    def at(self, step: int) -> float:
        return max(self.floor, self.start * math.exp(-self.rate * (step // self.every
                                                                    * self.every)))

    def __str__(self) -> str:
        return (f"max({self.floor:g}, {self.start:g} exp(-{self.rate:g} t)), "
                f"updated every {self.every} steps")


def relaxable(fn) -> tuple[type, int] | None:
    """``(OneHotCategorical or Bernoulli, event dims added by to_event)`` for a discrete
    distribution that has a relaxation, else None."""
    extra = 0
    while isinstance(fn, dist.Independent):
        extra += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    for kind in (dist.OneHotCategorical, dist.Bernoulli):
        if isinstance(fn, kind):
            return kind, extra
    return None


class Relax(Messenger):
    """Replace each discrete sample site's distribution by its relaxation at
    ``temperature`` (straight-through if asked); the discrete one is kept at
    ``msg["infer"]["discrete"]``."""

    def __init__(self, temperature: float, straight_through: bool):
        super().__init__()
        self.temperature, self.straight_through = temperature, straight_through

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        fn = msg["fn"]
        found = relaxable(fn)
        if found is None:
            if fn.has_rsample:
                return
            raise ValueError(
                f"guide site {msg['name']!r} ({type(fn).__name__}) is discrete and has no "
                "relaxation here: gumbel relaxes OneHotCategorical and Bernoulli sites (a "
                "Categorical of class indices has no differentiable one-hot form; use "
                "OneHotCategorical), or train with 'graph', 'vimco' or 'enum'")
        kind, extra = found
        base = fn
        while isinstance(base, dist.Independent):
            base = base.base_dist
        t = torch.tensor(self.temperature, dtype=base.logits.dtype, device=base.logits.device)
        if kind is dist.OneHotCategorical:
            relaxed = (dist.RelaxedOneHotCategoricalStraightThrough if self.straight_through
                       else dist.RelaxedOneHotCategorical)(t, logits=base.logits)
        else:
            relaxed = (dist.RelaxedBernoulliStraightThrough if self.straight_through
                       else dist.RelaxedBernoulli)(t, logits=base.logits)
        msg["infer"] = dict(msg["infer"], discrete=fn)
        msg["fn"] = relaxed.to_event(extra) if extra else relaxed


def harden(value: torch.Tensor, kind: type) -> torch.Tensor:
    """The hard code of a relaxed draw: its arg-max one-hot, or its units above 1/2."""
    if kind is dist.OneHotCategorical:
        return torch.nn.functional.one_hot(value.argmax(-1), value.shape[-1]).to(value.dtype)
    return (value > 0.5).to(value.dtype)


class GumbelSoftmaxELBO(ELBO):
    """``gumbel`` (``straight_through=False``) and ``gumbel-st``: see the module's text.
    One relaxed draw per data point and step, as the paper's."""

    def __init__(self, straight_through: bool = False, temperature: Temperature | None = None):
        super().__init__(num_particles=1, vectorize_particles=False)
        self.straight_through = straight_through
        self.temperature = temperature or Temperature()
        self.steps = 0  # training steps taken: the schedule's clock

    @property
    def tau(self) -> float:
        return self.temperature.at(self.steps)

    # the schedule's clock goes into the checkpoint (pyro_vae.train), for an exact resume
    def state_dict(self) -> dict:
        return {"steps": self.steps, "temperature": asdict(self.temperature)}

    def reset(self) -> None:
        """A new run's clock: the temperature starts again at its first value."""
        self.steps = 0

    def load_state_dict(self, state: dict) -> None:
        if state["temperature"] != asdict(self.temperature):
            raise ValueError(f"the checkpoint's temperature schedule {state['temperature']} "
                             f"is not this estimator's {asdict(self.temperature)}")
        self.steps = state["steps"]

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with poutine.block():
            guide_trace = poutine.trace(Relax(self.tau, self.straight_through)(guide)
                                        ).get_trace(*args, **kwargs)
            relaxed = {name: site for name, site in sample_sites(guide_trace)
                       if "discrete" in site["infer"]}
            if not relaxed:
                raise ValueError("gumbel relaxes the guide's discrete sites, and this guide "
                                 "draws none: train a continuous code with 'meanfield' or "
                                 "'trace'")
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)
                                        ).get_trace(*args, **kwargs)
        objective = self._objective(model_trace, guide_trace, relaxed)
        (-objective).backward()
        self.steps += 1
        if self.straight_through:  # the decoder saw the hard code: this is the discrete bound
            return -torch_item(objective)
        # The same noise's hard code, an exact draw of q: the discrete bound, reported
        hard = {name: harden(site["value"].detach(), relaxable(site["infer"]["discrete"])[0])
                for name, site in relaxed.items()}
        with torch.no_grad(), poutine.block():
            held = guide_trace.copy()
            for name, value in hard.items():
                held.nodes[name] = dict(held.nodes[name], value=value)
            hard_model = poutine.trace(poutine.replay(model, trace=held)).get_trace(*args,
                                                                                    **kwargs)
            return -torch_item(self._objective(hard_model, held, relaxed))

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The negative discrete bound at hard draws of q (the KL term in closed form)."""
        with torch.no_grad(), poutine.block():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            discrete = {name: dict(site, infer=dict(site["infer"], discrete=site["fn"]))
                        for name, site in sample_sites(guide_trace)
                        if relaxable(site["fn"]) is not None}
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)
                                        ).get_trace(*args, **kwargs)
            return -torch_item(self._objective(model_trace, guide_trace, discrete))

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("the relaxed estimator traces the guide under Relax: see "
                                  "loss_and_grads")

    @staticmethod
    def _objective(model_trace, guide_trace, discrete: dict) -> torch.Tensor:
        """Every site's scaled log-density, the KL term in closed form at ``discrete``'s."""
        total = torch.zeros(())
        for name, site in sample_sites(model_trace):
            if name in discrete:
                q = discrete[name]["infer"]["discrete"]
                kl = kl_divergence(q, site["fn"])
                total = total - scale_and_mask(kl, site["scale"], site["mask"]).sum()
            else:
                log_p = site["fn"].log_prob(site["value"])
                total = total + scale_and_mask(log_p, site["scale"], site["mask"]).sum()
        for name, site in sample_sites(guide_trace):
            if name not in discrete and not site["is_observed"]:
                log_q = site["fn"].log_prob(site["value"])
                total = total - scale_and_mask(log_q, site["scale"], site["mask"]).sum()
        return total
