"""Table 1 of the importance-weighted autoencoder paper on our code: its two MNIST
architectures, its recipe, IS-5000 on all 10,000 test images.

    .venv/bin/python experiments/iwae_paper.py --stages 4                # every row, 40 epochs
    .venv/bin/python experiments/iwae_paper.py --stages 8 --estimators vae-1 --layers 1
    .venv/bin/python experiments/iwae_paper.py --quick                   # seconds (tests)

Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", section 5:
dynamically binarized MNIST, and

- one stochastic layer: q(z|x) is 784-200-200 tanh to the mean and log-variance of 50
  latent dimensions, p(x|z) is 50-200-200-784 tanh with Bernoulli output (the built-in
  ``pyro_vae.VAE``);
- two stochastic layers (:class:`TwoLayerVAE`): the guide goes bottom-up,
  x -> 200-200 tanh -> h1 (100 dimensions) -> 100-100 tanh -> h2 (50), and the model top-down,
  h2 ~ N(0, I) -> 100-100 tanh -> h1 -> 200-200 tanh -> x;
- the recipe: batch 20, Adam with epsilon 1e-4, 8 stages of 3^i epochs at learning rate
  1e-3 * 10^(-i/7), i = 0..7, 3,280 epochs in all (``Config(schedule="iwae")``).

A row is ESTIMATOR-K: ``vae-1`` is the standard ELBO with one sample (Pyro's ``Trace_ELBO``,
sampled KL), ``iwae-K`` the K-sample importance-weighted bound
(:class:`pyro_vae.ImportanceWeightedELBO`). ``--stages N`` trains the schedule's first N
stages, (3^N - 1) / 2 epochs; the full recipe is ``--stages 8``. A run is a run directory
that resumes where it stopped: run the same command again (or with more stages) to go on,
so that a long schedule runs in chunks. Every run is evaluated on one fixed binarization of
the test set (seed 0): the IS-5000 log-likelihood of all 10,000 images, the test ELBO and
active units; its result (results/iwae_paper/results/*.json, committed) records the epochs,
minutes and machine behind each number, and README.md is rebuilt from all results there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae import (
    VAE,
    Callback,
    Config,
    active_units,
    build_model,
    elbo,
    fit,
    load_dataset,
    log_likelihood,
)
from pyro_vae.networks import Decoder, Encoder
from pyro_vae.schedules import iwae_epochs, iwae_stage

# Burda et al. (2016), Table 1, MNIST: IS-5000 test negative log-likelihood (nats).
PAPER = {(1, "vae-1"): 86.76, (1, "iwae-5"): 85.54, (1, "iwae-50"): 84.78,
         (2, "vae-1"): 85.33, (2, "iwae-50"): 82.90}
ESTIMATORS = {"vae": "trace", "iwae": "iwae"}  # row name -> pyro-vae estimator
RECIPE = dict(dataset="mnist-binary", optimizer="adam", lr=1e-3, eps=1e-4, batch_size=20,
              schedule="iwae")


class TwoLayerVAE(nn.Module):
    r"""The paper's VAE with two stochastic layers, top-down model and bottom-up guide:

    .. math:: p(h_2) = \mathcal{N}(0, I), \quad p(h_1 \mid h_2) = \mathcal{N}(\mu(h_2),
              \sigma(h_2)), \quad p(x \mid h_1) = \text{Bernoulli}(\text{logits}(h_1)),

    .. math:: q(h_1 \mid x) = \mathcal{N}(\mu(x), \sigma(x)), \quad
              q(h_2 \mid h_1) = \mathcal{N}(\mu(h_1), \sigma(h_1)).

    Every network is an MLP of :mod:`pyro_vae.networks`, so extra leading (particle)
    dimensions pass through.
    """

    def __init__(self, x_dim: int = 784, h1: int = 100, h2: int = 50,
                 hidden1: tuple[int, ...] = (200, 200), hidden2: tuple[int, ...] = (100, 100),
                 activation: str = "tanh"):
        super().__init__()
        self.h2_dim = h2
        self.q_h1 = Encoder(x_dim, hidden1, h1, activation)
        self.q_h2 = Encoder(h1, hidden2, h2, activation)
        self.p_h1 = Encoder(h2, tuple(reversed(hidden2)), h1, activation)
        self.p_x = Decoder(h1, tuple(reversed(hidden1)), x_dim, activation)

    def model(self, x: torch.Tensor) -> None:
        pyro.module("p_h1", self.p_h1)
        pyro.module("p_x", self.p_x)
        with pyro.plate("data", x.shape[0]):
            h2 = pyro.sample("h2", dist.Normal(x.new_zeros(x.shape[0], self.h2_dim), 1.0)
                             .to_event(1))
            h1 = pyro.sample("h1", dist.Normal(*self.p_h1(h2)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.p_x(h1)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module("q_h1", self.q_h1)
        pyro.module("q_h2", self.q_h2)
        with pyro.plate("data", x.shape[0]):
            h1 = pyro.sample("h1", dist.Normal(*self.q_h1(x)).to_event(1))
            pyro.sample("h2", dist.Normal(*self.q_h2(h1)).to_event(1))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Means of p(x | h1) for ``n`` draws from the model, top-down."""
        h2 = torch.randn(n, self.h2_dim, device=next(self.parameters()).device)
        loc, scale = self.p_h1(h2)
        return torch.sigmoid(self.p_x(loc + scale * torch.randn_like(loc)))


