"""The ``pyro-vae`` command: thin subcommands over the package's functions.

    pyro-vae train --dataset mnist-binary --likelihood bernoulli --elbo meanfield --epochs 10
    pyro-vae train --resume RUN_DIR [--epochs N]
    pyro-vae evaluate RUN_DIR
    pyro-vae sample RUN_DIR
    pyro-vae reconstruct RUN_DIR
    pyro-vae plot RUN_DIR
    pyro-vae data fetch mnist
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import pyro
import torch

from .data import DATASETS, EVAL_SEED, fetch, load_dataset
from .distributed import World
from .estimators import COMPILABLE, ESTIMATORS
from .likelihoods import LIKELIHOODS
from .networks import ACTIVATIONS
from .train import (
    OPTIMIZERS,
    Config,
    RunError,
    atomic_write_text,
    build_vae,
    fit,
    load_run,
    read_config,
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("pyro").setLevel(logging.WARNING)  # not "Guessed max_plate_nesting"
    # Pyro's argument checks cost up to a third of an uncompiled step; fit runs them on its
    # first batch, and a diverging run still stops on its NaN loss. The tests keep them on.
    pyro.enable_validation(False)
    try:
        return args.command(args)
    except (RunError, ValueError) as e:  # DataError and bad options are ValueErrors
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130


def train(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(Config)
             if getattr(args, f.name, None) is not None}
    world = World.from_env(given.get("device", Config.device))  # several under torchrun
    if args.resume:
        run_dir = Path(args.resume)
        saved = world.on_main(read_config, run_dir)  # only the main process reads the run
        config = replace(saved, **given)  # fit refuses changes but --epochs and --jit
    else:
        given.setdefault("jit", given.get("elbo", Config.elbo) in COMPILABLE)
        config = Config(**given)
        run_dir = world.broadcast(Path(args.out or _default_run_dir(config)))
    if world.size > 1 and args.jit is None:
        config.jit = False  # a distributed run is not compiled (same numbers, see --jit)
    config.check()  # bad options fail here, before data is fetched or anything is written
    world.check(config.elbo, config.jit)
    if world.size > 1 and config.dataset in DATASETS:
        world.on_main(fetch, config.dataset)  # one download into the cache, not one per process
    pyro.set_rng_seed(config.seed)
    data = load_dataset(config.dataset)
    vae = build_vae(config, data)
    if world.main:
        print(f"run directory: {run_dir}" + (f" ({world.size} processes)" if world.size > 1
                                             else ""), flush=True)
    metrics = fit(vae.model, vae.guide, data, config, run_dir,
                  resume=bool(args.resume), quiet=args.quiet)
    if metrics and world.main:
        last = metrics[-1]
        print(f"final test loss: {last['test_loss']:.3f} nats per example after epoch "
              f"{last['epoch']} (the negative bound of estimator {config.elbo!r})")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from .evaluate import active_units, elbo, kl_per_dimension, log_likelihood
    from .plots import kl_bars

    start = time.perf_counter()
    run_dir = Path(args.run_dir)
    _, vae, data = load_run(run_dir)
    x = torch.cat(list(data.eval_batches(args.split, 1000)))  # one fixed binarization
    binarization = f"one fixed draw, seed {EVAL_SEED}" if data.binarize else "none"
    bound = elbo(vae.model, vae.guide, data, split=args.split)
    ll = log_likelihood(vae.model, vae.guide, x, num_samples=args.is_samples, seed=args.seed,
                        memory_mb=args.memory_mb, progress=sys.stderr.isatty())
    ll_mean, ll_stderr = ll.mean().item(), (ll.std() / len(ll) ** 0.5).item()
    active, variances = active_units(vae.guide, x)
    kl = kl_per_dimension(vae.guide, x)
    result = {
        "split": args.split,
        "examples": x.shape[0],
        "binarization": binarization,
        "elbo": bound,
        "elbo_estimator": "TraceMeanField_ELBO, 1 particle",
        "log_likelihood": ll_mean,
        "log_likelihood_stderr": ll_stderr,
        "log_likelihood_estimator": f"IS-{args.is_samples}, seed {args.seed}",
        "gap": ll_mean - bound,
        "active_units": active,
        "active_unit_threshold": 0.01,
        "posterior_mean_variances": variances.tolist(),
        "kl_per_dimension": kl.tolist(),
        "seconds": time.perf_counter() - start,
    }
    atomic_write_text(run_dir / "evaluation.json", json.dumps(result, indent=2) + "\n")
    figure = kl_bars(kl, run_dir / "figures" / "kl_per_dimension.png")
    print(f"{args.split} split, {x.shape[0]} examples, binarization: {binarization}")
    print(f"  ELBO                        {bound:10.3f} nats per example "
          f"({result['elbo_estimator']})")
    print(f"  IS-{args.is_samples} log-likelihood   {ll_mean:10.3f} +- {ll_stderr:.3f} "
          f"(standard error; seed {args.seed})")
    print(f"  gap log p(x) - ELBO         {result['gap']:10.3f}")
    print(f"  active units                {active:10d} of {len(kl)} (Cov_x E[z_u|x] > 0.01)")
    print(f"  KL term                     {kl.sum().item():10.3f} nats (per dimension: {figure})")
    print(f"  wall time                   {result['seconds']:10.1f} s")
    print(f"wrote {run_dir / 'evaluation.json'}")
    return 0


def sample(args: argparse.Namespace) -> int:
    from .plots import samples

    config, vae, data = load_run(args.run_dir)
    pyro.set_rng_seed(args.seed)
    path = samples(vae.sample(args.n), data.image_shape,
                   args.out or Path(args.run_dir) / "figures" / "samples.png",
                   title=f"decoder means of z ~ N(0, I), {config.likelihood}")
    print(f"wrote {path}")
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    from .plots import reconstructions

    _, vae, data = load_run(args.run_dir)
    x = next(data.eval_batches(args.split, args.n))
    path = reconstructions(x, vae.reconstruct(x), data.image_shape,
                           args.out or Path(args.run_dir) / "figures" / "reconstructions.png",
                           title=f"{args.split} data and reconstructions "
                           "(decoder mean at E_q[z])")
    print(f"wrote {path}")
    return 0


def plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    for path in plot_run(args.run_dir, seed=args.seed):
        print(f"wrote {path}")
    return 0


def data_fetch(args: argparse.Namespace) -> int:
    folder = fetch(args.name)
    print(f"{args.name}: four MD5-verified IDX files in {folder}")
    return 0


def _default_run_dir(config: Config) -> Path:
    stem = Path(config.dataset).stem
    when = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{when}-{stem}-{config.likelihood}-{config.elbo}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-vae", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    d = Config()

    t = commands.add_parser("train", help="train a VAE with SVI (or resume a run)")
    t.set_defaults(command=train)
    # Defaults are None so that only the flags actually given override a config.
    t.add_argument("--dataset", help=f"{', '.join(DATASETS)}, or a .npz path ({d.dataset})")
    t.add_argument("--likelihood", choices=LIKELIHOODS, help=f"({d.likelihood})")
    t.add_argument("--sigma", type=float, help="fixed scale of gaussian-fixed (1.0)")
    t.add_argument("--min-scale", dest="min_scale", type=float,
                   help="scale floor of gaussian (0: none)")
    t.add_argument("--elbo", choices=ESTIMATORS, help=f"estimator ({d.elbo})")
    t.add_argument("--z-dim", dest="z_dim", type=int, help=f"latent dimensions ({d.z_dim})")
    t.add_argument("--hidden", type=int, nargs="+",
                   help=f"encoder hidden sizes; the decoder mirrors them ({d.hidden[0]})")
    t.add_argument("--activation", choices=ACTIVATIONS, help=f"({d.activation})")
    t.add_argument("--batch-size", dest="batch_size", type=int, help=f"({d.batch_size})")
    t.add_argument("--optimizer", choices=OPTIMIZERS, help=f"({d.optimizer})")
    t.add_argument("--lr", type=float, help=f"learning rate ({d.lr})")
    t.add_argument("--epochs", type=int, help=f"total epochs, also when resuming ({d.epochs})")
    t.add_argument("--particles", type=int,
                   help=f"samples per data point; k of iwae ({d.particles})")
    t.add_argument("--no-vectorize", dest="vectorize", action="store_const", const=False,
                   help="draw particles one by one instead of in one batch")
    t.add_argument("--alpha", type=float, help="order of the renyi bound")
    t.add_argument("--jit", action=argparse.BooleanOptionalAction,
                   help="compile the loss with Pyro's JIT (default: on for "
                   f"{', '.join(COMPILABLE)}; the built-in VAE is static, so it traces exactly)")
    t.add_argument("--seed", type=int, help=f"the one seed of every random draw ({d.seed})")
    t.add_argument("--device", help=f"cpu, cuda, cuda:1, ... ({d.device})")
    t.add_argument("--out",
                   help="run directory (default: runs/<time>-<dataset>-<likelihood>-<elbo>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue this run from its checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar, no per-epoch lines")

    e = commands.add_parser("evaluate", help="ELBO, IS log-likelihood, active units, KL per dim")
    e.set_defaults(command=evaluate)
    e.add_argument("run_dir")
    e.add_argument("--split", choices=("test", "train"), default="test")
    e.add_argument("--is-samples", type=int, default=5000,
                   help="K importance samples per example (5000, as Burda et al.)")
    e.add_argument("--memory-mb", type=float, default=64, help="memory for the decoder's work")
    e.add_argument("--seed", type=int, default=0, help="seed of the importance samples")

    s = commands.add_parser("sample", help="PNG grid of decoder means of prior samples")
    s.set_defaults(command=sample)
    s.add_argument("run_dir")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="PNG path (default: RUN_DIR/figures/samples.png)")

    r = commands.add_parser("reconstruct", help="PNG: a row of data over its reconstructions")
    r.set_defaults(command=reconstruct)
    r.add_argument("run_dir")
    r.add_argument("--n", type=int, default=12)
    r.add_argument("--split", choices=("test", "train"), default="test")
    r.add_argument("--out", help="PNG path (default: RUN_DIR/figures/reconstructions.png)")

    p = commands.add_parser("plot", help="every figure of a run, into RUN_DIR/figures/")
    p.set_defaults(command=plot)
    p.add_argument("run_dir")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior samples")

    data = commands.add_parser("data", help="datasets")
    data_commands = data.add_subparsers(required=True, metavar="ACTION")
    f = data_commands.add_parser("fetch", help="download and verify a dataset's files")
    f.set_defaults(command=data_fetch)
    f.add_argument("name", choices=DATASETS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
