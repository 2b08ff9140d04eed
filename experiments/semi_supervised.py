r"""Semi-supervised learning with deep generative models: the M2 model of Kingma, Rezende,
Mohamed & Welling (2014), "Semi-Supervised Learning with Deep Generative Models", on MNIST
with 100, 600, 1000 and 3000 labels.

    .venv/bin/python experiments/semi_supervised.py --labels 100 --epochs 10     # validation
    .venv/bin/python experiments/semi_supervised.py --labels 100 --epochs 10 --batches mixed
    .venv/bin/python experiments/semi_supervised.py --labels 100 --epochs 10 --test  # final
    .venv/bin/python experiments/semi_supervised.py --model m1-m2 --labels 100 --epochs 30 \
        --repeat 50 --lr 0.002                                    # M1+M2 (M1 trained first)
    .venv/bin/python experiments/semi_supervised.py --quick          # seconds (tests)

The generative model, for every image, labelled or not:

.. math:: y \sim \mathrm{Cat}(1/10), \quad z \sim \mathcal{N}(0, I), \quad
          x \sim \mathrm{Bernoulli}(\mathrm{decoder}(y, z)),

and the guide :math:`q(y \mid x)\, q(z \mid x, y)`, the first factor being the classifier.
For a labelled image y is observed and the bound is the ELBO of :math:`(x, y)`; for an
unlabelled one y is a latent variable that ``TraceEnum_ELBO`` (the estimator ``enum``) sums
out exactly over its ten values, in parallel, under :math:`q(y \mid x)`:
:math:`\mathcal{U}(x) = \sum_y q(y \mid x)\,(\mathcal{L}(x, y) - \log q(y \mid x))`. Nothing
in that bound makes the classifier agree with the labels, so the paper adds
:math:`\alpha \cdot (-\log q(y \mid x))` for every labelled image (its equation 9). The
paper's α = 0.1·N is a total over the labelled set; here ``--alpha`` weighs each labelled
image each time it is seen (default 50: the paper's weight per label at 100 labels of
N = 50,000, shown once an epoch; Pyro's own M2 example uses 46).

Data: dynamically binarized MNIST (a fresh Bernoulli draw of every batch; ``--pixels grey``:
the grey levels themselves scored by the Bernoulli log-mass, as Pyro's tutorial does). The
first 50,000 training images train, of which ``--labels`` keep their label: the same number
from each class, drawn by ``--label-seed`` (0); the last 10,000 are the validation split,
scored by the classifier after every epoch, where every setting is chosen (as the paper and
Pyro's tutorial hold them out). Both are ``Dataset.held_out`` and ``Dataset.keep_labels``,
recorded in the run, so ``pyro-vae evaluate RUN --model experiments/semi_supervised.py:M2``
opens it on the same split. Each labelled image is seen ``--repeat`` times an epoch, in
batches of labelled images alone spread among the unlabelled ones (``--batches separate``,
Pyro's SS-VAE) or shuffled in with them (``--batches mixed``).
Networks as in Pyro's example: one hidden layer of 500 softplus units in the classifier, the
encoder of z (input: x and y one-hot) and the decoder (input: z and y one-hot); 50 latent
dimensions; Adam ``--lr`` 4.2e-4; ``--batch-size`` 200.

``--model m1-m2`` is the paper's stacked model (its section 3.2, :class:`StackedM2`): M1,
a VAE (784-500-500-50 tanh, Adam 1e-3, batch 100, ``--m1-epochs`` 50) trained on the 50,000
training images without labels, then M2 on M1's posterior samples of its code z1, a
Gaussian p(z1 | y, z2) in place of the pixels' Bernoulli, over M1's active dimensions only
(``--m1-dims active``, as the paper's code; the others keep M1's prior N(0, 1)); M1 is
trained once (runs/m1-...) and shared by every label count and label set.

Each setting and label count is a run directory (runs/labels-N plus the settings changed)
that resumes: run the same command with more ``--epochs``. A validation run writes
results/semi_supervised/validation/NAME.json; the same command with ``--test`` continues
(or reopens) that run and reads the test set once, at the end, with the parameters of
its epoch of lowest validation error (``best_epoch.pt`` in the run directory, kept as it
trains), into results/NAME.json, with style-N.png. README.md and validation_error.png are
rebuilt from all of them; before/ keeps the previous round's runs (all 60,000 images
trained, settings screened on the test set).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import nn

from pyro_vae import VAE, Callback, Config, build_model, fit, load_dataset
from pyro_vae.data import Dataset
from pyro_vae.networks import Decoder, Encoder, concat, mlp
from pyro_vae.plots import image_panels
from pyro_vae.rundir import (
    atomic_save,
    declare_params,
    load_checkpoint,
    params_on,
    read_data,
    read_metrics,
    read_model,
    restore_params,
)
from pyro_vae.spec import rebuild
from pyro_vae.traces import log_prob_per_point, replayed

# Test error (%) of the paper's M2 (Kingma et al., 2014, Table 1), by number of labels.
PAPER = {100: (11.97, 1.71), 600: (4.94, 0.13), 1000: (3.60, 0.56), 3000: (3.92, 0.63)}
PAPER_M1_M2 = {100: (3.33, 0.14), 600: (2.59, 0.05), 1000: (2.40, 0.02), 3000: (2.18, 0.04)}
# Test error (%) of Pyro's SS-VAE tutorial (tutorial/source/ss-vae.ipynb, its table: 1 - the
# mean accuracy of 5 label sets, enumeration and the auxiliary loss).
PYRO_TUTORIAL = {100: 6.81, 600: 5.63, 1000: 5.13, 3000: 4.18}
CLASSES = 10
VALIDATION = 10_000  # the last training images, held out for choosing settings (as the paper)
BEST = "best_epoch.pt"  # in a run directory: the parameters of its lowest validation error


class M2(nn.Module):
    """The M2 model and guide for images of ``x_dim`` numbers in [0, 1] (or {0, 1}).

    ``model(x, y)``/``guide(x, y)``: ``y[i] = -1`` marks an unlabelled image. Labelled images
    live in the plate ``labelled`` (sites ``z_labelled``, ``y_labelled``, ``x_labelled`` and
    the classification term ``y_classified``), unlabelled ones in the plate ``data`` (sites
    ``z``, ``y``, ``x``), so a batch of unlabelled images is an ordinary VAE batch whose
    guide has one more, enumerated, site."""

    num_classes = CLASSES  # fit checks every label against it

    def __init__(self, x_dim: int = 784, z_dim: int = 50, hidden: int = 500,
                 alpha: float = 50.0, activation: str = "softplus", grey: bool = False):
        super().__init__()
        # grey: pixels are grey levels in [0, 1] scored by the Bernoulli log-mass
        # x log p + (1 - x) log(1 - p), as Pyro's SS-VAE does; not a normalized density
        self.z_dim, self.alpha, self.grey = z_dim, alpha, grey
        self.classifier = mlp([x_dim, hidden, CLASSES], activation)  # logits of q(y | x)
        self.encoder = Encoder(x_dim + CLASSES, [hidden], z_dim, activation)  # q(z | x, y)
        self.decoder = Decoder(z_dim + CLASSES, [hidden], x_dim, activation)  # p(x | y, z)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("classifier", self.classifier)
        known = y >= 0
        if known.any():
            with pyro.plate("labelled", int(known.sum())):
                seen = self._generate(x[known], y[known], "_labelled")
                if self.alpha > 0:  # the paper's classification term, alpha * log q(y | x)
                    with poutine.scale(scale=self.alpha):
                        pyro.sample("y_classified", dist.Categorical(logits=self.classifier(
                            seen)), obs=y[known])
        if not known.all():
            with pyro.plate("data", int((~known).sum())):
                self._generate(x[~known], None, "")

    def _generate(self, x, y, suffix: str) -> torch.Tensor:
        """The sites of one plate's images; returns what the classifier reads."""
        n = x.shape[0]
        z = pyro.sample(f"z{suffix}", dist.Normal(x.new_zeros(n, self.z_dim), 1.0).to_event(1))
        y = pyro.sample(f"y{suffix}", dist.Categorical(logits=x.new_zeros(n, CLASSES)), obs=y)
        return self._observe(x, z, F.one_hot(y, CLASSES).to(z.dtype), suffix)

    def _observe(self, x, z, y_hot, suffix: str) -> torch.Tensor:
        """p(x | y, z) observed; returns what the classifier reads (the pixels)."""
        logits = self.decoder(concat(z, y_hot))
        likelihood = dist.Bernoulli(logits=logits, validate_args=False if self.grey else None)
        pyro.sample(f"x{suffix}", likelihood.to_event(1), obs=x)
        return x

    def _read(self, x, suffix: str) -> torch.Tensor:
        """What the guide's networks read of the images: the pixels themselves."""
        return x

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        pyro.module("classifier", self.classifier)
        known = y >= 0
        if known.any():
            with pyro.plate("labelled", int(known.sum())):
                self._infer_z(self._read(x[known], "_labelled"), y[known], "_labelled")
        if not known.all():
            with pyro.plate("data", int((~known).sum())):
                xu = self._read(x[~known], "")
                yu = pyro.sample("y", dist.Categorical(logits=self.classifier(xu)),
                                 infer={"enumerate": "parallel"})
                self._infer_z(xu, yu, "")

    def _infer_z(self, x, y, suffix: str) -> None:
        loc, scale = self.encoder(concat(x, F.one_hot(y, CLASSES).to(x.dtype)))
        pyro.sample(f"z{suffix}", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely class under q(y | x)."""
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def restyle(self, x: torch.Tensor) -> torch.Tensor:
        """For each image, its style z (the posterior mean at its most likely class) decoded
        with every class: ``(len(x), 10, x_dim)`` Bernoulli means."""
        loc, _ = self.encoder(concat(x, F.one_hot(self.classify(x), CLASSES).to(x.dtype)))
        classes = torch.eye(CLASSES, dtype=x.dtype, device=x.device)
        return torch.sigmoid(self.decoder(concat(loc[:, None, :], classes)))


class StackedM2(M2):
    r"""M1+M2 (Kingma et al. 2014, section 3.2): M2 on the latent code of M1, a VAE trained
    on the pixels first, as one Pyro model of the images:

    .. math:: y \sim \mathrm{Cat}(1/10), \quad z_2 \sim \mathcal{N}(0, I), \quad
              z_1 \sim \mathcal{N}(\mu(y, z_2), \mathrm{diag}\,\sigma^2(y, z_2)), \quad
              x \sim \mathrm{Bernoulli}(\mathrm{decoder}_{M1}(z_1)),

    with the guide :math:`q_{M1}(z_1 \mid x)\, q(y \mid z_1)\, q(z_2 \mid z_1, y)`. M1's
    encoder and decoder (the run in ``m1_run``, after ``m1_epochs`` epochs) are frozen: no
    gradient reaches them and the param store never holds them, so training is M2 on M1's
    posterior samples :math:`z_1 \sim q_{M1}(z_1 \mid x)`, a fresh draw at every step, as
    the paper does; the terms :math:`\log p(x \mid z_1) - \log q_{M1}(z_1 \mid x)` it adds
    are constants of the parameters trained, and make the bound one on log p(x) of the
    images, so ``pyro-vae evaluate`` scores the stacked model like any other. The classifier
    reads :math:`z_1` (its mean when classifying); ``z_dim`` is the size of :math:`z_2`."""

    def __init__(self, m1_run: str, m1_epochs: int, m1_active: list[int] | None = None,
                 z_dim: int = 50, hidden: int = 500, alpha: float = 50.0,
                 activation: str = "softplus"):
        m1 = frozen_vae(Path(m1_run))
        done = len(read_metrics(Path(m1_run)))
        if done != m1_epochs:
            raise ValueError(f"M1 in {m1_run} has trained {done} epochs, this stacked model "
                             f"was built on it after {m1_epochs}: a resumed M1 is another "
                             "model; retrain M1+M2 on it, or restore the M1 run")
        active = list(range(m1.z_dim)) if m1_active is None else m1_active
        if not active or not set(active) <= set(range(m1.z_dim)):
            raise ValueError(f"m1_active must name some of M1's dimensions 0..{m1.z_dim - 1}, "
                             f"got {m1_active}")
        super().__init__(len(active), z_dim, hidden, alpha, activation)
        self.m1 = m1.requires_grad_(False)
        self.register_buffer("active", torch.tensor(active))
        # p(z1[active] | y, z2); the inactive dimensions keep M1's prior N(0, 1)
        self.decoder = Encoder(z_dim + CLASSES, [hidden], len(active), activation)

    def _observe(self, x, z2, y_hot, suffix: str) -> torch.Tensor:
        """z1 ~ p(z1 | y, z2), then x ~ p(x | z1) of M1, observed; returns the active part
        of the guide's z1 (replayed), which the classifier reads."""
        loc, scale = self.decoder(concat(z2, y_hot))
        shape = (*loc.shape[:-1], self.m1.z_dim)
        loc = loc.new_zeros(shape).index_copy(-1, self.active, loc)
        scale = scale.new_ones(shape).index_copy(-1, self.active, scale)
        z1 = pyro.sample(f"z1{suffix}", dist.Normal(loc, scale).to_event(1))
        pyro.sample(f"x{suffix}", dist.Bernoulli(logits=self.m1.decoder(z1)).to_event(1), obs=x)
        return z1[..., self.active]

    def _read(self, x, suffix: str) -> torch.Tensor:
        """z1 ~ q_M1(z1 | x), the guide's first site; its active part is what the guide's
        networks read."""
        with torch.no_grad():
            posterior = self.m1.latent_posterior(x)
        return pyro.sample(f"z1{suffix}", posterior)[..., self.active]

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most likely class under q(y | z1) at M1's posterior mean of z1."""
        return self.classifier(self.m1.latent_posterior(x).mean[..., self.active]).argmax(-1)

    @torch.no_grad()
    def restyle(self, x: torch.Tensor) -> torch.Tensor:
        z1 = self.m1.latent_posterior(x).mean
        loc, _ = self.encoder(concat(z1[..., self.active], F.one_hot(
            self.classify(x), CLASSES).to(x.dtype)))
        classes = torch.eye(CLASSES, dtype=x.dtype, device=x.device)
        active, _ = self.decoder(concat(loc[:, None, :], classes))  # (n, 10, active)
        z1 = z1[:, None, :].expand(-1, CLASSES, -1).index_copy(-1, self.active, active)
        return self.m1.decode(z1)


def frozen_vae(run_dir: Path) -> VAE:
    """The VAE of ``run_dir`` with its checkpoint's parameters, never to be trained again
    (``requires_grad`` off); its data are not loaded. Clears the param store."""
    spec, state = read_model(run_dir), load_checkpoint(run_dir)
    if spec is None or spec.factory != "pyro_vae.model:VAE":
        raise ValueError(f"{run_dir} does not hold a pyro_vae VAE (its model: {spec}): M1 is one")
    vae = rebuild(spec)
    if spec.arguments.get("likelihood") != "bernoulli" or vae.latent != "gaussian":
        raise ValueError(f"M1 is a VAE of binary images with a Gaussian z; {run_dir} holds "
                         f"{spec}")
    pyro.clear_param_store()
    params = declare_params(vae.model, vae.guide, torch.zeros(1, spec.arguments["x_dim"]))
    restore_params(params, state["params"], run_dir / "checkpoint.pt")
    pyro.clear_param_store()  # the tensors stay the modules' own
    return vae.requires_grad_(False)


@dataclass
class LabelledBatches(Dataset):
    """A semi-supervised dataset (labels ``-1`` where unknown) as ``fit`` trains on it:
    each labelled image seen ``repeat`` times an epoch, either in batches of their own
    spread evenly among the unlabelled ones (``separate``, Pyro's SS-VAE,
    ``examples/vae/ss_vae_M2.py``: a labelled batch is then a step of its own, whose
    classification term is not averaged into 200 unlabelled images), or shuffled in with
    them (``mixed``). The test split's labels are hidden from the model (``-1``), so that
    fit's test loss is the bound on log p(x) of unlabelled images; the data themselves,
    and what a run records of them, are the dataset's."""

    repeat: int = 1
    separate: bool = True

    @classmethod
    def of(cls, data: Dataset, repeat: int, separate: bool) -> LabelledBatches:
        return cls(**{f.name: getattr(data, f.name) for f in fields(data)}, repeat=repeat,
                   separate=separate)

    def batch_rows(self, split, batch_size, generator=None, shuffle=True):
        if split != "train" or not shuffle:
            return super().batch_rows(split, batch_size, generator, shuffle)
        y = self.y_train
        known = torch.nonzero(y >= 0).flatten().repeat(self.repeat)
        unknown = torch.nonzero(y < 0).flatten()
        shuffled = lambda rows: rows[torch.randperm(len(rows), generator=generator,  # noqa
                                                    device=rows.device)]
        if not self.separate:
            return list(shuffled(torch.cat([unknown, known])).split(batch_size))
        plain = list(shuffled(unknown).split(batch_size))
        marked = list(shuffled(known).split(batch_size))
        # labelled batch j goes before unlabelled batch (j + 1/2) * len(plain) / len(marked)
        slots = [[] for _ in range(max(1, len(plain)))]
        for j, rows in enumerate(marked):
            slots[min(len(slots) - 1, int((j + 0.5) * len(plain) / len(marked)))].append(rows)
        return [b for i, before in enumerate(slots) for b in before + plain[i : i + 1]]

    def eval_batches(self, split, batch_size, labels=False):
        for batch in super().eval_batches(split, batch_size, labels):
            if labels and split == "test":
                batch = (batch[0], torch.full_like(batch[1], -1))
            yield batch


class ValidationError(Callback):
    """After every epoch: the classifier's error (%) on the validation images, and the
    parameters of the epoch of lowest error so far kept in ``best`` (a file: the epoch a
    final run is tested at, early stopping on the validation split; the earliest on ties)."""

    def __init__(self, m2: M2, x: torch.Tensor, y: torch.Tensor, best: Path):
        self.m2, self.x, self.y, self.best = m2, x, y, best
        self.lowest = best_epoch(best)["validation_error"] if best.exists() else math.inf

    def after_epoch(self, epoch: int, record: dict) -> dict:
        now = error(self.m2, self.x, self.y)
        if now < self.lowest:
            self.lowest = now
            params = {name: p.detach().cpu().clone()
                      for name, p in pyro.get_param_store().named_parameters()}
            atomic_save(self.best, {"epoch": epoch, "validation_error": now, "params": params})
        return {"validation_error": now}


def best_epoch(path: Path) -> dict:
    """What :class:`ValidationError` kept: ``epoch``, ``validation_error``, ``params``."""
    return torch.load(path, map_location="cpu", weights_only=True)


def error(m2: M2, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (m2.classify(x) != y).double().mean().item()


@torch.no_grad()
def class_signal(m2: M2, x: torch.Tensor, y: torch.Tensor, draws: int = 5) -> dict:
    """How much the generative model tells the classes apart, the only signal the unlabelled
    term gives the classifier: each image's labelled bound L(x, c) (``draws`` draws of z ~
    q(z | x, c), α = 0) at each class c; the error (%) of argmax_c L(x, c) as a classifier,
    and the mean over images of max_c L(x, c) less its median over c (nats), beside the
    classifier's error on the same images. A decoder that ignores y scores every class alike
    (a spread near 0, an error near 90 %). Its own random stream, seed 0."""
    alpha, m2.alpha = m2.alpha, 0.0
    bound = torch.zeros(x.shape[0], CLASSES)
    try:
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            pyro.set_rng_seed(0)  # the same draws whenever it is measured
            for c in range(CLASSES):
                label = torch.full((x.shape[0],), c, device=x.device)
                for _ in range(draws):
                    model_trace, guide_trace = replayed(m2.model, m2.guide, x, label)
                    bound[:, c] += (log_prob_per_point(model_trace, "labelled")
                                    - log_prob_per_point(guide_trace, "labelled")
                                    ).squeeze(0).cpu()
    finally:
        m2.alpha = alpha
    bound /= draws
    return {"generative_error": 100.0 * (bound.argmax(1) != y.cpu()).double().mean().item(),
            "class_spread": (bound.max(1).values - bound.median(1).values).mean().item(),
            "classifier_error": error(m2, x, y)}  # q(y | x) on the same images


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, pyro {pyro.__version__}")


# ---------------------------------------------------------------- the study


def run(n_labels: int, args, data) -> dict:
    """Train (or resume) the run of ``n_labels`` labels up to ``args.epochs`` on the first
    50,000 training images, its classifier scored on the last 10,000 after every epoch;
    with ``--test``, the test set is read, at the end, by the parameters of the epoch of
    lowest validation error. Its result."""
    name = run_name(n_labels, args)
    run_dir = args.out / "runs" / name
    train = data.held_out(args.validation).keep_labels(n_labels, args.label_seed)
    semi = LabelledBatches.of(train, args.repeat, separate=args.batches == "separate")
    x_valid, y_valid = train.evaluation("test"), train.y_test  # one fixed binarization
    m1_minutes = 0.0
    if args.model == "m1-m2":
        m1_dir, m1_minutes, active = train_m1(args, data)
        pyro.set_rng_seed(args.seed)
        dims = {} if args.m1_dims == "all" else {"m1_active": active}
        m2 = build_model(StackedM2, m1_run=str(m1_dir), m1_epochs=args.m1_epochs, **dims,
                         z_dim=args.z_dim, hidden=args.hidden, alpha=args.alpha)
    else:
        pyro.set_rng_seed(args.seed)
        m2 = build_model(M2, x_dim=data.x_dim, z_dim=args.z_dim, hidden=args.hidden,
                         alpha=args.alpha, grey=args.pixels == "grey")
    config = Config(dataset=data.name, elbo="enum", lr=args.lr, batch_size=args.batch_size,
                    epochs=args.epochs, seed=args.seed)
    resume = (run_dir / "checkpoint.pt").exists()
    if resume and (read_data(run_dir) or {}).get("source", {}) is None:
        raise SystemExit(f"{run_dir} was trained before runs recorded their validation split "
                         "(its data.json has no source), so it cannot resume or take --test: "
                         "move it aside and run the command again to train it afresh")
    if resume and not (run_dir / BEST).exists():
        raise SystemExit(f"{run_dir} was trained before runs kept their best validation epoch "
                         f"({BEST}), so it cannot resume or take --test: move it aside and run "
                         "the command again to train it afresh")
    if not resume:  # a best epoch left by a run that died before its first checkpoint
        (run_dir / BEST).unlink(missing_ok=True)
    start = time.perf_counter()
    metrics = fit(m2.model, m2.guide, semi, config, run_dir, resume=resume, quiet=args.quick,
                  callbacks=[ValidationError(m2, x_valid, y_valid, run_dir / BEST)])
    wall = time.perf_counter() - start
    out = args.out / ("results" if args.test else "validation") / f"{name}.json"
    before = json.loads(out.read_text()) if resume and out.exists() else {}
    minutes = sum(m["seconds"] for m in metrics) / 60
    result = dict(
        labels=n_labels, label_seed=args.label_seed, seed=args.seed, alpha=args.alpha,
        repeat=args.repeat, batches=args.batches, pixels=args.pixels, lr=args.lr,
        batch_size=args.batch_size,
        hidden=args.hidden, z_dim=args.z_dim, epochs=len(metrics),
        training_images=len(train.x_train),
        validation_error=metrics[-1]["validation_error"],
        validation_bound=-metrics[-1]["test_loss"], training_minutes=minutes,
        model=args.model, m1_minutes=m1_minutes,
        **({"m1_epochs": args.m1_epochs, "m1_dims": args.m1_dims,
            "m1_active": len(m2.active)} if args.model == "m1-m2" else {}),
        wall_minutes=before.get("wall_minutes", 0.0) + wall / 60,
        curve=[dict(epoch=m["epoch"], minutes=sum(k["seconds"] for k in metrics[:i + 1]) / 60,
                    validation_error=m["validation_error"]) for i, m in enumerate(metrics)],
        **class_signal(m2, x_valid[:1000], y_valid[:1000]),
        machine=machine(),
        command=" ".join(["python", "experiments/semi_supervised.py", *sys.argv[1:]]))
    line = (f"{n_labels:5d} labels ({name}): validation error "
            f"{result['validation_error']:5.2f} % after {result['epochs']} epochs, "
            f"{minutes:.1f} min of training")
    chosen = best_epoch(run_dir / BEST)
    if not (chosen["epoch"] <= len(metrics) and metrics[chosen["epoch"] - 1][
            "validation_error"] == chosen["validation_error"]):
        raise SystemExit(f"{run_dir / BEST} (epoch {chosen['epoch']}, "
                         f"{chosen['validation_error']:.2f} %) is not an epoch of this run's "
                         "metrics: it was left by an interrupted run; move the run aside and "
                         "train it afresh")
    result.update(chosen_epoch=chosen["epoch"], chosen_validation_error=chosen[
        "validation_error"])
    if args.test:  # the one reading of the test set, at the epoch the validation chose
        restore_params(params_on(config.device), chosen["params"], run_dir / BEST)
        line += (f"; epoch {chosen['epoch']} chosen on validation "
                 f"({chosen['validation_error']:.2f} %)")
        x_test = next(data.eval_batches("test", len(data.x_test)))
        result["test_error"] = error(m2, x_test, data.y_test)
        result["test_error_grey"] = error(m2, data.x_test, data.y_test)
        line += f"; test error {result['test_error']:5.2f} %"
        style_figure(m2, x_test, data.y_test, args.out / f"style-{n_labels}.png", n_labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(line, flush=True)
    return result


def train_m1(args, data: Dataset) -> tuple[Path, float, list[int]]:
    """M1 of M1+M2: a VAE (784-500-500-50 tanh, the recipe of results/route_to_88) trained,
    or resumed, up to ``--m1-epochs`` on the first 50,000 training images without their
    labels, its test loss the bound on the validation images. One M1 serves every label
    count, label set and seed. Its run directory, its minutes of training, and its active
    dimensions: those whose posterior mean varies over the training images with a
    standard deviation above 0.1 (Burda et al.'s active units; Kingma's code for the paper,
    ``learn_yz_x_ss.py`` in dpkingma/nips14-ssl, keeps the same dimensions for M2)."""
    run_dir = args.out / "runs" / f"m1-epochs{args.m1_epochs}"
    held = data.held_out(args.validation)
    resume = (run_dir / "checkpoint.pt").exists()
    if not (resume and len(read_metrics(run_dir)) >= args.m1_epochs):
        pyro.set_rng_seed(0)
        vae = VAE(data.x_dim, z_dim=50, hidden=[args.m1_hidden] * 2, activation="tanh")
        config = Config(dataset=data.name, elbo="meanfield", lr=1e-3, eps=1e-4,
                        batch_size=100, epochs=args.m1_epochs, seed=0, jit=True)
        metrics = fit(vae.model, vae.guide, held, config, run_dir, resume=resume,
                      quiet=args.quick)
        print(f"M1 ({run_dir}): validation ELBO {-metrics[-1]['test_loss']:.2f} nats after "
              f"{len(metrics)} epochs", flush=True)
    with torch.no_grad():
        means = frozen_vae(run_dir).latent_posterior(held.evaluation("train")).mean
    active = torch.nonzero(means.var(dim=0) > 0.01).flatten().tolist()
    if not active and args.m1_dims == "active":
        raise SystemExit(f"M1 ({run_dir}) has no active dimension after {args.m1_epochs} "
                         f"epochs (posterior-mean variance above 0.01 in none of its "
                         f"{means.shape[1]}): train it longer (--m1-epochs) or model every "
                         "dimension (--m1-dims all)")
    return run_dir, sum(m["seconds"] for m in read_metrics(run_dir)) / 60, active


def run_name(n_labels: int, args) -> str:
    """``labels-N``, then each setting that is not its default (``-repeat1-pixelsgrey``)."""
    changed = "".join(f"-{k.replace('_', '')}{v}" for k, v in vars(args).items()
                      if k in knobs_of(args.model) and v != DEFAULTS[k])
    return f"labels-{n_labels}{changed}"


def style_figure(m2: M2, x_test: torch.Tensor, y_test: torch.Tensor, path: Path,
                 n_labels: int) -> None:
    """For the first test image of each class: the image, then its style decoded with every
    class 0..9 (the paper's Figure 1b)."""
    firsts = torch.stack([x_test[int(torch.nonzero(y_test == c)[0])] for c in range(10)])
    grid = torch.cat([firsts[:, None, :], m2.restyle(firsts)], dim=1)
    image_panels({f"M2, {n_labels} labels: a test image, then its z decoded with y = 0..9":
                  grid.reshape(-1, grid.shape[-1])}, (1, 28, 28), path, ncol=11)


def write_readme(out: Path) -> None:
    """README.md and validation_error.png from every result under ``out``: the final runs
    (results/, the test set read once), the validation runs that chose their settings
    (validation/), and the runs from before the split (before/)."""
    read = lambda folder: sorted(  # noqa: E731
        (json.loads(p.read_text()) for p in (out / folder).glob("*.json")),
        key=lambda r: (r["labels"], r["label_seed"], r["seed"], r.get("epochs", 0)))
    final, validation, before = read("results"), read("validation"), read("before")
    if not (final or validation):
        return
    lines = [
        "# Semi-supervised MNIST: M2 and M1+M2 with enumerated labels", "",
        "Written by `experiments/semi_supervised.py` (its docstring gives the model, data "
        "and settings). Every run trains on the first 50,000 MNIST training images, of "
        "which `labels` keep their label (balanced, drawn by the label seed), and scores "
        "its classifier q(y | x) on the last 10,000 (the validation split) after every "
        "epoch; settings are chosen there. A final run (`--test`) reads the 10,000 test "
        "images once, at the end, with the parameters of its epoch of lowest validation "
        "error (kept as it trains: early stopping on the validation split); the epoch "
        "column says which epoch of how many. Errors in %; binarized runs are scored on one "
        "fixed binarization (seed 0) of the validation or test images. Minutes: the epochs' "
        "training loops on the machine named. Runs with `model m1-m2` are the paper's "
        "stacked M1+M2 (M2 on the code of M1, a VAE trained first on the 50,000 training "
        "images without labels, shared by every M1+M2 run): their minutes are M2's, plus "
        "M1's once.", "",
        "## Final runs: test error", "",
        "Pyro's SS-VAE tutorial (`tutorial/source/ss-vae.ipynb` in the pyro repository, "
        "its table; enumeration and the auxiliary loss; mean of 5 label sets) and Kingma et "
        "al. (2014), Table 1 (M2 and M1+M2, mean ± standard deviation) beside ours.", "",
        "| labels | Pyro tutorial (%) | paper M2 (%) | paper M1+M2 (%) | ours (%) | "
        "validation (%) | epoch chosen | settings | training min | label seed, seed | "
        "machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in final:
        m2, stacked = PAPER[r["labels"]], PAPER_M1_M2[r["labels"]]
        lines.append(
            f"| {r['labels']} | {PYRO_TUTORIAL[r['labels']]:.2f} | {m2[0]:.2f} ± {m2[1]:.2f} "
            f"| {stacked[0]:.2f} ± {stacked[1]:.2f} | {r['test_error']:.2f} | "
            f"{r['chosen_validation_error']:.2f} | {r['chosen_epoch']} of {r['epochs']} | "
            f"{settings_of(r)} | {minutes_of(r)} | {r['label_seed']}, {r['seed']} | "
            f"{r['machine']} |")
    if not final:
        lines.append("| (no final run yet) | | | | | | | | | | |")
    lines += ["", *seed_means(final), "## Validation runs: what chose the settings", "",
              "Each row: the validation error after the last epoch, and the lowest after "
              "any epoch (which epoch); the validation ELBO of unlabelled images (y summed "
              "out, nats per image); what differs from the script's defaults; and the class "
              "signal of the generative model on the first 1,000 validation images "
              "(`class_signal`): the error of argmax_y L(x, y) used as a classifier beside the "
              "classifier's own on the same images, and "
              "max_y L(x, y) less its median over y, in nats (a decoder that ignores y: "
              "about 90 % and 0).", "",
              "| labels | settings | epochs | validation error (%) | lowest (epoch) | "
              "validation ELBO | argmax_y L(x, y) / q(y \\| x) error, first 1,000 (%) | "
              "max - median L (nats) | "
              "training min | label seed, seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in validation:
        low = min(r["curve"], key=lambda c: c["validation_error"])
        signal = (f"{r['generative_error']:.1f} / {r['classifier_error']:.1f} | "
                  f"{r['class_spread']:.1f}" if "classifier_error" in r else "- | -")
        lines.append(
            f"| {r['labels']} | {settings_of(r)} | {r['epochs']} | "
            f"{r['validation_error']:.2f} | {low['validation_error']:.2f} ({low['epoch']}) | "
            f"{r['validation_bound']:.2f} | {signal} | "
            f"{minutes_of(r)} | {r['label_seed']}, {r['seed']} |")
    lines += ["", "![validation error against minutes](validation_error.png)", ""]
    if before:
        lines += ["## Before the validation split", "",
                  "The runs of the previous round, trained on all 60,000 training images, "
                  "their settings (alpha, repeat) screened on the test set: kept for the "
                  "record, not comparable with a validation-chosen number; their notes: "
                  "[before/NOTES.md](before/NOTES.md).", "",
                  "| labels | test error (%) | epochs | label seed, seed |", "|---|---|---|---|"]
        lines += [f"| {r['labels']} | {r['test_error']:.2f} | {r['epochs']} | "
                  f"{r['label_seed']}, {r['seed']} |" for r in before]
        lines.append("")
    lines += ["Commands:", ""]
    lines += [f"    {r['command']}" for r in [*validation, *final]]
    if final:
        style = f"style-{final[-1]['labels']}.png"
        lines += ["", f"The style figure of a final run with {final[-1]['labels']} labels: "
                  "for the first test image of each class, the image and then its z decoded "
                  "with y = 0, ..., 9.", "", f"![style]({style})"]
    notes = out / "NOTES.md"
    if notes.exists():
        lines += ["", notes.read_text()]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    error_curves([*validation, *final], out / "validation_error.png")


def minutes_of(r: dict) -> str:
    """A run's minutes of training, M1's (shared by every M1+M2 run) beside M2's."""
    if r.get("model") == "m1-m2":
        return f"{r['training_minutes']:.1f} + M1 {r['m1_minutes']:.1f}"
    return f"{r['training_minutes']:.1f}"


def settings_of(r: dict) -> str:
    """What a result's settings change from the defaults, or 'defaults'."""
    changed = [f"{k} {r[k]}" for k in knobs_of(r.get("model", "m2"))
               if k not in ("seed", "label_seed") and r.get(k, DEFAULTS[k]) != DEFAULTS[k]]
    return ", ".join(changed) or "defaults"


def seed_means(results: list[dict]) -> list[str]:
    """A line per label count and settings: the mean ± standard error of the test error over
    its label sets, where it has several runs of the same epochs."""
    lines = []
    for key in sorted({(r["labels"], settings_of(r)) for r in results}):
        runs = [r for r in results if (r["labels"], settings_of(r)) == key]
        errors = torch.tensor([r["test_error"] for r in runs], dtype=torch.float64)
        if len(runs) > 1 and len({r["epochs"] for r in runs}) == 1:
            lines.append(f"- {key[0]} labels ({key[1]}): {errors.mean():.2f} ± "
                         f"{errors.std() / len(runs) ** 0.5:.2f} % (mean ± standard error over "
                         f"{len(runs)} label sets).")
        else:
            lines.append(f"- {key[0]} labels ({key[1]}): {len(runs)} run(s) of unequal "
                         "epochs or one label set: no standard error.")
    return lines + [""]


def error_curves(results: list[dict], path: Path) -> None:
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for r in results:
        curve = r["curve"]
        ax.plot([c["minutes"] for c in curve], [c["validation_error"] for c in curve],
                marker=".", label=f"{r['labels']} labels, {settings_of(r)}, seeds "
                f"{r['label_seed']}, {r['seed']}")
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("validation error (%)")
    ax.set_yscale("log")
    ticks = [2, 3, 4, 5, 7, 10, 15, 20, 30, 50]
    ax.set_yticks(ticks, labels=[str(t) for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title("M2 and M1+M2 on MNIST: error on the 10,000 validation images "
                 "(minutes: M2's; M1's are shared)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=sorted(PAPER))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=50.0,
                        help="weight of each labelled image's classification term")
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--z-dim", type=int, default=50, help="dimensions of the style z")
    parser.add_argument("--repeat", type=int, default=1,
                        help="times each labelled image is seen per epoch")
    parser.add_argument("--batches", choices=["separate", "mixed"], default="separate",
                        help="separate: labelled images in batches of their own among the "
                        "unlabelled ones (Pyro's SS-VAE); mixed: shuffled in with them")
    parser.add_argument("--pixels", choices=["binary", "grey"], default="binary",
                        help="binary: dynamically binarized images; grey: the grey levels "
                        "themselves under the Bernoulli log-mass, as Pyro's tutorial")
    parser.add_argument("--model", choices=["m2", "m1-m2"], default="m2",
                        help="m2: M2 on the pixels; m1-m2: M2 on the latent code of M1, a "
                        "VAE trained on the images first (the paper's stacked model)")
    parser.add_argument("--m1-epochs", type=int, default=50, help="M1's epochs (m1-m2)")
    parser.add_argument("--m1-dims", choices=["active", "all"], default="active",
                        help="the dimensions of M1's code that M2 models (m1-m2): its active "
                        "units (the rest keep M1's prior), as the paper's code does, or all")
    parser.add_argument("--lr", type=float, default=4.2e-4)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--label-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test", action="store_true",
                        help="a final run: read the test set once, at the end, with the "
                        "parameters of the epoch of lowest validation error (without it, "
                        "only the validation split is scored)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, help="default: results/semi_supervised/, or "
                        "runs/quick/semi_supervised/ with --quick")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 training and 500 test images, 2 epochs (tests)")
    return parser


# The settings a run's name and the README's "settings" column report when changed.
KNOBS = ("seed", "label_seed", "model", "m1_epochs", "m1_dims", "alpha", "hidden", "z_dim",
         "repeat", "batches", "pixels", "lr", "batch_size")
DEFAULTS = {k: parser().get_default(k) for k in KNOBS}


def knobs_of(model: str) -> tuple[str, ...]:
    """The knobs that name a run of ``model``: M1's only for M1+M2."""
    return KNOBS if model == "m1-m2" else tuple(k for k in KNOBS if not k.startswith("m1_"))


def arguments() -> argparse.Namespace:
    p = parser()
    args = p.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "semi_supervised")
    args.validation = VALIDATION
    if min(args.epochs, args.hidden, args.z_dim, args.batch_size) < 1 or args.alpha < 0:
        p.error("--epochs, --hidden, --z-dim and --batch-size must be at least 1, --alpha "
                "non-negative")
    if not args.lr > 0:
        p.error(f"--lr must be positive, got {args.lr}")
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.m1_epochs < 1:
        p.error(f"--m1-epochs must be at least 1, got {args.m1_epochs}")
    if args.model == "m1-m2" and args.pixels == "grey":
        p.error("--model m1-m2 trains M1 on binarized images: --pixels grey is for m2")
    args.m1_hidden = 500
    return args


def main() -> None:
    args = arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)  # speed; fit validates the first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    data = load_dataset("mnist" if args.pixels == "grey" else "mnist-binary")
    if args.quick:
        data, args.epochs, args.hidden = data.subset(train=2000, test=500), 2, 64
        args.m1_epochs, args.m1_hidden = 2, 64
        args.labels, args.validation = [100], 500
    for n_labels in args.labels:
        run(n_labels, args, data)
    write_readme(args.out)


if __name__ == "__main__":
    main()
