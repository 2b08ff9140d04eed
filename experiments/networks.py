"""Convolutional against MLP encoder/decoder: the built-in VAE with ``network="mlp"`` and
``network="conv"`` on dynamically binarized MNIST, at the same budget.

    .venv/bin/python experiments/networks.py --epochs 10 --threads 1
    .venv/bin/python experiments/networks.py --quick          # seconds (tests)

Both runs: Bernoulli likelihood, 50 latent dimensions, ReLU, ``meanfield`` (analytic KL)
captured by the engine (pyro_vae.engine), Adam lr 1e-3, batch 128, seed 0, ``--epochs``
epochs. The MLP is
`pyro-vae train`'s default (784-400-50 and back); the convolutional networks
(:class:`pyro_vae.networks.ConvEncoder`/``ConvDecoder``) are two stride-2 convolutions (32
and 64 channels, kernel 4) and a dense layer of 400 units on each side. Test ELBO on all
10,000 test images; IS-``--is-samples`` log-likelihood on the first ``--is-examples``
(one fixed binarization, seed 0); seconds per epoch of the training loops on this machine.

Writes results/networks/: README.md, metrics.csv, samples.png.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import sys
from pathlib import Path

import pyro
import torch

from pyro_vae import VAE, Config, elbo, fit, load_dataset, log_likelihood
from pyro_vae.evaluate import prior_means
from pyro_vae.plots import image_panels

NETWORKS = {"mlp": "MLP 784-400-50", "conv": "conv 32-64 (k4 s2) + dense 400"}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--is-samples", type=int, default=1000)
    parser.add_argument("--is-examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, help="default: results/networks/, or "
                        "runs/quick/networks/ with --quick")
    parser.add_argument("--quick", action="store_true", help="1,000 images, 2 epochs (tests)")
    args = parser.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "networks")
    if min(args.epochs, args.is_samples, args.is_examples) < 1:
        parser.error("--epochs, --is-samples and --is-examples must be at least 1")
    return args


def main() -> None:
    args = arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    pyro.enable_validation(False)  # speed, as `pyro-vae train`; fit validates its first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    data = load_dataset("mnist-binary")
    if args.quick:
        data, args.epochs, args.is_samples, args.is_examples = (
            data.subset(train=1000, test=200), 2, 20, 200)
    args.out.mkdir(parents=True, exist_ok=True)
    x_test = next(data.eval_batches("test", args.is_examples))  # one fixed binarization
    config = Config(dataset=data.name, elbo="meanfield", jit=True, batch_size=128,
                    epochs=args.epochs, seed=args.seed)
    rows, samples, per_image = [], {}, []
    for network, name in NETWORKS.items():
        pyro.set_rng_seed(args.seed)
        vae = VAE(x_dim=data.x_dim, z_dim=50, hidden=[400], network=network,
                  image_shape=data.image_shape)
        run_dir = args.out / "runs" / network
        shutil.rmtree(run_dir, ignore_errors=True)  # this study's own output of an earlier run
        metrics = fit(vae.model, vae.guide, data, config, run_dir, quiet=True)
        ll = log_likelihood(vae.model, vae.guide, x_test, args.is_samples)
        per_image.append(ll)
        rows.append(dict(
            network=name, parameters=sum(p.numel() for p in vae.parameters()),
            test_elbo=elbo(vae.model, vae.guide, data), log_likelihood=ll.mean().item(),
            stderr=(ll.std() / len(ll) ** 0.5).item(),
            seconds_per_epoch=sum(m["seconds"] for m in metrics) / len(metrics)))
        print(f"{name:32s} test ELBO {rows[-1]['test_elbo']:8.2f}  IS-{args.is_samples} "
              f"{rows[-1]['log_likelihood']:8.2f} +- {rows[-1]['stderr']:.2f}  "
              f"{rows[-1]['seconds_per_epoch']:5.1f} s/epoch", flush=True)
        pyro.set_rng_seed(args.seed)
        samples[name] = prior_means(vae.model, x_test, 32)
    image_panels(samples, data.image_shape, args.out / "samples.png", ncol=16)
    difference = per_image[1] - per_image[0]  # the same images: a paired comparison
    write(args, data, rows, difference.mean().item(),
          (difference.std() / len(difference) ** 0.5).item())


def write(args, data, rows: list[dict], gap: float, error: float) -> None:
    with open(args.out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    mlp, conv = rows
    lines = [
        "# Convolutional against MLP networks", "",
        f"Dynamically binarized MNIST ({len(data.x_train)} training images), {args.epochs} "
        f"epochs each, seed {args.seed}, written by `experiments/networks.py` (its docstring "
        f"has the settings). Test ELBO: `TraceMeanField_ELBO` on all {len(data.x_test)} test "
        f"images; IS-{args.is_samples}: importance-sampled log-likelihood of the first "
        f"{args.is_examples} test images, +- one standard error; nats per image on one fixed "
        f"binarization (seed 0). Machine: {os.cpu_count()} CPU cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}. Command: "
        f"`python {' '.join(sys.argv)}`.", "",
        f"| network | parameters | test ELBO | IS-{args.is_samples} log p(x) | s / epoch |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['network']} | {r['parameters']:,} | {r['test_elbo']:.2f} | "
              f"{r['log_likelihood']:.2f} +- {r['stderr']:.2f} | {r['seconds_per_epoch']:.1f} |"
              for r in rows]
    verdict = (f"a tie with the MLP's ({gap:+.2f} nats, inside two standard errors of the "
               f"paired difference, {2 * error:.2f})" if abs(gap) < 2 * error else
               f"{'above' if gap > 0 else 'below'} the MLP's by {gap:+.2f} +- {error:.2f} nats "
               "(the paired difference over the same test images; one seed each, so the "
               "noise of training is not in that error)")
    lines += [
        "", f"- The convolutional VAE's IS log-likelihood is {verdict}; each epoch costs "
        f"{conv['seconds_per_epoch'] / mlp['seconds_per_epoch']:.1f}x the MLP's on this "
        "machine.", "- The figure: decoder means of 32 draws z ~ N(0, I) from each.", "",
        "![samples](samples.png)", ""]
    (args.out / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
