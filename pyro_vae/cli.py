"""The ``pyro-vae`` command: thin subcommands over the package's functions.

    pyro-vae train --dataset mnist-binary --likelihood bernoulli --elbo meanfield --epochs 10
    pyro-vae train --resume RUN_DIR [--epochs N]
    pyro-vae train --dataset path/to/images --network conv --image-size 32 32
    pyro-vae train --dataset vectors.csv --likelihood gaussian-shared
    pyro-vae train --model my_model.py:make_vae --model-args '{"z_dim": 10}' --elbo trace
    pyro-vae evaluate RUN_DIR [--model my_model.py:make_vae] [--device cpu]
    pyro-vae sample RUN_DIR
    pyro-vae reconstruct RUN_DIR
    pyro-vae plot RUN_DIR
    pyro-vae data fetch mnist
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import time
import traceback
import warnings
from dataclasses import fields, replace
from pathlib import Path

import pyro
import torch

from .callbacks import TensorBoard
from .config import OPTIMIZERS, Config
from .data import DATASETS, EVAL_SEED, fetch, load_dataset, load_recorded, load_source
from .distributed import World
from .engine import EagerFallback
from .estimators import ESTIMATORS
from .likelihoods import LIKELIHOODS
from .model import LATENTS, VAE
from .networks import ACTIVATIONS, NETWORKS
from .preemption import Preempted
from .refinement import FAMILIES
from .rundir import (
    RunError,
    WriteError,
    atomic_write_text,
    load_checkpoint,
    load_run,
    old_data_record,
    read_config,
    read_data,
    read_model,
    require_records,
)
from .schedules import SCHEDULES
from .spec import build_model, rebuild, resolve
from .train import fit

DEFAULT_DATASET = "mnist-binary"  # of a new run without --dataset
# The flags that describe the built-in VAE (the model), apart from how it trains (Config).
VAE_FLAGS = ("likelihood", "sigma", "min_scale", "z_dim", "hidden", "activation", "network",
             "latent", "groups", "classes")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("pyro").setLevel(logging.WARNING)  # not "Guessed max_plate_nesting"
    # Pyro's argument checks cost up to a third of an uncompiled step; fit runs them on its
    # first batch, and a diverging run still stops on its NaN loss. The tests keep them on.
    pyro.enable_validation(False)
    shown = warnings.showwarning

    def show(message, category, *rest, **options):  # the engine's fallback: one line
        if issubclass(category, EagerFallback):
            print(f"pyro-vae: {message}", file=sys.stderr)
        else:
            shown(message, category, *rest, **options)

    warnings.showwarning = show
    try:
        return args.command(args)
    except WriteError as e:  # a full disk, a read-only folder: what is intact, no traceback
        e.intact = e.intact or (f"The run itself is unchanged: {e.remedy} and run the same "
                                "command again")
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 1
    except (RunError, ValueError) as e:  # DataError and bad options are ValueErrors
        if not _raised_by_pyro_vae(e):  # inside a user's model or guide: its traceback
            traceback.print_exc()
            print(f"pyro-vae: error: {type(e).__name__} raised outside pyro-vae (in the model "
                  "or guide, or a library they call): see the traceback above",
                  file=sys.stderr)
            return 1
        # Pyro appends the trace's shapes to an error raised inside a model: not for users
        message = str(e).split("Trace Shapes:")[0].rstrip()
        print(f"pyro-vae: error: {message}", file=sys.stderr)
        return 1
    except Preempted as e:  # a signal, after the step in flight: fit has said how to resume
        return e.code
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


def _raised_by_pyro_vae(e: BaseException) -> bool:
    """Whether ``e`` was raised by pyro-vae's own code (an error of ours, one clear line),
    not inside a user's model or guide or a library (whose traceback the user needs)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().parent == _PACKAGE


_PACKAGE = Path(__file__).resolve().parent


