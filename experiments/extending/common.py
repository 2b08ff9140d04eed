"""What the extending examples share, so that each script shows only its own edit: the base
VAE's setting, training and evaluation through pyro_vae's own ``fit`` and ``evaluate``, and
the results folder (README.md with the table, metrics.csv)."""

import argparse
import csv
import logging
import shutil
from pathlib import Path

import pyro

from pyro_vae import (
    VAE,
    Config,
    active_units,
    build_model,
    elbo,
    fit,
    load_dataset,
    log_likelihood,
)
from pyro_vae.evaluate import labels_for

# The base VAE: `pyro-vae train`'s defaults, uncompiled (a compiled trace would freeze the
# annealing factor of kl_annealing.py), 10 epochs.
NETWORK = dict(likelihood="bernoulli", z_dim=50, hidden=[400], activation="relu")
TRAINING = dict(dataset="mnist-binary", elbo="meanfield", optimizer="adam", lr=1e-3,
                batch_size=128, jit=False)


def arguments(doc: str, name: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--is-samples", type=int, default=1000)
    parser.add_argument("--is-examples", type=int, default=2000,
                        help="test images for the IS log-likelihood")
    parser.add_argument("--quick", action="store_true",
                        help="500 training and 100 test images, 2 epochs (tests)")
    parser.add_argument("--out", type=Path, help=f"default: results/extending/{name}/, or "
                        f"runs/quick/extending/{name}/ with --quick")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "extending", name)
    for flag in ("epochs", "is_samples", "is_examples"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.quick:
        args.epochs, args.is_samples, args.is_examples = 2, 20, 100  # all quick test images
    args.script = name
    return args


def load(args, dataset: str = "mnist-binary"):
    pyro.enable_validation(False)  # speed, as `pyro-vae train`; fit validates its first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    data = load_dataset(dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    return data.subset(train=500, test=100) if args.quick else data


def config(args, **changes) -> Config:
    return Config(**{**TRAINING, **changes}, epochs=args.epochs, seed=args.seed)


def build(data, args, edit=VAE, **arguments):
    """The base VAE (``edit=VAE``) or its edit, a subclass taking the VAE's arguments and
    its own, built from the run's seed, so that every run of a script starts from the same
    networks. Built through ``build_model``, so each run directory records its factory
    (``experiments/extending/<script>.py:<class>``) and ``pyro-vae evaluate/plot --model``
    rebuild it."""
    pyro.set_rng_seed(args.seed)
    return build_model(edit, x_dim=data.x_dim, **NETWORK, **arguments)


def train(name: str, vae, data, config: Config, out: Path, callbacks=()) -> list[dict]:
    """``fit`` the pair ``vae.model``/``vae.guide`` into ``out/runs/name``."""
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # this study's own output from an earlier run
    return fit(vae.model, vae.guide, data, config, run_dir, quiet=True, callbacks=callbacks)


def measure(name: str, vae, data, args, metrics: list[dict]) -> dict:
    """The table's numbers for a trained pair, in nats per example on the test split."""
    x = next(data.eval_batches("test", args.is_examples))  # one fixed binarization
    # a model of (x, y) is given the test labels: its numbers are of log p(x | y)
    y = labels_for(vae.model, vae.guide, data)
    ll = log_likelihood(vae.model, vae.guide, x, args.is_samples,
                        y=None if y is None else y[: len(x)])
    row = dict(
        run=name,
        data="binarized MNIST" if data.binarize else "8-bit grey-level MNIST",
        test_elbo=elbo(vae.model, vae.guide, data),
        log_likelihood=ll.mean().item(),
        stderr=(ll.std() / len(ll) ** 0.5).item(),
        active_units=active_units(vae.guide, next(data.eval_batches("test", len(data.x_test))),
                                  y=y)[0],
        seconds_per_epoch=sum(m["seconds"] for m in metrics) / len(metrics),
    )
    print(f"{name:28s} test ELBO {row['test_elbo']:9.2f}  IS-{args.is_samples} "
          f"{row['log_likelihood']:9.2f} +- {row['stderr']:.2f}  active units "
          f"{row['active_units']:3d}  {row['seconds_per_epoch']:5.1f} s/epoch", flush=True)
    return row


def write(args, data, rows: list[dict], title: str, story: list[str], figure: str) -> None:
    """README.md (setting, table, what it shows, the figure) and metrics.csv."""
    with open(args.out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# {title}", "",
        f"MNIST ({len(data.x_train)} training images), {args.epochs} epochs, Adam lr 1e-3, "
        f"batch 128, seed {args.seed}, written by `experiments/extending/{args.script}.py`. "
        f"Test ELBO: `TraceMeanField_ELBO` on all {len(data.x_test)} test images (closed-form "
        f"KL where one exists, sampled otherwise). IS-{args.is_samples}: importance-sampled "
        f"log-likelihood on the first {args.is_examples} test images, +- one standard error. "
        "Nats per example; binarized data is dynamically binarized in training and evaluated "
        "on one fixed binarization (seed 0).", "",
        f"| run | data | test ELBO | IS-{args.is_samples} log p(x) | active units | s / epoch |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['run']} | {r['data']} | {r['test_elbo']:.2f} | {r['log_likelihood']:.2f} "
              f"+- {r['stderr']:.2f} | {r['active_units']} | {r['seconds_per_epoch']:.1f} |"
              for r in rows]
    lines += ["", *story, "", f"![{figure}]({figure})", ""]
    (args.out / "README.md").write_text("\n".join(lines))
