r"""Semi-supervised learning with deep generative models: the M2 model of Kingma, Rezende,
Mohamed & Welling (2014), "Semi-Supervised Learning with Deep Generative Models", on MNIST
with 100, 600, 1000 and 3000 labels.

    .venv/bin/python experiments/semi_supervised.py --labels 3000 --epochs 75 --threads 1
    .venv/bin/python experiments/semi_supervised.py --labels 100 --epochs 20 --threads 1
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

Data: dynamically binarized MNIST (a fresh Bernoulli draw of every batch), all 60,000
training images, of which ``--labels`` keep their label: the same number from each class,
drawn by ``--label-seed`` (0). The labelled images are appended to the training set
``--repeat`` - 1 more times (default: as many as make them about half of every batch, 19
times in all for 3000 labels, 599 for 100); results/semi_supervised/NOTES.md measures that
against showing them once an epoch. The 10,000 test images are scored by the classifier's most
likely class on one fixed binarization (seed 0). Networks as in Pyro's example: one hidden
layer of 500 softplus units in the classifier, the encoder of z (input: x and y one-hot)
and the decoder (input: z and y one-hot); 50 latent dimensions; Adam lr 4.2e-4; batch 200.

Each label count is a run directory that resumes (run the same command with more
``--epochs``); its result goes to results/semi_supervised/results/labels-N.json (committed),
and README.md and test_error.png are rebuilt from all results there; style-N.png is the
style figure of the run with N labels.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import nn

from pyro_vae import Callback, Config, build_model, fit, load_dataset
from pyro_vae.networks import Decoder, Encoder, concat, mlp
from pyro_vae.plots import image_panels

# Test error (%) of the paper's M2 (Kingma et al., 2014, Table 1), by number of labels.
PAPER = {100: (11.97, 1.71), 600: (4.94, 0.13), 1000: (3.60, 0.56), 3000: (3.92, 0.63)}
CLASSES = 10


class M2(nn.Module):
    """The M2 model and guide for images of ``x_dim`` numbers in [0, 1] (or {0, 1}).

    ``model(x, y)``/``guide(x, y)``: ``y[i] = -1`` marks an unlabelled image. Labelled images
    live in the plate ``labelled`` (sites ``z_labelled``, ``y_labelled``, ``x_labelled`` and
    the classification term ``y_classified``), unlabelled ones in the plate ``data`` (sites
    ``z``, ``y``, ``x``), so a batch of unlabelled images is an ordinary VAE batch whose
    guide has one more, enumerated, site."""

    num_classes = CLASSES  # fit checks every label against it

    def __init__(self, x_dim: int = 784, z_dim: int = 50, hidden: int = 500,
                 alpha: float = 50.0, activation: str = "softplus"):
        super().__init__()
        self.z_dim, self.alpha = z_dim, alpha
        self.classifier = mlp([x_dim, hidden, CLASSES], activation)  # logits of q(y | x)
        self.encoder = Encoder(x_dim + CLASSES, [hidden], z_dim, activation)  # q(z | x, y)
        self.decoder = Decoder(z_dim + CLASSES, [hidden], x_dim, activation)  # p(x | y, z)

    def model(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("decoder", self.decoder)
        pyro.module("classifier", self.classifier)
        known = y >= 0
        if known.any():
            with pyro.plate("labelled", int(known.sum())):
                self._generate(x[known], y[known], "_labelled")
                if self.alpha > 0:  # the paper's classification term, alpha * log q(y | x)
                    with poutine.scale(scale=self.alpha):
                        pyro.sample("y_classified", dist.Categorical(logits=self.classifier(
                            x[known])), obs=y[known])
        if not known.all():
            with pyro.plate("data", int((~known).sum())):
                self._generate(x[~known], None, "")

    def _generate(self, x, y, suffix: str) -> None:
        n = x.shape[0]
        z = pyro.sample(f"z{suffix}", dist.Normal(x.new_zeros(n, self.z_dim), 1.0).to_event(1))
        y = pyro.sample(f"y{suffix}", dist.Categorical(logits=x.new_zeros(n, CLASSES)), obs=y)
        logits = self.decoder(concat(z, F.one_hot(y, CLASSES).to(z.dtype)))
        pyro.sample(f"x{suffix}", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("encoder", self.encoder)
        pyro.module("classifier", self.classifier)
        known = y >= 0
        if known.any():
            with pyro.plate("labelled", int(known.sum())):
                self._infer_z(x[known], y[known], "_labelled")
        if not known.all():
            with pyro.plate("data", int((~known).sum())):
                xu = x[~known]
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


def semi_supervised(data, n: int, seed: int, repeat: int | None):
    """``data`` with ``n`` training labels kept (:func:`balanced_labels`) and, appended to the
    training images, the labelled ones ``repeat`` - 1 more times (None: as many times as
    make the labelled images about half of every batch); the test labels hidden, so that
    the test loss is the bound on log p(x) of unlabelled images."""
    y = balanced_labels(data.y_train, n, seed)
    labelled = torch.nonzero(y >= 0).flatten()
    if repeat is None:
        repeat = max(1, round((len(y) - n) / n))
    extra = labelled.repeat(repeat - 1)
    return replace(data, x_train=torch.cat([data.x_train, data.x_train[extra]]),
                   y_train=torch.cat([y, y[extra]]), y_test=torch.full_like(data.y_test, -1),
                   source=None, fixed=None)  # made here: load_dataset cannot make it again


def balanced_labels(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``y`` with all but ``n`` labels set to -1: ``n / 10`` kept in each class, the rows
    drawn by ``seed``."""
    if n % CLASSES or not 0 < n <= len(y):
        raise SystemExit(f"--labels {n}: must be a positive multiple of {CLASSES}, at most "
                         f"{len(y)}")
    generator = torch.Generator().manual_seed(seed)
    kept = torch.cat([rows[torch.randperm(len(rows), generator=generator)[: n // CLASSES]]
                      for rows in (torch.nonzero(y == c).flatten() for c in range(CLASSES))])
    masked = torch.full_like(y, -1)
    masked[kept] = y[kept]
    return masked


class TestError(Callback):
    """After every epoch: the classifier's test error (%), on one fixed binarization."""

    def __init__(self, m2: M2, x: torch.Tensor, y: torch.Tensor):
        self.m2, self.x, self.y = m2, x, y

    def after_epoch(self, epoch: int, record: dict) -> dict:
        return {"test_error": test_error(self.m2, self.x, self.y)}


def test_error(m2: M2, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (m2.classify(x) != y).double().mean().item()


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, pyro {pyro.__version__}")


# ---------------------------------------------------------------- the study


def run(n_labels: int, args, data, x_test, y_test) -> dict:
    """Train (or resume) the run of ``n_labels`` labels up to ``args.epochs``; its result."""
    run_dir = args.out / "runs" / run_name(n_labels, args)
    semi = semi_supervised(data, n_labels, args.label_seed, args.repeat)
    pyro.set_rng_seed(args.seed)
    m2 = build_model(M2, x_dim=data.x_dim, z_dim=50, hidden=args.hidden, alpha=args.alpha)
    config = Config(dataset=data.name, elbo="enum", lr=4.2e-4, batch_size=200,
                    epochs=args.epochs, seed=args.seed)
    resume = (run_dir / "checkpoint.pt").exists()
    start = time.perf_counter()
    metrics = fit(m2.model, m2.guide, semi, config, run_dir, resume=resume, quiet=args.quick,
                  callbacks=[TestError(m2, x_test, y_test)])
    wall = time.perf_counter() - start
    out = args.out / "results" / f"{run_name(n_labels, args)}.json"
    before = json.loads(out.read_text()) if resume and out.exists() else {}
    minutes = sum(m["seconds"] for m in metrics) / 60
    result = dict(
        labels=n_labels, label_seed=args.label_seed, seed=args.seed, alpha=args.alpha,
        repeat=args.repeat,
        hidden=args.hidden, epochs=len(metrics), test_error=metrics[-1]["test_error"],
        test_error_grey=test_error(m2, data.x_test, y_test),
        best_epoch_error=min(m["test_error"] for m in metrics),
        test_bound=-metrics[-1]["test_loss"], training_minutes=minutes,
        wall_minutes=before.get("wall_minutes", 0.0) + wall / 60,
        curve=[dict(epoch=m["epoch"], minutes=sum(k["seconds"] for k in metrics[:i + 1]) / 60,
                    test_error=m["test_error"]) for i, m in enumerate(metrics)],
        machine=machine(), command=" ".join(["python", *sys.argv]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{n_labels:5d} labels: test error {result['test_error']:5.2f} % after "
          f"{result['epochs']} epochs, {minutes:.1f} min of training "
          f"(test ELBO of unlabelled images {result['test_bound']:.2f} nats)", flush=True)
    style_figure(m2, x_test, y_test, args.out / f"style-{n_labels}.png", n_labels)
    return result


def run_name(n_labels: int, args) -> str:
    """``labels-N``, and the seeds where they are not 0."""
    seeds = "" if (args.seed, args.label_seed) == (0, 0) else \
        f"-seed{args.seed}-labelseed{args.label_seed}"
    return f"labels-{n_labels}{seeds}"


def style_figure(m2: M2, x_test: torch.Tensor, y_test: torch.Tensor, path: Path,
                 n_labels: int) -> None:
    """For the first test image of each class: the image, then its style decoded with every
    class 0..9 (the paper's Figure 1b)."""
    firsts = torch.stack([x_test[int(torch.nonzero(y_test == c)[0])] for c in range(10)])
    grid = torch.cat([firsts[:, None, :], m2.restyle(firsts)], dim=1)
    image_panels({f"M2, {n_labels} labels: a test image, then its z decoded with y = 0..9":
                  grid.reshape(-1, grid.shape[-1])}, (1, 28, 28), path, ncol=11)


def write_readme(out: Path) -> None:
    results = sorted((json.loads(p.read_text()) for p in (out / "results").glob("*.json")),
                     key=lambda r: (r["labels"], r["label_seed"], r["seed"]))
    if not results:
        return
    lines = [
        "# Semi-supervised MNIST: M2 with enumerated labels", "",
        "Written by `experiments/semi_supervised.py` (the script's docstring gives the "
        "model, data and settings). Test error: the classifier q(y | x) on the 10,000 MNIST "
        "test images (one fixed binarization: the test data of a binarized model), in %; "
        "beside it, the same classifier on the grey-level test images themselves (it was "
        "trained on Bernoulli draws of grey levels, never on grey levels). The paper's row: "
        "Kingma et al. (2014), Table 1, M2, mean ± standard deviation over its runs (50,000 "
        "training images; here 60,000). Training minutes: the epochs' training loops; wall "
        "minutes also count the per-epoch test evaluation. Test ELBO: the bound on log p(x) "
        "of unlabelled test images, y summed out (nats per image, binarized MNIST).", "",
        "| labels | paper M2 (%) | ours (%) | grey test images (%) | best epoch (%) | epochs | "
        "training min | wall min | test ELBO | alpha | label seed, seed | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        paper = PAPER.get(r["labels"])
        lines.append(
            f"| {r['labels']} | {f'{paper[0]:.2f} ± {paper[1]:.2f}' if paper else '-'} | "
            f"{r['test_error']:.2f} | {r['test_error_grey']:.2f} | "
            f"{r['best_epoch_error']:.2f} | {r['epochs']} | {r['training_minutes']:.1f} | "
            f"{r['wall_minutes']:.1f} | {r['test_bound']:.2f} | {r['alpha']:g} | "
            f"{r['label_seed']}, {r['seed']} | {r['machine']} |")
    lines += ["", *seed_means(results), "\"Best epoch\" is the lowest test error of any "
              "epoch, shown for the curve's shape only: choosing it would select on the test "
              "set.", "", "Commands:", ""]
    lines += [f"    {r['command']}" for r in results]
    style = f"style-{results[-1]['labels']}.png"  # the most labels
    lines += ["", "![test error against minutes](test_error.png)", "",
              f"The style figure of the run with {results[-1]['labels']} labels (each run "
              "draws its own, style-N.png): for the first test image of each class, the image "
              "and then its z decoded with y = 0, ..., 9.", "", f"![style]({style})", ""]
    notes = out / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    (out / "README.md").write_text("\n".join(lines))
    error_curves(results, out / "test_error.png")


def seed_means(results: list[dict]) -> list[str]:
    """A line per label count: the mean ± standard error over its seeds (where it has
    several runs of the same epochs), else that one seed is all there is."""
    lines = []
    for n in sorted({r["labels"] for r in results}):
        runs = [r for r in results if r["labels"] == n]
        errors = torch.tensor([r["test_error"] for r in runs], dtype=torch.float64)
        if len(runs) > 1 and len({r["epochs"] for r in runs}) == 1:
            lines.append(f"- {n} labels: {errors.mean():.2f} ± "
                         f"{errors.std() / len(runs) ** 0.5:.2f} % (mean ± standard error over "
                         f"{len(runs)} runs, label seed and seed changed together).")
        else:
            lines.append(f"- {n} labels: one run of {runs[0]['epochs']} epochs; the paper's "
                         "spread is the uncertainty to read it against.")
    return lines + [""]


def error_curves(results: list[dict], path: Path) -> None:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for r in results:
        curve = r["curve"]
        ax.plot([c["minutes"] for c in curve], [c["test_error"] for c in curve],
                marker=".", label=f"{r['labels']} labels, seeds {r['label_seed']}, {r['seed']}")
        if r["labels"] in PAPER:
            ax.axhline(PAPER[r["labels"]][0], color=ax.lines[-1].get_color(), ls=":", lw=1)
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("log")
    ticks = [2, 3, 4, 5, 7, 10, 15, 20, 30, 50]
    ax.set_yticks(ticks, labels=[str(t) for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_title("M2 on MNIST: test error (dotted: the paper's M2)", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, nargs="+", default=sorted(PAPER))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=50.0,
                        help="weight of each labelled image's classification term")
    parser.add_argument("--hidden", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=None,
                        help="times each labelled image is seen per epoch (default: as many "
                        "as make labelled images about half of each batch)")
    parser.add_argument("--label-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, help="default: results/semi_supervised/, or "
                        "runs/quick/semi_supervised/ with --quick")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 training and 500 test images, 2 epochs (tests)")
    args = parser.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "semi_supervised")
    if args.epochs < 1 or args.alpha < 0 or args.hidden < 1:
        parser.error("--epochs and --hidden must be at least 1, --alpha non-negative")
    return args


def main() -> None:
    args = arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)  # speed; fit validates the first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    data = load_dataset("mnist-binary")
    if args.quick:
        data, args.epochs, args.hidden = data.subset(train=2000, test=500), 2, 64
        args.labels = [100]
    x_test = next(data.eval_batches("test", len(data.x_test)))  # one fixed binarization
    for n_labels in args.labels:
        run(n_labels, args, data, x_test, data.y_test)
    write_readme(args.out)


if __name__ == "__main__":
    main()