def train(args: argparse.Namespace) -> int:
    if args.image_size is not None and len(args.image_size) == 1:
        args.image_size *= 2  # one number: square images
    if args.image_size is not None and min(args.image_size) < 1:
        raise ValueError(f"--image-size is HEIGHT WIDTH, each at least 1, got {args.image_size}")
    given = {f.name: getattr(args, f.name) for f in fields(Config)
             if getattr(args, f.name, None) is not None}
    vae_flags = [name for name in VAE_FLAGS if getattr(args, name) is not None]
    world = World.from_env(given.get("device", Config.device))  # several under torchrun
    if args.resume:
        if vae_flags or args.model_args is not None:
            raise ValueError(f"a resumed run keeps its model: drop {_flags(vae_flags) or ''}"
                             f"{' --model-args' if args.model_args is not None else ''}")
        if args.image_size is not None or args.stream is not None:
            raise ValueError("a resumed run keeps its data: drop "
                             f"{'--image-size' if args.image_size is not None else '--stream'}")
        run_dir = Path(args.resume)
        world.on_main(require_records, run_dir)  # without a checkpoint: config, model, data
        saved, described = world.on_main(read_config, run_dir)  # the main process reads it
        config = replace(saved, **given)  # fit refuses changes but --epochs and --jit
        spec = world.on_main(read_model, run_dir)
        recorded = world.on_main(read_data, run_dir) or old_data_record(saved, described)
        if spec is None:
            raise RunError(f"{run_dir} does not record how its model was built: resume it "
                           "from Python with fit(..., resume=True) and the same model/guide")
    else:
        if args.model and vae_flags:
            raise ValueError(f"{_flags(vae_flags)} describe the built-in VAE; a model from "
                             "--model takes its arguments from --model-args (a JSON object)")
        given.setdefault("dataset", DEFAULT_DATASET)
        config = Config(**given)
        run_dir = world.broadcast(Path(args.out or _default_run_dir(config, args)))
    config.check()  # bad options fail here, before data is fetched or anything is written
    model_args = _json_object(args.model_args)  # and so do bad model options
    if args.resume:  # the factory's checks; the RNG as a new run's is when it builds
        with torch.random.fork_rng(devices=[]):
            rebuild(spec, args.model, args.edited_model)
    elif args.model:
        resolve(args.model)
    else:
        _vae(args, x_dim=16, image_shape=(1, 4, 4))  # the flags' checks, before any data
    if world.size > 1 and config.dataset in DATASETS:
        world.on_main(fetch, config.dataset)  # one download into the cache, not one per process
    pyro.set_rng_seed(config.seed)
    if args.resume:  # the data it trained on (checked, where the run has their fingerprint)
        source = recorded["source"]
        data = load_source(source) if recorded.get("unchecked") else load_recorded(recorded)
    else:
        data = load_dataset(config.dataset, image_size=args.image_size, stream=args.stream)
    if args.resume:  # its parameters: the checkpoint's (a new run's, where it has none)
        built = rebuild(spec, args.model, args.edited_model)
    elif args.model:
        built = build_model(args.model, **model_args)
    elif not args.resume:
        built = _vae(args, data.x_dim, data.image_shape)
    callbacks = [TensorBoard(run_dir / "tensorboard")] if args.tensorboard and world.main else []
    if world.main:
        print(f"run directory: {run_dir}" + (f" ({world.size} processes)" if world.size > 1
                                             else ""), flush=True)
    metrics = fit(built.model, built.guide, data, config, run_dir,
                  resume=bool(args.resume), quiet=args.quiet, callbacks=callbacks)
    if metrics and world.main:
        from .plots import learning_curves, run_title

        try:
            learning_curves({"": metrics}, run_dir / "figures" / "learning_curves.png",
                            title=run_title(built.spec, config))
        except WriteError as e:
            epoch = load_checkpoint(run_dir)["epoch"]
            e.intact = (f"Training finished, and the checkpoint of epoch {epoch} in {run_dir} "
                        f"is intact: {e.remedy} and draw the figure with pyro-vae plot "
                        f"{run_dir}")
            raise
        last = metrics[-1]
        print(f"final test loss: {last['test_loss']:.3f} nats per example after epoch "
              f"{last['epoch']} (the negative bound of estimator {config.elbo!r})")
    return 0


def _vae(args: argparse.Namespace, x_dim: int, image_shape) -> VAE:
    """The built-in VAE of the flags given (VAE's defaults for the others)."""
    options = {name: getattr(args, name) for name in ("sigma", "min_scale")
               if getattr(args, name) is not None}
    arguments = {name: getattr(args, name) for name in ("likelihood", "z_dim", "hidden",
                                                         "activation", "network", "latent",
                                                         "groups", "classes")
                 if getattr(args, name) is not None}
    if any(h < 1 for h in arguments.get("hidden", [1])):
        raise ValueError(f"hidden sizes must be at least 1, got {arguments['hidden']}")
    if arguments.get("network") == "conv":
        arguments["image_shape"] = image_shape
    return VAE(x_dim=x_dim, likelihood_options=options, **arguments)


