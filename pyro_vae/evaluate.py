r"""Held-out evaluation of a trained model/guide pair: bounds, likelihood and diagnostics.

- :func:`elbo`: the evidence lower bound per example.
- :func:`log_likelihood`: the importance-sampled estimate of :math:`\log p(x)`, the bound
  :math:`\mathcal{L}_K` of Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
  Autoencoders" (K = 5000 in their tables).
- :func:`active_units`: Burda et al.'s count of latent dimensions the data use.
- :func:`kl_per_dimension`: :math:`\mathrm{KL}(q(z_u \mid x) \,\|\, \mathcal{N}(0, 1))` per
  dimension, the picture of posterior collapse.
- :func:`gradient_snr`: the signal-to-noise ratio of an estimator's gradients (Rainforth et
  al., 2018, "Tighter Variational Bounds are Not Necessarily Better").

Functions take the data as a tensor ``x``; for a dynamically binarized dataset pass one
fixed binarization (:meth:`pyro_vae.Dataset.eval_batches` draws one from a stated seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from tqdm import tqdm

from .data import Dataset, as_arguments
from .estimators import make_elbo, mean_loss
from .memory import reuse_freed_memory
from .traces import (
    data_plate,
    draw_latents,
    log_joint,
    plate_nesting,
    sample_sites,
    takes_labels,
)

_BYTES_PER_CODE_AND_DIM = 16  # decoder output, log-prob and temporaries, float32


def elbo(
    model: Callable,
    guide: Callable,
    data: Dataset,
    split: str = "test",
    num_particles: int = 1,
    batch_size: int = 500,
    seed: int = 0,
    hide_labels: bool = False,
) -> float:
    r"""The ELBO :math:`\mathbb{E}_q[\log p(x, z) - \log q(z \mid x)]` of ``split`` in nats
    per example, on one fixed binarization (seed :data:`~pyro_vae.data.EVAL_SEED`) for
    binarized datasets. A guide with one latent site gets ``TraceMeanField_ELBO``
    (closed-form KL where one is known); a guide with several gets ``Trace_ELBO`` (sampled
    KL), because the closed form would take a later site's draw, which depends on the
    earlier site's draw, as given, and so miss the dependence (a hierarchy such as the
    two-layer VAE of experiments/iwae_paper.py); a guide with a site marked for enumeration
    gets ``TraceEnum_ELBO``, and so does a guide whose discrete sites can all be enumerated
    (one categorical code, a mixture's component): they are then summed out exactly. A model
    of ``(x, y)`` is given each batch's labels, or with ``hide_labels`` the label ``-1``
    (unknown) for every example: the bound on log p(x) of a semi-supervised model, whose y is
    then a latent variable. The latent draws come from ``seed``; the caller's random state
    is left as it was.

    Example (the ELBO of binary data is a log-probability's lower bound, so below 0):

    >>> import torch
    >>> from pyro_vae import VAE, Dataset, elbo
    >>> x = torch.rand(64, 4).round()
    >>> data = Dataset("toy", x_train=x[:48], x_test=x[48:])
    >>> vae = VAE(x_dim=4, z_dim=2, hidden=[8])
    >>> elbo(vae.model, vae.guide, data) < 0
    True
    """
    labelled = takes_labels(model, guide)
    first = next(as_arguments(data.eval_batches(split, 1, labels=labelled), labelled))
    if labelled and hide_labels:
        first = (first[0], torch.full_like(first[1], -1))
    name = elbo_estimator(guide, *first)
    estimator = make_elbo(name, num_particles=num_particles)
    batches = data.eval_batches(split, batch_size, labels=labelled)
    if labelled and hide_labels:
        batches = ((x, torch.full_like(y, -1)) for x, y in batches)
    # TraceMeanField_ELBO's closed-form KL is right for a discrete code too (a Bernoulli
    # code, several one-hot groups); only its validation asks for reparameterized draws,
    # which a loss without gradients does not need
    checks = pyro.validation_enabled(False) if name == "meanfield" else nullcontext()
    with torch.random.fork_rng(devices=[data.x_test.device] if data.x_test.is_cuda else []), \
            checks:
        pyro.set_rng_seed(seed)
        return -mean_loss(estimator, model, guide, batches)


def elbo_estimator(guide: Callable, *args: torch.Tensor) -> str:
    """The estimator :func:`elbo` uses for ``guide``: ``"enum"`` if a site is marked for
    enumeration or the guide's discrete sites can all be enumerated, else ``"meanfield"``
    for one latent site, ``"trace"`` for several."""
    devices = [args[0].device] if args[0].is_cuda else []
    with poutine.block(), torch.random.fork_rng(devices=devices):
        trace = poutine.trace(guide).get_trace(*args)
    latent = [site for _, site in sample_sites(trace) if not site["is_observed"]]
    discrete = [site for site in latent if not site["fn"].has_rsample]
    if any(site["infer"].get("enumerate") for site in latent) or (
            discrete and all(site["fn"].has_enumerate_support for site in discrete)):
        return "enum"  # discrete codes small enough to sum out, exactly
    return "meanfield" if len(latent) == 1 else "trace"


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_samples: int = 5000,
    seed: int = 0,
    memory_mb: float = 64,
    plate: str | None = None,
    progress: bool = False,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Per-example importance-sampled estimates of :math:`\log p(x)`, shape ``(N,)``:

    .. math:: \log \frac{1}{K} \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)},
              \qquad z_k \sim q(z \mid x),

    a lower bound in expectation that tightens to :math:`\log p(x)` as K grows. Any
    model/guide pair works whose sample sites all lie in the plate over the data (``plate``;
    by default the one whose size is the batch's): the log-probabilities of each trace are
    summed per data point before the log-mean-exp.

    A model of ``(x, y)`` gets the labels ``y`` (one per row of ``x``): the estimate is then
    of :math:`\log p(x \mid y)` for a conditional model. Example ``i``'s K samples come from a
    random stream of its own, seeded by ``(seed, i)``,
    so the result does not depend on the chunking, which keeps the decoder's work on about
    ``memory_mb`` megabytes at a time. The caller's random state is left as it was.

    Example (an untrained VAE: log p(x) of a binary row is at most 0):

    >>> import torch
    >>> from pyro_vae import VAE, log_likelihood
    >>> vae = VAE(x_dim=4, z_dim=2, hidden=[8])
    >>> x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    >>> ll = log_likelihood(vae.model, vae.guide, x, num_samples=1000)
    >>> ll.shape
    torch.Size([2])
    >>> bool(torch.all(ll < 0))
    True
    """
    reuse_freed_memory()  # chunks of megabytes would otherwise page-fault afresh
    n, k = x.shape[0], num_samples
    n_chunk, k_chunk = chunk_shape(k, x[0].numel(), memory_mb)
    result = torch.empty(n, device=x.device)
    devices = [x.device] if x.device.type == "cuda" else []
    labelled = takes_labels(model, guide)
    if labelled and (y is None or y.shape[:1] != x.shape[:1]):
        raise ValueError("the model takes labels (x, y): pass one label per row of x as y=")
    args = (lambda rows: (x[rows], y[rows])) if labelled else (lambda rows: (x[rows],))
    bar = tqdm(total=n, desc=f"IS-{k} log-likelihood", unit="example", disable=not progress)
    with torch.random.fork_rng(devices=devices):
        nesting = plate_nesting(model, guide, *args(slice(0, 1)))
        plate = plate or data_plate(model, guide, *args(slice(0, min(n, 3))))
        for start in range(0, n, n_chunk):
            xs = x[start : start + n_chunk]
            draws = [_draw_latents(guide, args(slice(start + i, start + i + 1)), k, seed,
                                   start + i, nesting, plate)
                     for i in range(xs.shape[0])]
            latents = {name: torch.cat([d[name][0] for d, _ in draws], dim=draws[0][0][name][1])
                       for name in draws[0][0]}
            log_q = torch.cat([q for _, q in draws], dim=1)
            log_w = torch.cat([
                log_joint(model, args(slice(start, start + xs.shape[0])),
                           {s: v[j : j + k_chunk] for s, v in latents.items()},
                           nesting, plate) - log_q[j : j + k_chunk]
                for j in range(0, k, k_chunk)
            ])
            result[start : start + xs.shape[0]] = torch.logsumexp(log_w, dim=0) - math.log(k)
            bar.update(xs.shape[0])
    bar.close()
    return result


def chunk_shape(num_samples: int, x_dim: int, memory_mb: float) -> tuple[int, int]:
    """(examples, samples) per chunk of :func:`log_likelihood`: as many (sample, example)
    pairs as fit ``memory_mb``, all samples of an example together where they fit, and
    otherwise the samples split into equal parts."""
    codes = max(1, int(memory_mb * 2**20) // (_BYTES_PER_CODE_AND_DIM * x_dim))
    n_chunk = max(1, codes // num_samples)
    parts = -(-num_samples * n_chunk // codes)
    return n_chunk, -(-num_samples // parts)


def _draw_latents(guide, args, k, seed, index, nesting, plate) -> tuple[dict, torch.Tensor]:
    """Example ``index``'s k latent samples, from a stream of its own, and their
    log q(z | x): ``({site: (value, the value's data dimension)}, (k, 1))``.
    The guide scores its own draws: a flow guide never has to invert its transform."""
    # torch seeds its CPU generator with 32 bits: a golden-ratio step keeps the examples of
    # one seed on distinct streams and puts different seeds far apart.
    # (torch.manual_seed would also queue a seed for every CUDA device: 0.1 ms an example)
    stream = (seed * 0x9E3779B1 + index) % 2**32
    if args[0].is_cuda:
        torch.cuda.default_generators[args[0].device.index].manual_seed(stream)
    else:
        torch.default_generator.manual_seed(stream)
    return draw_latents(guide, args, k, nesting, plate)


# --------------------------------------------------------------------------- diagnostics


# The functions below take ``y``, the labels of the rows of ``x``, for a model/guide pair of
# ``(x, y)`` (a conditional VAE); None for a pair of ``x`` alone.


def labels_for(model: Callable, guide: Callable, data: Dataset, split: str = "test"):
    """The labels of ``split`` (file order, as :meth:`Dataset.eval_batches`) for a pair of
    ``(x, y)``; None for a pair of ``x`` alone."""
    return data.labels(split) if takes_labels(model, guide) else None


def semi_supervised(built) -> bool:
    """Whether a built model is semi-supervised: it has a classifier ``classify(x)`` (the
    most likely class under q(y | x)), and its y is a latent variable wherever the label it
    is given is ``-1``. Its bounds and figures are then of unlabelled examples (every label
    hidden: log p(x), y summed out), and its classifier is scored against the labels."""
    return callable(getattr(built, "classify", None))


def _arguments(x: torch.Tensor, y: torch.Tensor | None) -> tuple:
    return (x,) if y is None else (x, y)


# ``site=None`` names the guide's one latent site, whatever it is called ("z" in the built-in
# VAE, "latent" in Pyro's example): read from the guide's trace, not assumed.


def latent_site(fn: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> str:
    """The one continuous latent sample site of ``fn`` (a guide, or a model; enumerated and
    discrete sites aside); a ``ValueError`` naming them where there are several or none."""
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(fn).get_trace(*(a[:1] for a in _arguments(x, y)))
    latent = [(name, site) for name, site in sample_sites(trace) if not site["is_observed"]]
    names = [name for name, site in latent
             if not site["infer"].get("enumerate") and not site["fn"].support.is_discrete]
    if len(names) != 1:
        discrete = sorted(set(name for name, _ in latent) - set(names))
        raise ValueError(f"it has {len(names)} continuous latent sites {names}"
                         + (f" (and the discrete {discrete})" if discrete else "")
                         + ", and this diagnostic is of one continuous site (in Python: "
                         "site=NAME)")
    return names[0]


@torch.no_grad()
def posterior(guide: Callable, x: torch.Tensor, site: str | None = None,
              batch_size: int = 1000, y: torch.Tensor | None = None):
    """The guide's distribution at ``site`` (default: its one latent site) for every row of
    ``x``, batch by batch."""
    site = site or latent_site(guide, x, y)
    for start in range(0, x.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        trace = poutine.trace(guide).get_trace(*(a[rows] for a in _arguments(x, y)))
        if site not in trace.nodes:
            raise ValueError(f"the guide has no sample site {site!r}")
        yield trace.nodes[site]["fn"]


def posterior_means(guide: Callable, x: torch.Tensor, site: str | None = None,
                    y: torch.Tensor | None = None) -> torch.Tensor:
    """The guide's posterior mean at ``site`` for every row of ``x`` (the mean of 64 draws
    where the distribution has none in closed form, as a flow's)."""

    def mean(q):
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((64,)).mean(0)

    with torch.no_grad():
        return torch.cat([mean(q) for q in posterior(guide, x, site, y=y)])


def active_units(
    guide: Callable, x: torch.Tensor, threshold: float = 0.01, site: str | None = None,
    y: torch.Tensor | None = None,
) -> tuple[int, torch.Tensor]:
    r"""Burda et al.'s active units: the number of dimensions u with
    :math:`A_u = \mathrm{Cov}_x(\mathbb{E}_{q(z \mid x)}[z_u]) > ` ``threshold``, and every
    :math:`A_u` (:func:`posterior_means`)."""
    variances = posterior_means(guide, x, site, y).var(dim=0)
    return int((variances > threshold).sum()), variances


def kl_per_dimension(guide: Callable, x: torch.Tensor, site: str | None = None,
                     y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Mean over ``x`` of :math:`\mathrm{KL}(q(z_u \mid x) \,\|\, \mathcal{N}(0, 1))` for each
    dimension u, in closed form for a diagonal Normal guide:
    :math:`\tfrac12(\mu_u^2 + \sigma_u^2 - 1) - \log \sigma_u`. Sums to the mean KL term.

    Example (an untrained guide; each KL is at least 0):

    >>> import torch
    >>> from pyro_vae import VAE, kl_per_dimension
    >>> vae = VAE(x_dim=4, z_dim=3, hidden=[8])
    >>> kl = kl_per_dimension(vae.guide, torch.rand(16, 4).round())
    >>> kl.shape, bool((kl >= 0).all())
    (torch.Size([3]), True)
    """
    total, n = 0.0, 0
    site = site or latent_site(guide, x, y)
    for q in posterior(guide, x, site, y=y):
        base = q.base_dist if isinstance(q, dist.Independent) else q
        if not isinstance(base, dist.Normal):
            raise ValueError(f"kl_per_dimension needs a Normal guide at {site!r}, got {base}")
        kl = 0.5 * (base.loc**2 + base.scale**2 - 1) - base.scale.log()
        total = total + kl.sum(0)
        n += kl.shape[0]
    return total / n


def gradient_snr(
    model: Callable, guide: Callable, estimator: ELBO, x: torch.Tensor, num_draws: int = 100,
    skip: tuple[str, ...] = (),
) -> dict[str, dict[str, float]]:
    r"""For the current parameters, draw ``estimator``'s gradient ``num_draws`` times and
    report for the guide's (``encoder``) and the model's (``decoder``) parameters:

    - ``snr``: :math:`|\mathbb{E}[g]| / \mathrm{std}[g]` per parameter, averaged over the
      parameters whose gradient varies (Rainforth et al., 2018);
    - ``variance``: :math:`\sum \mathrm{Var}[g]` over the parameters.

    Gradients are those of the batch's summed loss, as in training; the parameters are
    left without gradients, so a training step after this call is unaffected. Parameters
    whose names start with one of ``skip`` are left out (a score-function baseline's, which
    only one estimator trains).
    """
    groups = {role: [n for n in _param_names(fn, x) if not n.startswith(skip)]
              for role, fn in (("encoder", guide), ("decoder", model))}
    wanted = {name for names in groups.values() for name in names}
    params = {n: p for n, p in pyro.get_param_store().named_parameters() if n in wanted}
    sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    squares = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    for _ in range(num_draws):
        for p in params.values():
            p.grad = None
        estimator.loss_and_grads(model, guide, x)
        for name, p in params.items():
            g = p.grad.double() if p.grad is not None else torch.zeros_like(sums[name])
            sums[name] += g
            squares[name] += g * g
    for p in params.values():  # leave no gradient behind for a training step to add to
        p.grad = None
    result = {}
    for group, names in groups.items():
        mean = torch.cat([sums[n].flatten() for n in names]) / num_draws
        var = (torch.cat([squares[n].flatten() for n in names]) / num_draws - mean**2).clamp(min=0)
        std = var.sqrt()
        varies = std > 1e-12 * (mean.abs() + 1)
        snr = (mean.abs()[varies] / std[varies]).mean().item() if varies.any() else math.inf
        result[group] = {"snr": snr, "variance": var.sum().item()}
    return result


def _param_names(fn: Callable, x: torch.Tensor) -> list[str]:
    with poutine.block():
        trace = poutine.trace(fn, param_only=True).get_trace(x)
    return sorted(trace.nodes)


# --------------------------------------------------------------------------- what a model draws
# Figures of any model/guide pair, from their traces alone: the model's one observed site
# gives the means of p(x | z); nothing here needs a decoder or an encoder by name.


@torch.no_grad()
def prior_means(model: Callable, x_like: torch.Tensor, n: int,
                y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` for ``n`` draws :math:`z \sim p(z)` of the model's own
    prior. The rows of ``x_like`` (repeated to ``n``) only stand in for the data the model is
    called with: its batch size, its checks; the labels ``y`` (repeated alike) are what a
    conditional model draws from."""
    args = (_rows(a, n) for a in _arguments(x_like, y))
    return _observed(poutine.trace(model).get_trace(*args)).mean


@torch.no_grad()
def reconstruction_means(model: Callable, guide: Callable, x: torch.Tensor,
                         y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` at the guide's posterior mean of every latent site (one
    draw of it where the guide's distribution has no mean in closed form, as a flow's)."""
    guide_trace = poutine.trace(guide).get_trace(*_arguments(x, y))
    latents = {name: _mean(site["fn"], site["value"]) for name, site in sample_sites(guide_trace)}
    trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(*_arguments(x, y))
    return _observed(trace, held=latents).mean


@torch.no_grad()
def decoded_means(model: Callable, z: torch.Tensor, x_like: torch.Tensor,
                  site: str | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    r"""Means of :math:`p(x \mid z)` at the given latent codes ``z`` (one per row), the model's
    latent site ``site`` (default: its one latent site) held at them; ``x_like`` and ``y``
    as in :func:`prior_means`."""
    site = site or latent_site(model, x_like, y)
    z = z.to(x_like.device)
    args = (_rows(a, z.shape[0]) for a in _arguments(x_like, y))
    trace = poutine.trace(poutine.condition(model, data={site: z})).get_trace(*args)
    return _observed(trace, held={site}).mean


def latent_dims(model: Callable, x_like: torch.Tensor,
                y: torch.Tensor | None = None) -> dict[str, int]:
    """Each latent (unobserved) sample site of ``model`` and its number of dimensions."""
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(*(a[:1] for a in _arguments(x_like, y)))
    return {name: site["value"][0].numel() for name, site in sample_sites(trace)
            if not site["is_observed"]}


def standard_normal_prior(model: Callable, x_like: torch.Tensor, site: str | None = None,
                          y: torch.Tensor | None = None) -> bool:
    """Whether ``model``'s prior at ``site`` (default: its one latent site) is N(0, I), the
    prior that :func:`kl_per_dimension` measures against."""
    try:
        site = site or latent_site(model, x_like, y)
    except ValueError:
        return False
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(*(a[:2] for a in _arguments(x_like, y)))
    if site not in trace.nodes:
        return False
    fn = trace.nodes[site]["fn"]
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return (isinstance(fn, dist.Normal) and bool((fn.loc == 0).all())
            and bool((fn.scale == 1).all()))


def _observed(trace, held=()):
    """The distribution at the model's one observed site (the latents ``held`` at given
    values are observed too, in Pyro's eyes, and are left out)."""
    observed = [site for name, site in sample_sites(trace)
                if site["is_observed"] and name not in held]
    if len(observed) != 1:
        names = [site["name"] for site in observed]
        raise ValueError(f"the model observes {len(observed)} sites {names}: drawing data "
                         "needs exactly one observed site")
    return observed[0]["fn"]


def _mean(fn, value: torch.Tensor) -> torch.Tensor:
    base = fn.base_dist if isinstance(fn, dist.Independent) else fn
    if isinstance(base, dist.Categorical):  # a class index has no mean: its likeliest class
        return base.probs.argmax(-1)
    try:
        return fn.mean
    except NotImplementedError:
        return value


def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``x``, repeating it where it has fewer."""
    return x.repeat(-(-n // x.shape[0]), *[1] * (x.dim() - 1))[:n]