def network(layers: int, x_dim: int = 784):
    """The paper's architecture with one or two stochastic layers, as a rebuildable model."""
    if layers == 1:
        return VAE(x_dim, z_dim=50, hidden=[200, 200], activation="tanh")
    return build_model(TwoLayerVAE, x_dim=x_dim)


class LikelihoodCurve(Callback):
    """IS-K log-likelihood on a fixed test subset after the epochs ``at(epoch)`` picks, as a
    metrics column (kept in metrics.jsonl, so a resumed run still has its whole curve)."""

    def __init__(self, vae, x, num_samples: int, at, label: str):
        self.vae, self.x, self.num_samples, self.at, self.label = vae, x, num_samples, at, label

    def after_epoch(self, epoch: int, record: dict) -> dict:
        if not self.at(epoch):
            return {}
        ll = log_likelihood(self.vae.model, self.vae.guide, self.x, self.num_samples)
        print(f"{self.label} epoch {epoch:4d}  lr {record['lr']:.2e}  train "
              f"{record['train_loss']:7.2f}  test {record['test_loss']:7.2f}  IS-"
              f"{self.num_samples} NLL {-ll.mean().item():7.2f}  {record['seconds']:5.1f} s",
              flush=True)
        return {"curve_log_likelihood": ll.mean().item()}


def test_images(data, device: str) -> torch.Tensor:
    """The whole test set, in one fixed binarization (seed 0)."""
    return next(data.eval_batches("test", data.x_test.shape[0])).to(device)