def _flags(names: list[str]) -> str:
    return " ".join(f"--{name.replace('_', '-')}" for name in names)


def _json_object(text: str | None) -> dict:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--model-args is not JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--model-args must be a JSON object of keyword arguments, got {text!r}")
    return value


def evaluate(args: argparse.Namespace) -> int:
    from .evaluate import (
        active_units,
        elbo,
        elbo_estimator,
        kl_per_dimension,
        labels_for,
        log_likelihood,
        semi_supervised,
        standard_normal_prior,
    )
    from .plots import kl_bars

    start = time.perf_counter()
    run_dir = Path(args.run_dir)
    for flag in ("is_samples", "examples", "ais_steps", "ais_chains", "refine"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, "
                             f"got {getattr(args, flag)}")
    if args.refine_family and not args.refine:
        raise ValueError(f"--refine-family {args.refine_family} says what --refine STEPS "
                         "optimises: give --refine too")
    args.refine_family = args.refine_family or "gaussian"
    _, built, data = load_run(run_dir, args.model, args.device, edited=args.edited_model)
    model, guide = built.model, built.guide
    if args.examples is not None:
        data = data.subset(**{args.split: args.examples})
    x = torch.cat(list(data.eval_batches(args.split, 1000)))  # one fixed binarization
    y = labels_for(model, guide, data, args.split)  # None for a model of x alone
    # a semi-supervised model: log p(x) with every label hidden, its classifier scored
    classify = built.classify if y is not None and semi_supervised(built) else None
    classified = None
    if classify is not None:
        with torch.no_grad():
            predicted = torch.cat([classify(batch) for batch in x.split(1000)])
        known = y >= 0  # none, in a training split of hidden labels: no error to report
        classified = {"classification_error": 100.0 * (predicted[known] != y[known])
                      .double().mean().item() if known.any() else None,
                      "classified_examples": int(known.sum())}
        y = torch.full_like(y, -1)
    if y is not None and args.ais_steps:
        raise ValueError("--ais-steps: AIS is implemented for models of x alone; this model "
                         "takes labels (x, y)")
    binarization = f"one fixed draw, seed {EVAL_SEED}" if data.binarize else "none"
    conditional = y is not None and classified is None  # an estimate of log p(x | y)
    bound = elbo(model, guide, data, split=args.split, hide_labels=classify is not None)
    ll = log_likelihood(model, guide, x, num_samples=args.is_samples, seed=args.seed,
                        memory_mb=args.memory_mb, progress=sys.stderr.isatty(), y=y)
    ll_mean, ll_stderr = ll.mean().item(), (ll.std() / len(ll) ** 0.5).item()
    ais, annealed = None, None
    if args.ais_steps:
        from .ais import ais_log_likelihood

        started = time.perf_counter()
        annealed = ais_log_likelihood(model, guide, x, steps=args.ais_steps,
                                      chains=args.ais_chains, seed=args.seed,
                                      progress=sys.stderr.isatty())
        ais = {
            "ais_log_likelihood": annealed.log_likelihood.mean().item(),
            "ais_log_likelihood_stderr": (annealed.log_likelihood.std()
                                          / len(x) ** 0.5).item(),
            "ais_estimator": f"AIS from the guide, {args.ais_steps} steps x {args.ais_chains} "
                             f"chains, HMC with 5 leapfrog steps, seed {args.seed}",
            "ais_acceptance": annealed.acceptance.mean().item(),
            "ais_seconds": time.perf_counter() - started,
        }
    refined = _refinement(model, guide, x, y, args, annealed) if args.refine else None
    skipped = []
    try:
        active, variances = active_units(guide, x, y=y)
    except ValueError as e:
        active, variances = None, None
        skipped.append(f"active units: no posterior mean of one latent site ({e})")
    kl = None
    if not standard_normal_prior(model, x, y=y):
        skipped.append("KL per dimension: the model's prior is not N(0, I) at one latent "
                       "site, the prior it is measured against")
    else:
        try:
            kl = kl_per_dimension(guide, x, y=y)
        except ValueError as e:
            skipped.append(f"KL per dimension: {e}")
    result = {
        "split": args.split,
        # a run trained with a validation split held out (Dataset.held_out) is evaluated
        # on it: its "test" split
        "validation": (data.source or {}).get("validation"),
        "examples": x.shape[0],
        "binarization": binarization,
        "elbo": bound,
        "elbo_estimator": {"meanfield": "TraceMeanField_ELBO", "trace": "Trace_ELBO",
                           "enum": "TraceEnum_ELBO"}[
            elbo_estimator(guide, *((x[:1],) if y is None else (x[:1], y[:1])))] + ", 1 particle",
        "log_likelihood": ll_mean,
        "log_likelihood_stderr": ll_stderr,
        "log_likelihood_estimator": f"IS-{args.is_samples}, seed {args.seed}" + (
            ", of log p(x), y a latent variable" if classified else
            ", of log p(x | y)" if conditional else ""),
        **(classified or {}),
        "gap": ll_mean - bound,
        "active_units": active,
        "active_unit_threshold": 0.01,
        "posterior_mean_variances": None if variances is None else variances.tolist(),
        "kl_per_dimension": None if kl is None else kl.tolist(),
        **(ais or {}),
        **({"refinement": refined} if refined else {}),
        "skipped": skipped,
        "seconds": time.perf_counter() - start,
    }
    atomic_write_text(run_dir / "evaluation.json", json.dumps(result, indent=2) + "\n")
    print(f"{args.split} split, {x.shape[0]} examples, binarization: {binarization}")
    if result["validation"] and args.split == "test":
        print(f"  (this run's test split is its validation split: the last "
              f"{result['validation']} training images of {data.name}, held out)")
    print(f"  ELBO                        {bound:10.3f} nats per example "
          f"({result['elbo_estimator']})")
    print(f"  IS-{args.is_samples} log-likelihood   {ll_mean:10.3f} +- {ll_stderr:.3f} "
          f"(standard error; seed {args.seed}{'; of log p(x | y)' * conditional})")
    if classified and classified["classification_error"] is not None:
        print(f"  classifier q(y | x) error   {classified['classification_error']:10.2f} % "
              f"of {classified['classified_examples']} labelled examples (y summed out "
              "above: labels hidden)")
    elif classified:
        print(f"  classifier q(y | x) error   none: the {args.split} split has no labels")
    print(f"  gap log p(x) - ELBO         {result['gap']:10.3f}")
    if ais:
        print(f"  AIS log-likelihood          {ais['ais_log_likelihood']:10.3f} +- "
              f"{ais['ais_log_likelihood_stderr']:.3f} ({args.ais_steps} steps x "
              f"{args.ais_chains} chains, acceptance {ais['ais_acceptance']:.2f}, "
              f"{ais['ais_seconds']:.1f} s)")
    if refined:
        _print_refinement(refined)
    if active is not None:
        print(f"  active units                {active:10d} of {len(variances)} "
              "(Cov_x E[z_u|x] > 0.01)")
    if kl is not None:
        figure = kl_bars(kl, run_dir / "figures" / "kl_per_dimension.png")
        print(f"  KL term                     {kl.sum().item():10.3f} nats "
              f"(per dimension: {figure})")
    print(f"  wall time                   {result['seconds']:10.1f} s")
    for line in skipped:
        print(f"skipped {line}")
    print(f"wrote {run_dir / 'evaluation.json'}")
    return 0


