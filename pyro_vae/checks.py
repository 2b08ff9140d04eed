r"""What :func:`pyro_vae.fit` checks when a model meets its data, before the first step.

A user's model needs no rule beyond Pyro's own; what pyro-vae reads from it (the latent
sites, the observed site, the plate over the data) comes from its traces. What cannot be
read is checked here, once, with a message that names the rule (the table in
``docs/extending.md``):

- :func:`check_support`: every row of every split lies in the support of the model's
  observed site, the distribution that scores it (``Bernoulli`` in [0, 1], ...); the
  first rows outside it are named by split, row and value. A distribution built with
  ``validate_args=False`` has opted out of Pyro's check, and so out of this one (as Pyro's
  own VAE example does, to score grey levels with a Bernoulli).
- :func:`check_labels`: labels are integers, ``-1`` (unknown) or a class of the model
  (``0 .. num_classes - 1`` where the model object says ``num_classes``).
- :class:`ParamsSeen`: the parameters of the first step are all there ever are; one first
  reached later (a branch, a second head) would get gradients and never a step.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pyro
import torch
from torch.distributions import constraints

from .data import Dataset, as_arguments
from .traces import replayed, sample_sites

_CHUNK = 10_000  # rows checked at a time: a few MB of booleans, not a copy of the split
_SHOWN = 5  # rows named in a message


def check_support(model: Callable, guide: Callable, data: Dataset, labelled: bool) -> None:
    """Raise a ``ValueError`` naming the first rows of ``data`` (train and test, every row)
    outside the support of the model's observed site. The site is found on a batch of two
    rows: an observed site whose value is the batch ``x`` (any reshape of it)."""
    args = next(as_arguments(data.eval_batches("train", 2, labels=labelled), labelled))
    x = args[0]
    devices = [x.device] if x.is_cuda else []
    with torch.no_grad(), pyro.validation_enabled(True), torch.random.fork_rng(devices=devices):
        trace, _ = replayed(model, guide, *args)
    for name, site in sample_sites(trace):
        value = site["value"]
        if not site["is_observed"] or value.shape[:1] != x.shape[:1] \
                or value.numel() != x.numel() or not torch.equal(value.reshape(x.shape), x):
            continue  # not the data (a label, a term of the data's function)
        if _opted_out(site["fn"]):
            continue
        support, base = site["fn"].support, _elementwise(site["fn"].support)
        shown = []
        for split in ("train", "test"):
            for start, chunk in zip(itertools.count(0, _CHUNK), data.eval_batches(split, _CHUNK)):
                chunk = chunk.reshape(-1, *value.shape[1:])
                inside = support.check(chunk).reshape(chunk.shape[0], -1).all(1)
                for i in (~inside).nonzero()[:, 0].tolist()[: _SHOWN + 1 - len(shown)]:
                    row = chunk[i].flatten()
                    outside = ~base.check(row) if base is not None else torch.ones_like(row).bool()
                    j = int(outside.nonzero()[0, 0]) if outside.any() else 0
                    shown.append(f"{data.row(split, start + i)}: {row[j].item():g} at position {j}")
                if len(shown) > _SHOWN:
                    break
            if len(shown) > _SHOWN:
                break
        if shown:
            raise ValueError(
                f"data outside the support of the model's observed site {name!r} "
                f"({_public_name(_unwrapped(site['fn']))}, support {_describe(support)}): "
                + "; ".join(shown[:_SHOWN]) + (" (and more)" if len(shown) > _SHOWN else "")
                + f". Every row must lie in it: {_advice(support)}")


def check_labels(owner, data: Dataset) -> None:
    """Raise a ``ValueError`` naming the first label of ``data`` that is not ``-1`` or a
    class of the model (``owner.num_classes``, where the model object has it)."""
    classes = getattr(owner, "num_classes", None)
    for split in ("train", "test"):
        y = data.labels(split)
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"the {split} labels are {y.dtype}: labels are integers, -1 for "
                             "an unknown label")
        wrong = (y < -1) | (y >= classes) if classes is not None else y < -1
        if wrong.any():
            i = int(wrong.nonzero()[0, 0])
            valid = f"0 .. {classes - 1}" if classes is not None else "0, 1, ..."
            raise ValueError(f"label {int(y[i])} of {data.row(split, i)} is not a class of the "
                             f"model ({valid}, or -1 for unknown)")


class ParamsSeen:
    """The parameters the optimizer was built with; :meth:`check` after a step raises a
    ``RuntimeError`` naming any parameter that the param store gained since."""

    def __init__(self, params: dict):
        self.names = set(params)

    def check(self, where: str) -> None:
        store = pyro.get_param_store()
        if len(store) == len(self.names):  # the cheap test, every step
            return
        new = sorted(set(store.keys()) - self.names)
        raise RuntimeError(
            f"parameters {new} first appeared {where}, after the optimizer was built from "
            "the parameters of the first step: they would get gradients and never a step. "
            "Declare every parameter on every call of model and guide (register each module "
            "with pyro.module at the top, outside any branch)")


def _opted_out(fn) -> bool:
    """Whether ``fn`` (or a distribution it wraps) was built with ``validate_args=False``
    (the trace was made with validation on, so False is the author's own choice)."""
    while fn is not None:
        if getattr(fn, "_validate_args", None) is False:
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def _unwrapped(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


def _public_name(fn) -> str:
    """The first public class of ``fn``'s (Bernoulli, for pyro-vae's private subclass)."""
    return next(c.__name__ for c in type(fn).__mro__ if not c.__name__.startswith("_"))


def _elementwise(support):
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support if support.event_dim == 0 else None


def _describe(support) -> str:
    base = _elementwise(support)
    if base is constraints.unit_interval:
        return "[0, 1]"
    if base is constraints.boolean:
        return "{0, 1}"
    if base is constraints.positive:
        return "(0, inf)"
    if base is constraints.nonnegative:
        return "[0, inf)"
    if isinstance(base, constraints.interval | constraints.integer_interval):
        return f"[{base.lower_bound}, {base.upper_bound}]"
    return str(base if base is not None else support)


def _advice(support) -> str:
    base = _elementwise(support)
    if base is constraints.unit_interval:
        return ("likelihoods on [0, 1] (bernoulli, continuous-bernoulli) need data in [0, 1]; "
                "for other real values use a Gaussian-family likelihood (gaussian, "
                "gaussian-shared, gaussian-fixed, laplace)")
    if base is constraints.boolean:
        return ("a Bernoulli of Pyro's needs binary data: binarize them (mnist-binary), or "
                "score grey levels with pyro-vae's bernoulli or continuous-bernoulli")
    return "fix the data, or choose a likelihood whose support holds them"
