r"""Reading Pyro traces per data point: the one mechanism behind the importance-weighted
estimators (:mod:`pyro_vae.iwae`), :func:`~pyro_vae.evaluate.log_likelihood`, AIS,
:func:`~pyro_vae.refine` and semi-amortized training (:func:`log_joint`, :func:`draw_latents`).

A model whose data points are conditionally independent given the parameters, every sample
site inside the data plate, has a joint density that factorizes over the plate:

.. math:: \log p(x, z) = \sum_{n} \sum_{s} \log p(v_{s,n} \mid \mathrm{pa}(v_{s,n})),

so each point's log-weight :math:`\log p(x_n, z_n) - \log q(z_n \mid x_n)` is a sum over the
sites of their log-probabilities summed over every batch dimension *but* the data plate's
(and the particles' in front). Importance-weighted bounds take their log-mean-exp over
particles per point, never over the batch's summed weights.

The log-probabilities here are *unscaled* (masks applied): a ``poutine.scale`` or a
subsampled plate weighs a data point's bound, not the terms inside its logarithm
(:func:`scale_per_point`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample


def takes_labels(model: Callable, guide: Callable) -> bool:
    """Whether a model/guide pair takes labels: ``model(x, y)`` and ``guide(x, y)``, the second
    parameter named ``y``, against ``model(x)``/``guide(x)``. The two must agree (a guide of
    ``x`` alone with a model of ``(x, y)`` is refused by name)."""
    model_takes, guide_takes = _second_is_y(model), _second_is_y(guide)
    if model_takes != guide_takes:
        has, lacks = ("model", "guide") if model_takes else ("guide", "model")
        raise ValueError(f"the {has} takes labels (x, y) but the {lacks} takes x alone: give "
                         "both a second parameter y, or neither")
    return model_takes


def _second_is_y(fn: Callable) -> bool:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or a C function: a model of x alone
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return False
    second = positional[1]
    if second.name != "y" and second.default is second.empty:
        raise ValueError(
            f"{getattr(fn, '__qualname__', fn)} takes a second argument {second.name!r} that "
            "pyro-vae cannot fill: it calls model(x) and guide(x), or model(x, y) and "
            "guide(x, y) with the labels when the second parameter is named y; rename it y, "
            "give it a default, or bind it (functools.partial)")
    return second.name == "y"


def sample_sites(trace) -> list[tuple[str, dict]]:
    """The sample sites of a trace, in order, without Pyro's subsample sites."""
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)]


def data_plate(model: Callable, guide: Callable, *args, **kwargs) -> str:
    """The name of the plate over the data, whatever it is called: the plate of model and
    guide whose size follows the batch's, ``args[0].shape[0]`` (its subsample size, or its
    full size where a subsampled plate is given the whole data). Traced on the batch and on
    one row fewer, so a plate of the same size that does not follow the batch (8 latent
    dimensions of a batch of 8) is not taken for it. A ``ValueError`` where no plate, or
    several, follow the batch (then name it: ``plate=NAME``)."""
    n = args[0].shape[0]

    def sizes(rows: int) -> dict[str, set]:
        cut = [a[:rows] if torch.is_tensor(a) and a.shape[:1] == (n,) else a for a in args]
        devices = [args[0].device] if args[0].is_cuda else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            traces = replayed(model, guide, *cut, **kwargs)
        found = {}
        for trace in traces:
            for _, site in sample_sites(trace):
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        found.setdefault(frame.name, set()).update({frame.size, frame.full_size})
        return found

    whole = sizes(n)
    follow = {name for name, s in whole.items() if n in s}
    if n > 1 and len(follow) > 1:
        fewer = sizes(n - 1)
        follow = {name for name in follow if n - 1 in fewer.get(name, ())}
    if len(follow) != 1:
        shown = {name: sorted(x for x in s if x is not None) for name, s in whole.items()}
        raise ValueError(
            f"cannot tell the plate over the data: {len(follow)} plates {sorted(follow)} follow "
            f"the batch's size (traced on {n} rows; plates: {shown or 'none'}); a per-data-point "
            "bound needs every sample site inside one pyro.plate(name, x.shape[0]) (pass "
            "plate=NAME where several plates have that size)")
    return follow.pop()


def data_dim(site: dict, name: str, plate: str) -> int:
    """The (negative) batch dimension of the plate named ``plate`` at ``site``."""
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame.dim
    raise ValueError(
        f"sample site {name!r} is outside the plate {plate!r}: a per-data-point bound needs "
        "every sample site of model and guide inside the data plate, so that log-weights "
        "factorize per data point (a global latent has no per-point weight)"
    )