def _refinement(model, guide, x, y, args, annealed) -> dict:
    """``evaluate --refine``: the refined bound beside the amortized one on the same
    examples, and with AIS the approximation and amortization gaps, each a paired mean over
    examples with its standard error."""
    from .refinement import refine

    started = time.perf_counter()
    settings = dict(lr=1e-2, particles=10, eval_particles=100)
    r = refine(model, guide, x, steps=args.refine, family=args.refine_family, y=y,
               seed=args.seed, progress=sys.stderr.isatty(), **settings)

    def paired(values: torch.Tensor) -> tuple[float, float]:
        return values.mean().item(), (values.std() / len(values) ** 0.5).item()

    # refined - amortized is the amortization gap where the guide's q is in the family
    # refined (a diagonal Normal is in both); for another guide (a flow) it compares families
    from .evaluate import posterior

    q = next(posterior(guide, x[:2], y=None if y is None else y[:2]))
    base = q.base_dist if isinstance(q, pyro.distributions.Independent) else q

    refined = {
        "family": args.refine_family,
        "estimator": f"pyro_vae.refine: {args.refine} steps of Adam (lr {settings['lr']}, "
                     f"{settings['particles']} particles) per example from the guide's output; "
                     f"bounds from {settings['eval_particles']} fresh draws per example, "
                     f"seed {args.seed}",
        "steps": r.steps,
        "amortized_elbo": paired(r.amortized_elbo)[0],
        "amortized_elbo_stderr": paired(r.amortized_elbo)[1],
        "refined_elbo": paired(r.elbo)[0],
        "refined_elbo_stderr": paired(r.elbo)[1],
        "guide_in_family": isinstance(base, pyro.distributions.Normal),
        "refined_minus_amortized": paired(r.elbo - r.amortized_elbo)[0],
        "refined_minus_amortized_stderr": paired(r.elbo - r.amortized_elbo)[1],
        "seconds": time.perf_counter() - started,
    }
    if refined["guide_in_family"]:
        refined.update(amortization_gap=refined["refined_minus_amortized"],
                       amortization_gap_stderr=refined["refined_minus_amortized_stderr"])
    if annealed is not None:
        gap = paired(annealed.log_likelihood - r.elbo)
        refined.update(approximation_gap=gap[0], approximation_gap_stderr=gap[1])
    return refined