def spread(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``x`` evenly spread over it (every (N/n)-th): a subset whose digits
    and difficulty are those of the whole set, where the first n rows are not (the first
    500 MNIST test images score 1.5 nats better than the first 2,000)."""
    step = max(x.shape[0] // n, 1)
    return x[::step][:n]


def curve_epochs(every: int, last: int):
    """Early epochs on a rough geometric grid, then every ``every``-th, and the last."""
    early = {1, 2, 3, 5, 8, 13, 20, 30, 50}
    return lambda epoch: epoch in early or epoch % every == 0 or epoch == last


def curve_of(metrics: list[dict]) -> list[dict]:
    """(epoch, minutes of training so far, IS NLL) at every epoch the curve measured."""
    minutes, points = 0.0, []
    for m in metrics:
        minutes += m["seconds"] / 60
        if "curve_log_likelihood" in m:
            points.append(dict(epoch=m["epoch"], minutes=minutes,
                               nll=-m["curve_log_likelihood"]))
    return points


def final_numbers(vae, data, is_samples: int, is_examples: int, device: str,
                  sites=("z",)) -> dict:
    """IS-K NLL (mean and standard error) of ``is_examples`` test images spread over the
    test set, the test ELBO and the active units of each latent site, on one fixed
    binarization."""
    x = test_images(data, device)
    ll = log_likelihood(vae.model, vae.guide, spread(x, is_examples), is_samples,
                        progress=sys.stderr.isatty())
    return dict(nll=-ll.mean().item(), nll_se=(ll.std() / len(ll) ** 0.5).item(),
                is_samples=is_samples, is_examples=len(ll),
                test_elbo=elbo(vae.model, vae.guide, data.to(device)),
                active_units={s: active_units(vae.guide, x, site=s)[0] for s in sites})


def machine(device: str) -> str:
    return (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, pyro {pyro.__version__}, device {device}")


# ---------------------------------------------------------------- the study


def rows_of(args) -> list[tuple[int, str]]:
    """(stochastic layers, ESTIMATOR-K) for every row asked for: by default the paper's
    five rows, else every asked estimator on every asked architecture."""
    if args.estimators is None:
        return [key for key in PAPER if key[0] in args.layers]
    for row in args.estimators:
        parse(row)  # fails by name
    return [(layers, row) for layers in args.layers for row in args.estimators]


def parse(row: str) -> tuple[str, int]:
    """'iwae-50' -> ('iwae', 50); 'vae-1' -> ('trace', 1)."""
    name, _, k = row.rpartition("-")
    if name not in ESTIMATORS or not k.isdigit() or int(k) < 1:
        raise SystemExit(f"unknown row {row!r}: a row is ESTIMATOR-K with ESTIMATOR one of "
                         f"{', '.join(ESTIMATORS)} and K particles (vae-1, iwae-5, iwae-50)")
    return ESTIMATORS[name], int(k)


def run(layers: int, row: str, data, args) -> dict:
    """Train (or resume) one row up to ``args.epochs`` and evaluate it, unless a result at
    those epochs is saved already."""
    label = f"{layers}-layer_{row}_seed-{args.seed}"
    saved = args.out / "results" / f"{label}.json"
    if saved.exists():
        result = json.loads(saved.read_text())
        if result["epochs"] == args.epochs and result["evaluation"] == evaluation(args):
            print(f"{label}: done before, read from {saved}", flush=True)
            return result
    name, k = parse(row)
    config = Config(**RECIPE, elbo=name, particles=k, epochs=args.epochs,
                    seed=args.seed, device=args.device)
    pyro.set_rng_seed(args.seed)
    vae = network(layers, data.x_dim)
    run_dir = args.out / "runs" / label
    x_curve = spread(test_images(data, args.device), args.curve_examples)
    curve = LikelihoodCurve(vae, x_curve, args.curve_samples,
                            curve_epochs(args.curve_every, args.epochs), label)
    start = time.perf_counter()
    metrics = fit(vae.model, vae.guide, data, config, run_dir, quiet=True, callbacks=[curve],
                  resume=(run_dir / "checkpoint.pt").exists())
    wall = time.perf_counter() - start
    print(f"{label}: IS-{args.is_samples} on {args.is_examples} test images ...", flush=True)
    sites = ("z",) if layers == 1 else ("h1", "h2")
    result = dict(layers=layers, row=row, seed=args.seed, epochs=len(metrics),
                  stage=iwae_stage(len(metrics)) + 1,
                  minutes=sum(m["seconds"] for m in metrics) / 60,
                  wall_minutes_last_call=wall / 60, machine=machine(args.device),
                  threads=args.threads,
                  evaluation=evaluation(args), curve=curve_of(metrics),
                  **final_numbers(vae, data, args.is_samples, args.is_examples, args.device,
                                  sites))
    print(f"{label}: {result['epochs']} epochs, {result['minutes']:.1f} min, IS-"
          f"{args.is_samples} NLL {result['nll']:.2f} ± {result['nll_se']:.2f}", flush=True)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result, indent=1))
    return result


def evaluation(args) -> dict:
    return dict(is_samples=args.is_samples, is_examples=args.is_examples, quick=args.quick)


def write(out: Path) -> None:
    """README.md from every result in out/results/, the paper's number beside ours."""
    results = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    lines = [
        "# Importance Weighted Autoencoders, Table 1, on pyro-vae", "",
        "Written by `experiments/iwae_paper.py`. Burda, Grosse & Salakhutdinov (2016), "
        "dynamically binarized MNIST, their architectures and recipe (batch 20, Adam with "
        "epsilon 1e-4, 8 stages of 3^i epochs at lr 1e-3 · 10^(-i/7), 3,280 epochs in all). "
        "NLL: the IS-5000 negative log-likelihood in nats per example (± one standard "
        "error over the test images), on one fixed binarization (seed 0) of the test set. "
        "The paper's numbers are after all 3,280 epochs; ours after the epochs in the row.",
        "",
        "| stochastic layers | row | paper NLL | our NLL | epochs (stage) | test ELBO | active "
        "units | training minutes | machine | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["layers"], r["row"], r["seed"])):
        paper = PAPER.get((r["layers"], r["row"]))
        units = ", ".join(f"{s} {n}" for s, n in r["active_units"].items())
        command = (f"`.venv/bin/python experiments/iwae_paper.py --layers {r['layers']} "
                   f"--estimators {r['row']} --seed {r['seed']} --epochs {r['epochs']} "
                   f"--threads {r['threads']}`")
        lines.append(
            f"| {r['layers']} | {r['row']} | {'—' if paper is None else f'{paper:.2f}'} | "
            f"{r['nll']:.2f} ± {r['nll_se']:.2f} (IS-{r['is_samples']}, {r['is_examples']} "
            f"images) | {r['epochs']} ({r['stage']} of 8) | {r['test_elbo']:.2f} | {units} | "
            f"{r['minutes']:.1f} | {r['machine']} | {command} |")
    notes = out / "NOTES.md"
    if notes.exists():  # what the rows say, written by whoever ran them
        lines += ["", notes.read_text()]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, default=4, help="train stages 0..N-1 (1 to 8)")
    parser.add_argument("--epochs", type=int,
                        help="stop after this epoch instead (a chunk of a long schedule)")
    parser.add_argument("--estimators", nargs="+", metavar="ROW",
                        help="rows vae-K, iwae-K (the paper's: vae-1, iwae-5, iwae-50 with one "
                        "stochastic layer, vae-1, iwae-50 with two)")
    parser.add_argument("--layers", type=int, nargs="+", choices=(1, 2), default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--curve-every", type=int, default=20, help="epochs between points")
    parser.add_argument("--curve-samples", type=int, default=1000)
    parser.add_argument("--curve-examples", type=int, default=500)
    parser.add_argument("--is-samples", type=int, default=5000)
    parser.add_argument("--is-examples", type=int, default=10000)
    parser.add_argument("--out", type=Path, help="default: results/iwae_paper/, or "
                        "runs/quick/iwae_paper/ with --quick")
    parser.add_argument("--quick", action="store_true", help="500 images, at most 2 epochs (tests)")
    args = parser.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "iwae_paper")
    if not 1 <= args.stages <= 8:
        parser.error(f"--stages is 1 to 8 (the paper's schedule has 8), got {args.stages}")
    args.epochs = args.epochs or iwae_epochs(args.stages)
    if not 1 <= args.epochs <= iwae_epochs(8):
        parser.error(f"--epochs is 1 to {iwae_epochs(8)}, got {args.epochs}")
    if args.quick:  # at most 2 epochs (fewer with --epochs: a chunk)
        args.epochs = min(args.epochs, 2)
        args.curve_every, args.curve_samples, args.curve_examples = 1, 10, 50
        args.is_samples, args.is_examples = 20, 100
    return args


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)  # speed; fit validates its first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    rows = rows_of(args)
    data = load_dataset("mnist-binary")
    if args.quick:
        data = data.subset(train=500, test=100)
    for layers, row in rows:
        run(layers, row, data, args)
    write(args.out)
    print(f"wrote {args.out / 'README.md'}", flush=True)


if __name__ == "__main__":
    main()