def log_prob_per_site(trace, plate: str) -> dict[str, torch.Tensor]:
    """Each sample site's unscaled log-probability summed per data point: ``(k, n)``, with k
    the particles in front of the data plate (1 for a site that no particle reaches)."""
    trace.compute_log_prob()
    return {name: per_point(scale_and_mask(site["unscaled_log_prob"], mask=site["mask"]),
                             data_dim(site, name, plate))
            for name, site in sample_sites(trace)}


def log_prob_per_point(trace, plate: str) -> torch.Tensor:
    """The sum of :func:`log_prob_per_site` over sites: ``(k, n)``."""
    return sum(log_prob_per_site(trace, plate).values())


def scale_per_point(traces: dict, plate: str) -> torch.Tensor | float:
    """The one scale that weighs each data point's terms, ``(n,)`` (or a number), the same at
    every sample site of ``traces`` (``{"model": trace, "guide": trace}``). Sites scaled
    unlike one another inside a point (a KL weight on ``z`` alone) have no
    importance-weighted meaning and are refused by name."""
    scales = {}
    for role, trace in traces.items():
        for name, site in sample_sites(trace):
            scale = site["scale"]
            if isinstance(scale, torch.Tensor) and scale.dim() > 0:
                rows = scale.expand(site["fn"].batch_shape).movedim(
                    data_dim(site, name, plate), -1)
                rows = rows.reshape(-1, rows.shape[-1])
                if not bool((rows == rows[:1]).all()):
                    raise ValueError(f"{role} site {name!r} scales the terms of one data point "
                                     "unequally: its scale varies outside the data plate")
                scale = rows[0]
            scales[f"{role} site {name!r}"] = scale
    first_name, first = next(iter(scales.items()))
    for name, scale in scales.items():
        tensors = isinstance(scale, torch.Tensor) or isinstance(first, torch.Tensor)
        if not (bool(torch.as_tensor(scale == first).all()) if tensors else scale == first):
            raise ValueError(
                f"{first_name} and {name} are scaled differently ({_show(first)}"
                f" and {_show(scale)}): an importance-weighted bound scales each data point's "
                "whole bound, not the terms inside its logarithm; put poutine.scale around "
                "model and guide alike (for a KL weight on z alone, train with 'meanfield' or "
                "'trace')")
    return first


def replayed(model: Callable, guide: Callable, *args, **kwargs):
    """``(model_trace, guide_trace)``: the guide traced on ``args``, the model replayed on
    its draws, hidden from any handler outside (``poutine.block``)."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs)
    return model_trace, guide_trace


def plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """The deepest plate dimension used by model and guide (1 for a single data plate)."""
    model_trace, guide_trace = replayed(model, guide, *args, **kwargs)
    return max((-frame.dim for trace in (model_trace, guide_trace)
                for _, site in sample_sites(trace) for frame in site["cond_indep_stack"]
                if frame.vectorized), default=0)


# Particles of one data point: a plate of their own in front of every other, so that a site's
# log-probability is (particles, ..., points) and :func:`per_point` sums it to (k, n).
PARTICLES = "_particles"


def draw_latents(guide, args, k, nesting, plate) -> tuple[dict, torch.Tensor]:
    """k draws of the guide's latents for the rows of ``args``, from the current random
    state, and their log q(z | x): ``({site: (value, the value's data dimension)}, (k, n))``."""
    with pyro.plate(PARTICLES, k, dim=-nesting - 1):
        trace = poutine.trace(guide).get_trace(*args)
    latents = {name: (site["value"], data_dim(site, name, plate) - site["fn"].event_dim)
               for name, site in sample_sites(trace)}
    return latents, log_prob_per_point(trace, plate)


def log_joint(model, args, latents, nesting, plate) -> torch.Tensor:
    """log p(x, z) for given latents, summed per data point: ``(k, n)``."""
    k = next(iter(latents.values())).shape[0]
    with pyro.plate(PARTICLES, k, dim=-nesting - 1):
        model_trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(*args)
    return log_prob_per_point(model_trace, plate)


def per_point(batch: torch.Tensor, dim: int) -> torch.Tensor:
    """A tensor of a site's batch shape summed over every dimension but the particles' (in
    front) and the data plate's ``dim``: ``(k, n)``."""
    batch = batch.movedim(dim, -1)
    if batch.dim() == 1:
        batch = batch.unsqueeze(0)
    return batch.reshape(batch.shape[0], -1, batch.shape[-1]).sum(1)


def _show(scale) -> str:
    return f"{scale.tolist()}" if isinstance(scale, torch.Tensor) else f"{scale}"