def _print_refinement(r: dict) -> None:
    print(f"  amortized ELBO, sampled     {r['amortized_elbo']:10.3f} +- "
          f"{r['amortized_elbo_stderr']:.3f} (the bound refinement starts from)")
    print(f"  refined ELBO ({r['family']:8s})    {r['refined_elbo']:10.3f} +- "
          f"{r['refined_elbo_stderr']:.3f} ({r['steps']} steps, {r['seconds']:.1f} s)")
    what = "amortization gap          " if r["guide_in_family"] else "refined - amortized       "
    print(f"  {what}  {r['refined_minus_amortized']:10.3f} +- "
          f"{r['refined_minus_amortized_stderr']:.3f} "
          + ("(refined - amortized, paired)" if r["guide_in_family"] else
             "(paired; the guide's q is not in the refined family, so this is not its "
             "amortization gap)"))
    if "approximation_gap" in r:
        print(f"  approximation gap           {r['approximation_gap']:10.3f} +- "
              f"{r['approximation_gap_stderr']:.3f} (AIS - refined, paired)")


def sample(args: argparse.Namespace) -> int:
    from .evaluate import prior_means
    from .plots import samples

    _, built, data = load_run(args.run_dir, args.model, args.device,
                              edited=args.edited_model)
    _require_images(data, "sample")
    x = next(data.eval_batches("test", args.n))
    y = _labels_for(built, data, "test", args.n)
    pyro.set_rng_seed(args.seed)
    path = samples(prior_means(built.model, x, args.n, y=y), data.image_shape,
                   args.out or Path(args.run_dir) / "figures" / "samples.png",
                   title="decoder means of z ~ p(z)")
    print(f"wrote {path}")
    return 0


def reconstruct(args: argparse.Namespace) -> int:
    from .evaluate import reconstruction_means
    from .plots import reconstructions

    _, built, data = load_run(args.run_dir, args.model, args.device,
                              edited=args.edited_model)
    _require_images(data, "reconstruct")
    x = next(data.eval_batches(args.split, args.n))
    y = _labels_for(built, data, args.split, args.n)
    if args.refine is not None and args.refine < 1:
        raise ValueError(f"--refine must be at least 1, got {args.refine}")
    if args.refine:
        from .evaluate import decoded_means
        from .refinement import refine

        q = refine(built.model, built.guide, x, steps=args.refine, y=y).q
        means = decoded_means(built.model, q.mean, x, y=y)
        title = (f"{args.split} data and reconstructions (decoder mean at the mean of q "
                 f"refined {args.refine} steps per example)")
        default = "reconstructions_refined.png"
    else:
        means = reconstruction_means(built.model, built.guide, x, y=y)
        title = f"{args.split} data and reconstructions (decoder mean at E_q[z])"
        default = "reconstructions.png"
    path = reconstructions(x, means, data.image_shape,
                           args.out or Path(args.run_dir) / "figures" / default, title=title)
    print(f"wrote {path}")
    return 0


def _labels_for(built, data, split: str, n: int):
    """The first ``n`` labels of ``split`` for a model of (x, y); None for a model of x."""
    from .evaluate import labels_for

    y = labels_for(built.model, built.guide, data, split)
    return None if y is None else y[:n]


def _require_images(data, command: str) -> None:
    if data.image_shape is None:
        raise ValueError(f"{command} draws images, and {data.name} holds vectors of "
                         f"{data.x_dim} numbers")


def plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    written, skipped = plot_run(args.run_dir, seed=args.seed, factory=args.model,
                                device=args.device, edited=args.edited_model)
    for path in written:
        print(f"wrote {path}")
    for line in skipped:
        print(f"skipped {line}")
    return 0


def data_fetch(args: argparse.Namespace) -> int:
    folder = fetch(args.name)
    print(f"{args.name}: four MD5-verified IDX files in {folder}")
    return 0


def _default_run_dir(config: Config, args: argparse.Namespace) -> Path:
    stem = Path(config.dataset).stem
    when = time.strftime("%Y%m%d-%H%M%S")
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0:  # the same in each restart
        launch = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if launch == "none":
            raise ValueError("torchrun --max-restarts restarts the group into the run directory "
                             "it began: give --out, or torchrun --rdzv-id (or --standalone), "
                             "so that a restarted process finds the run")
        when = f"torchrun-{launch}"
    model = args.model.rpartition(":")[2] if args.model else args.likelihood or "bernoulli"
    return Path("runs") / f"{when}-{stem}-{model}-{config.elbo}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-vae", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    d = Config()
    v = {name: p.default for name, p in inspect.signature(VAE).parameters.items()}

    t = commands.add_parser("train", help="train a VAE with SVI (or resume a run)")
    t.set_defaults(command=train)
    # Defaults are None so that only the flags actually given override a config.
    t.add_argument("--dataset", help=f"{', '.join(DATASETS)}, or a path: a .npz, .npy or .csv "
                   f"file, or a folder of PNG/JPEG images in class sub-folders ({DEFAULT_DATASET})")
    t.add_argument("--stream", action=argparse.BooleanOptionalAction,
                   help="read a .npy file (uint8) or a folder a batch at a time, not all into "
                        "memory (default: where its training images take over 1 GiB as floats)")
    t.add_argument("--image-size", dest="image_size", type=int, nargs="+",
                   metavar=("HEIGHT", "WIDTH"),
                   help="resize a folder's images to this (one number: square)")
    vae = t.add_argument_group("the built-in VAE (its architecture is recorded in the run)")
    vae.add_argument("--likelihood", choices=LIKELIHOODS, help=f"({v['likelihood']})")
    vae.add_argument("--sigma", type=float, help="fixed scale of gaussian-fixed (1.0)")
    vae.add_argument("--min-scale", dest="min_scale", type=float,
                     help="scale floor of gaussian (0: none)")
    vae.add_argument("--latent", choices=LATENTS,
                     help="the latent code: Gaussian, G one-hot codes of C classes, or binary "
                     "units (gaussian)")
    vae.add_argument("--z-dim", dest="z_dim", type=int,
                     help="latent dimensions, or binary units of --latent bernoulli (50)")
    vae.add_argument("--groups", type=int, help="one-hot codes of --latent categorical (G)")
    vae.add_argument("--classes", type=int, help="classes of each code of --latent "
                     "categorical (C)")
    vae.add_argument("--hidden", type=int, nargs="+",
                     help=f"encoder hidden sizes; the decoder mirrors them ({v['hidden'][0]})")
    vae.add_argument("--activation", choices=ACTIVATIONS, help=f"({v['activation']})")
    vae.add_argument("--network", choices=NETWORKS,
                     help=f"encoder and decoder: MLPs or convolutional nets for images "
                     f"({v['network']})")
    own = t.add_argument_group("or your own model")
    own.add_argument("--model", metavar="FACTORY",
                     help="path/to/file.py:function or package.module:function returning an "
                     "object with model and guide methods; also to --resume such a run")
    own.add_argument("--model-args", dest="model_args", metavar="JSON",
                     help="the factory's keyword arguments, a JSON object")
    t.add_argument("--elbo", choices=ESTIMATORS, help=f"estimator ({d.elbo})")
    t.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule (none): iwae = 3^i epochs at lr 10^(-i/7)")
    t.add_argument("--clip-norm", dest="clip_norm", type=float,
                   help="clip the gradient's 2-norm to this (none)")
    t.add_argument("--tensorboard", action="store_true",
                   help="also log the metrics for TensorBoard, into RUN_DIR/tensorboard")
    t.add_argument("--batch-size", dest="batch_size", type=int, help=f"({d.batch_size})")
    t.add_argument("--optimizer", choices=OPTIMIZERS, help=f"({d.optimizer})")
    t.add_argument("--lr", type=float, help=f"learning rate ({d.lr})")
    t.add_argument("--eps", type=float, help="Adam's epsilon (torch's 1e-8)")
    t.add_argument("--epochs", type=int, help=f"total epochs, also when resuming ({d.epochs})")
    t.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="also checkpoint inside each epoch, every STEPS steps (a SIGTERM or "
                        "SIGUSR1 checkpoints after the step in flight and exits either way)")
    t.add_argument("--particles", type=int,
                   help=f"samples per data point; k of iwae ({d.particles})")
    t.add_argument("--no-vectorize", dest="vectorize", action="store_const", const=False,
                   help="draw particles one by one instead of in one batch")
    t.add_argument("--alpha", type=float, help="order of the renyi bound")
    t.add_argument("--refine-steps", dest="refine_steps", type=int,
                   help="K refinement steps of semi-amortized (5)")
    t.add_argument("--jit", action=argparse.BooleanOptionalAction,
                   help="step with the estimator's captured graph, checked against Pyro's "
                   "step on each batch shape's first batch; what cannot be captured says why "
                   "and steps eagerly (default: on; for static models)")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="run the captured step through torch.compile: seconds to compile "
                   "each batch shape, then the fastest step (default: off)")
    t.add_argument("--seed", type=int, help=f"the one seed of every random draw ({d.seed})")
    t.add_argument("--device", help=f"cpu, cuda, cuda:1, ... ({d.device}); under torchrun "
                   "'cuda' gives each process its own GPU")
    t.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                   help="on CUDA, deterministic kernels, so that a resumed run ends bit for "
                   "bit where an uninterrupted one does (default: on)")
    t.add_argument("--out",
                   help="run directory (default: runs/<time>-<dataset>-<likelihood>-<elbo>; "
                        "under torchrun --max-restarts, torchrun-<run id> for <time>)")
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
    e.add_argument("--examples", type=int, help="the first N examples of the split (all)")
    e.add_argument("--ais-steps", type=int, help="also annealed importance sampling with this "
                   "many steps (pyro_vae.ais; try --examples 100 first: it costs "
                   "steps x chains x 6 decoder passes per example)")
    e.add_argument("--ais-chains", type=int, default=16, help="AIS chains per example (16)")
    e.add_argument("--refine", type=int, metavar="STEPS", help="also the bound of q refined "
                   "per example for STEPS steps (pyro_vae.refine), the amortization gap, and "
                   "with --ais-steps the approximation gap")
    e.add_argument("--refine-family", choices=FAMILIES,
                   help="the family --refine optimises: a diagonal Gaussian (the default), or "
                   "it with planar flows")

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
    r.add_argument("--refine", type=int, metavar="STEPS", help="reconstruct from q refined "
                   "per example for STEPS steps (pyro_vae.refine, the diagonal Gaussian)")
    r.add_argument("--out", help="PNG path (default: RUN_DIR/figures/reconstructions.png, "
                   "or reconstructions_refined.png with --refine)")

    p = commands.add_parser("plot", help="every figure of a run, into RUN_DIR/figures/")
    p.set_defaults(command=plot)
    p.add_argument("run_dir")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior samples")

    for loads_a_run in (e, s, r, p):
        loads_a_run.add_argument(
            "--model", metavar="FACTORY", help="the factory of a model outside pyro_vae "
            "(path/to/file.py:function), the one the run records: a run directory never runs "
            "code by itself")
        loads_a_run.add_argument("--device", help="cpu, cuda, ... (default: the run's own; "
                                 "the CPU for a GPU-trained run where CUDA is missing)")
    for rebuilds in (t, e, s, r, p):
        rebuilds.add_argument("--edited-model", dest="edited_model", action="store_true",
                              help="rebuild a model of --model from its factory file although "
                              "the file changed since the run was trained")

    data = commands.add_parser("data", help="datasets")
    data_commands = data.add_subparsers(required=True, metavar="ACTION")
    f = data_commands.add_parser("fetch", help="download and verify a dataset's files")
    f.set_defaults(command=data_fetch)
    f.add_argument("name", choices=DATASETS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
