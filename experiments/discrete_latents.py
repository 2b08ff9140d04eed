"""Discrete latents: categorical and binary codes, and a mixture that enumeration sums out,
each trained by every estimator that fits it, over several seeds at an equal budget.

    .venv/bin/python experiments/discrete_latents.py  # 3 cases x 4 estimators x 3 seeds: 64 min
    .venv/bin/python experiments/discrete_latents.py --cases categorical --epochs 30
    .venv/bin/python experiments/discrete_latents.py --quick    # seconds (tests)

Cases, all on dynamically binarized MNIST (60,000 training images), Bernoulli pixels:

- ``categorical``: the categorical VAE of Jang, Gu & Poole (2017), 20 one-hot codes of 10
  classes with a uniform prior; encoder 784-512-256 ReLU to the 200 logits, decoder
  200-256-512-784 (the layer widths of the authors' notebook, ericjang/gumbel-softmax,
  "Categorical VAE.ipynb"; the paper does not state them);
- ``bernoulli``: the same networks, 200 binary units with a Bernoulli(1/2) prior;
- ``mixture``: a Gaussian mixture in z-space, c ~ Cat(1/10), z | c ~ N(mu_c, I) (10
  dimensions, learned means), q(c | x) q(z | x) from one encoder: the one discrete site is
  a component of 10 values, which ``enum`` sums out exactly; the sampled estimators score or
  relax it. Its clustering accuracy is that of argmax q(c | x) on the test set, clusters
  matched to digit labels one to one (the Hungarian matching, here by dynamic programming
  over subsets).

Estimators (``pyro-vae train --elbo``): ``graph`` (REINFORCE, Rao-Blackwellized, with the
guide's learned baseline), ``vimco`` with 5 particles, ``gumbel`` and ``gumbel-st`` (the
paper's schedule, pyro_vae.relaxed.Temperature); for the mixture ``enum`` replaces
``gumbel-st``. Adam lr 1e-3, batch 100, the same epochs for all; for a seed, every estimator
of a case starts from the same weights and sees the same batches.

Per run: the test ELBO (the discrete bound: hard codes, closed-form KL where it exists,
exact by enumeration for the mixture's component; all 10,000 test images), the IS-K
log-likelihood with the guide as proposal (K = --is-samples on the first --is-examples test
images), the encoder's gradient SNR and variance after training (--snr-draws draws of the
training estimator on one batch of 100 training images; the baseline network left out),
seconds per epoch (gumbel's include the extra pass that reports its discrete bound),
and after every epoch the test ELBO of 1,000 test images (a callback
whose draws leave training's random stream alone) for the comparison at equal wall-clock
time. Each run directory keeps its result (result.json): a stopped study resumes.

Writes results/discrete_latents/: README.md, metrics.csv, curves.csv, elbo_vs_time.png;
run directories in results/discrete_latents/runs/ (not committed).
"""

import argparse
import csv
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from matplotlib.figure import Figure
from torch import nn

from pyro_vae import VAE, Callback, Config, elbo, fit, gradient_snr, load_dataset, log_likelihood
from pyro_vae.networks import Baseline, mlp
from pyro_vae.rundir import load_checkpoint

CASES = ("categorical", "bernoulli", "mixture")
ESTIMATORS = {"categorical": ["graph", "vimco-5", "gumbel", "gumbel-st"],
              "bernoulli": ["graph", "vimco-5", "gumbel", "gumbel-st"],
              "mixture": ["enum", "graph", "vimco-5", "gumbel"]}
SEEDS = [0, 1, 2]
NETWORK = dict(x_dim=784, hidden=[512, 256], activation="relu", likelihood="bernoulli")
CODES = {"categorical": dict(latent="categorical", groups=20, classes=10),
         "bernoulli": dict(latent="bernoulli", z_dim=200)}
TRAINING = dict(dataset="mnist-binary", optimizer="adam", lr=1e-3, batch_size=100, jit=False)
# Jang, Gu & Poole (2017), Table 1, VAE on MNIST with fixed binarization: test negative
# variational lower bound, evaluated with a 1000-sample bound, nats (lower is better).
PAPER = {"SF": (112.2, 110.6), "DARN": (110.9, 128.8), "MuProp": (109.7, 107.0),
         "ST": (116.0, 110.9), "Annealed ST": (111.5, 107.8), "Gumbel-S.": (105.0, 101.5),
         "ST Gumbel-S.": (111.5, 107.8)}
COLOURS = {"graph": "tab:green", "vimco": "tab:red", "gumbel": "tab:blue",
           "gumbel-st": "tab:cyan", "enum": "tab:orange"}


class MixtureVAE(nn.Module):
    r"""A VAE whose prior is a mixture of ``components`` Gaussians in z-space:
    :math:`c \sim \mathrm{Cat}(1/K)`, :math:`z \mid c \sim \mathcal{N}(\mu_c, I)`,
    :math:`x \mid z \sim \mathrm{Bernoulli}(\mathrm{decoder}(z))`; the guide
    :math:`q(c \mid x)\, q(z \mid x)`, both from one encoder. ``c`` is one-hot, so that
    every estimator of discrete sites applies, enumeration included."""

    def __init__(self, x_dim=784, hidden=(512, 256), z_dim=10, components=10,
                 activation="relu"):
        super().__init__()
        self.components, self.z_dim = components, z_dim
        self.encoder = mlp([x_dim, *hidden, components + 2 * z_dim], activation)
        self.decoder = mlp([z_dim, *reversed(hidden), x_dim], activation)
        self.prior = nn.Module()  # the components' means, learned with the decoder
        self.prior.means = nn.Parameter(torch.randn(components, z_dim))
        self.baseline = Baseline(x_dim)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        pyro.module("prior", self.prior)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.OneHotCategorical(
                probs=x.new_full((x.shape[0], self.components), 1 / self.components)))
            z = pyro.sample("z", dist.Normal(c @ self.prior.means, 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        pyro.module("baseline", self.baseline)
        with pyro.plate("data", x.shape[0]):
            out = self.encoder(x)
            logits, loc, log_var = out.split([self.components, self.z_dim, self.z_dim], -1)
            pyro.sample("c", dist.OneHotCategorical(logits=logits), infer={"baseline": {
                "nn_baseline": self.baseline, "nn_baseline_input": x}})
            pyro.sample("z", dist.Normal(loc, (0.5 * log_var).exp()).to_event(1))

    @torch.no_grad()
    def cluster(self, x):
        return self.encoder(x)[..., : self.components].argmax(-1)


def matched_accuracy(clusters: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """The share of points whose cluster, matched one to one to a label so that the most
    points agree (the Hungarian matching, by dynamic programming over subsets of labels)."""
    counts = torch.zeros(k, k, dtype=torch.long)
    counts.index_put_((clusters, labels), torch.ones_like(clusters), accumulate=True)
    best = {0: 0}  # labels used (bitmask) -> most agreements for the first popcount clusters
    for cluster in range(k):
        nxt = {}
        for used, score in best.items():
            for label in range(k):
                if not used >> label & 1:
                    key, value = used | 1 << label, score + counts[cluster, label].item()
                    nxt[key] = max(nxt.get(key, -1), value)
        best = nxt
    return max(best.values()) / len(labels)


def parse(configuration: str) -> tuple[str, int]:
    """'vimco-5' -> ('vimco', 5); 'gumbel-st' -> ('gumbel-st', 1)."""
    name, _, k = configuration.rpartition("-")
    return (name, int(k)) if k.isdigit() else (configuration, 1)


def build(case: str, quick: bool):
    hidden = [64] if quick else NETWORK["hidden"]
    if case == "mixture":
        return MixtureVAE(hidden=hidden)
    return VAE(**{**NETWORK, "hidden": hidden}, **CODES[case])


class ElboCurve(Callback):
    """After every epoch: the discrete test ELBO of a fixed subset, as a metrics column."""

    def __init__(self, built, data, label):
        self.built, self.data, self.label = built, data, label

    def after_epoch(self, epoch: int, record: dict) -> dict:
        value = elbo(self.built.model, self.built.guide, self.data)
        print(f"{self.label:28s} epoch {epoch:2d}  train {record['train_loss']:8.2f}  "
              f"test ELBO {value:8.2f}  {record['seconds']:5.1f} s", flush=True)
        return {"curve_elbo": value}


def settings(args) -> dict:
    return dict(epochs=args.epochs, is_samples=args.is_samples, is_examples=args.is_examples,
                snr_draws=args.snr_draws, train_examples=args.train_examples, quick=args.quick)


def run(case: str, configuration: str, seed: int, data, args) -> dict:
    run_dir = args.out / "runs" / case / configuration / f"seed-{seed}"
    saved = run_dir / "result.json"
    if saved.exists():
        row = json.loads(saved.read_text())
        if row.get("settings") == settings(args):
            print(f"{case} {configuration}, seed {seed}: done before, read from {saved}")
            if "snr_steps" not in row:  # of a study that measured gumbel's SNR at tau_0
                row["snr"], row["snr_steps"] = trained_snr(case, configuration, seed, data,
                                                           args, run_dir)
                saved.write_text(json.dumps(row, indent=1))
            return row
    row = dict(case=case, configuration=configuration, seed=seed, error="", curve=[],
               settings=settings(args))
    start = time.perf_counter()
    try:
        name, k = parse(configuration)
        config = Config(**TRAINING, elbo=name, particles=k, seed=seed, epochs=args.epochs)
        config.check()
        pyro.set_rng_seed(seed)
        built = build(case, args.quick)
        pyro.clear_param_store()
        curve = ElboCurve(built, data.subset(test=min(1000, data.x_test.shape[0])),
                          f"{case} {configuration}, seed {seed}")
        resume = (run_dir / "checkpoint.pt").exists()
        metrics = fit(built.model, built.guide, data, config, run_dir, resume=resume,
                      quiet=True, callbacks=[curve])
        seconds = 0.0
        for m in metrics:
            seconds += m["seconds"]
            row["curve"].append(dict(epoch=m["epoch"], seconds=seconds, elbo=m["curve_elbo"]))
        row["snr"], row["snr_steps"] = snr(built, config, data, args, run_dir)
        row["test_elbo"] = elbo(built.model, built.guide, data)
        x_is = next(data.eval_batches("test", args.is_examples))
        row["log_likelihood"] = log_likelihood(built.model, built.guide, x_is, args.is_samples,
                                               progress=sys.stderr.isatty()).mean().item()
        if case == "mixture":
            x_test = next(data.eval_batches("test", data.x_test.shape[0]))
            row["accuracy"] = matched_accuracy(built.cluster(x_test), data.y_test,
                                               built.components)
        row["seconds_per_epoch"] = seconds / args.epochs
        row["wall_seconds"] = time.perf_counter() - start
        row["machine"] = (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
                          f"threads, torch {torch.__version__}, pyro {pyro.__version__}")
        saved.write_text(json.dumps(row, indent=1))
    except Exception as e:  # noqa: BLE001 - a failure is this run's result
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
        print(f"{case} {configuration}, seed {seed}: FAILED  {row['error']}", flush=True)
    return row


def snr(built, config, data, args, run_dir) -> tuple[dict, int]:
    """The encoder's gradient SNR of the training estimator as it ended training: an
    estimator with a clock (gumbel's temperature) at the checkpoint's step, on a copy, so
    that measuring advances nothing. Returns it with that step (0 without a clock)."""
    estimator = config.make_elbo()
    steps = 0
    if hasattr(estimator, "load_state_dict"):
        estimator.load_state_dict(load_checkpoint(run_dir)["estimator"])
        steps = estimator.steps
    x = next(data.eval_batches("train", 100))
    return gradient_snr(built.model, built.guide, estimator, x, args.snr_draws,
                        skip=("baseline",))["encoder"], steps


def trained_snr(case, configuration, seed, data, args, run_dir) -> tuple[dict, int]:
    """:func:`snr` of a finished run, its parameters restored from its checkpoint."""
    name, k = parse(configuration)
    config = Config(**TRAINING, elbo=name, particles=k, seed=seed, epochs=args.epochs)
    pyro.set_rng_seed(seed)
    built = build(case, args.quick)
    fit(built.model, built.guide, data, config, run_dir, resume=True, quiet=True)
    return snr(built, config, data, args, run_dir)


# ---------------------------------------------------------------- statistics and output


def mean_se(values):
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1
                  else math.nan)


def show(mean, se, digits=2):
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def show_g(mean, se):
    """Three significant digits, for numbers of any size (a gradient's variance)."""
    return f"{mean:.3g}" + ("" if math.isnan(se) else f" ± {se:.2g}")


def by_run(rows):
    done = {}
    for r in rows:
        if not r["error"]:
            done.setdefault((r["case"], r["configuration"]), {})[r["seed"]] = r
    return done


def at_time(curve, seconds):
    """The curve's test ELBO after ``seconds`` of training, linear between epochs (None
    before its first epoch ends)."""
    if seconds < curve[0]["seconds"]:
        return None
    for a, b in zip(curve, curve[1:], strict=False):
        if a["seconds"] <= seconds <= b["seconds"]:
            t = (seconds - a["seconds"]) / (b["seconds"] - a["seconds"])
            return a["elbo"] + t * (b["elbo"] - a["elbo"])
    return curve[-1]["elbo"]


def findings(rows, args) -> list[str]:
    done = by_run(rows)
    lines = []
    for case in args.cases:
        runs = {c: done[case, c] for c in ESTIMATORS[case] if (case, c) in done}
        if not runs:
            continue
        nll = {c: mean_se([-r["log_likelihood"] for r in rs.values()]) for c, rs in runs.items()}
        best = min(nll, key=lambda c: nll[c][0])
        lines.append(f"- {case}: lowest IS-{args.is_samples} NLL **{best}** "
                     f"({show(*nll[best])} nats).")
        for other in runs:
            if other == best:
                continue
            seeds = sorted(set(runs[best]) & set(runs[other]))
            if not seeds:
                continue
            d = mean_se([runs[best][s]["log_likelihood"] - runs[other][s]["log_likelihood"]
                         for s in seeds])
            tie = math.isnan(d[1]) or abs(d[0]) <= 2 * d[1]
            lines.append(f"  - {best} − {other}, IS log-likelihood, paired by seed "
                         f"({len(seeds)} seeds): " + (f"a tie ({d[0]:+.2f} ± {d[1]:.2f})" if tie
                         else f"{d[0]:+.2f} ± {d[1]:.2f} nats in favour of {best}"))
        totals = {c: statistics.fmean(r["curve"][-1]["seconds"] for r in rs.values())
                  for c, rs in runs.items()}
        fastest = min(totals, key=totals.get)
        parts = []
        for c in sorted(totals, key=totals.get):
            values = [v for s, r in runs[c].items() if s in runs[fastest]
                      if (v := at_time(r["curve"], runs[fastest][s]["curve"][-1]["seconds"]))
                      is not None]
            parts.append(f"{c} {show(*mean_se(values))}" if values else f"{c} (no epoch yet)")
        lines.append(f"  - at equal wall-clock time ({totals[fastest]:.0f} s, all of "
                     f"{fastest}'s epochs; test ELBO of 1,000 test images, linear between "
                     "epochs): " + "; ".join(parts) + ".")
    return lines or ["- Every run failed."]


def plot_curves(rows, path: Path, cases) -> None:
    done = by_run(rows)
    fig = Figure(figsize=(5 * len(cases), 4.2))
    axes = fig.subplots(1, len(cases), squeeze=False)[0]
    for ax, case in zip(axes, cases, strict=True):
        for c in ESTIMATORS[case]:
            curves = [r["curve"] for r in done.get((case, c), {}).values() if r["curve"]]
            if not curves:
                continue
            n = min(len(cv) for cv in curves)
            t = [statistics.fmean(cv[i]["seconds"] for cv in curves) for i in range(n)]
            v = [statistics.fmean(cv[i]["elbo"] for cv in curves) for i in range(n)]
            ax.plot(t, v, marker="o", ms=3, color=COLOURS[parse(c)[0]], label=c)
        ax.set_title(case)
        ax.set_xlabel("training time (s), one point per epoch, mean of seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    axes[0].set_ylabel("test ELBO, 1,000 images (nats per example)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_outputs(rows, args, data) -> None:
    out = args.out
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "configuration", "seed", "test_elbo",
                    f"is{args.is_samples}_log_likelihood", "encoder_snr", "encoder_variance",
                    "seconds_per_epoch", "accuracy", "error"])
        for r in rows:
            snr = r.get("snr", {})
            w.writerow([r["case"], r["configuration"], r["seed"], r.get("test_elbo", ""),
                        r.get("log_likelihood", ""), snr.get("snr", ""), snr.get("variance", ""),
                        r.get("seconds_per_epoch", ""), r.get("accuracy", ""), r["error"]])
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "configuration", "seed", "epoch", "seconds", "test_elbo_1000"])
        for r in rows:
            for p in r["curve"]:
                w.writerow([r["case"], r["configuration"], r["seed"], p["epoch"], p["seconds"],
                            p["elbo"]])
    plot_curves(rows, out / "elbo_vs_time.png", args.cases)
    done = by_run(rows)
    timed = [r["wall_seconds"] for r in rows if "wall_seconds" in r]
    machines = sorted({r["machine"] for r in rows if "machine" in r})
    command = "experiments/discrete_latents.py" + (" --quick" if args.quick else "")
    lines = [
        "# Discrete latents", "",
        f"Dynamically binarized MNIST ({data.x_train.shape[0]} training images), Bernoulli "
        f"pixels, Adam lr 1e-3, batch 100, {args.epochs} epoch(s) per run, seeds "
        f"{', '.join(map(str, args.seeds))}, uncompiled; written by `{command}` (its "
        "docstring gives the models). Its "
        f"{len(timed)} finished runs took {sum(timed) / 60:.1f} min of wall time in all, on "
        f"{'; '.join(machines) or 'the machine that ran it'}. Each cell: mean ± standard "
        "error over the seeds; a difference within two standard errors is a tie.", "",
        "- test −ELBO: the discrete bound (hard codes; closed-form KL of the codes; the "
        f"mixture's component summed exactly), all {data.x_test.shape[0]} test images, one "
        "fixed binarization (seed 0), nats per example;",
        f"- IS-{args.is_samples} NLL: −log (1/K) Σ p(x, z_k)/q(z_k|x), z_k from the guide, "
        f"K = {args.is_samples}, the first {args.is_examples} test images;",
        f"- encoder SNR and variance: {args.snr_draws} draws of the training estimator's "
        "gradient on one batch of 100 training images after training (gumbel's at the "
        "temperature its training ended at), |mean|/std averaged "
        "over the encoder's parameters (the baseline network left out), and the summed "
        "variance;",
        "- accuracy (mixture): argmax q(c | x) on all test images, clusters matched one to "
        "one to the digit labels.", "",
        f"| case | estimator | seeds | test −ELBO | IS-{args.is_samples} NLL | encoder SNR | "
        "encoder gradient variance | s / epoch | accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in args.cases:
        for c in ESTIMATORS[case]:
            runs = done.get((case, c), {})
            failed = [r for r in rows if (r["case"], r["configuration"]) == (case, c)
                      and r["error"]]
            if not runs:
                error = failed[0]["error"] if failed else "not run"
                lines.append(f"| {case} | {c} | 0 | failed: {error} | | | | | |")
                continue
            cell = lambda f, d=2, rs=runs: show(*mean_se([f(r) for r in rs.values()]), d)  # noqa: E731
            g = lambda f, rs=runs: show_g(*mean_se([f(r) for r in rs.values()]))  # noqa: E731
            accuracy = cell(lambda r: 100 * r["accuracy"], 1) + " %" if case == "mixture" else ""
            lines.append(
                f"| {case} | {c} | {len(runs)} | {cell(lambda r: -r['test_elbo'])} | "
                f"{cell(lambda r: -r['log_likelihood'])} | {g(lambda r: r['snr']['snr'])} "
                f"| {g(lambda r: r['snr']['variance'])} | "
                f"{cell(lambda r: r['seconds_per_epoch'], 1)} | {accuracy} |")
    lines += ["", "## What the numbers say", "", *findings(rows, args), "",
              "## The paper", "",
              "Jang, Gu & Poole (2017), \"Categorical Reparameterization with Gumbel-Softmax\", "
              "Table 1, VAE rows: test negative variational lower bound on MNIST with *fixed* "
              "binarization, evaluated with a 1000-sample bound (so nearer our IS NLL than our "
              "single-sample −ELBO), after training with SGD and momentum, the learning rate and "
              "schedule chosen per estimator on validation; 200 Bernoulli units or 20 x 10 "
              "categorical ones. Lower is better.", "",
              "| estimator | Bernoulli | Categorical |", "|---|---|---|"]
    lines += [f"| {name} | {b} | {c} |" for name, (b, c) in PAPER.items()]
    lines += ["", "## Figure", "", "![test ELBO against time](elbo_vs_time.png)", ""]
    (out / "README.md").write_text("\n".join(lines))


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--is-samples", type=int, default=5000)
    parser.add_argument("--is-examples", type=int, default=1000)
    parser.add_argument("--snr-draws", type=int, default=50)
    parser.add_argument("--quick", action="store_true",
                        help="1,000 images, 1 epoch, 2 seeds, small networks and budgets (tests)")
    parser.add_argument("--out", type=Path, help="default: results/discrete_latents/, or "
                        "runs/quick/discrete_latents/ with --quick")
    args = parser.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "discrete_latents")
    for flag in ("epochs", "is_samples", "is_examples", "snr_draws"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main() -> None:
    args = arguments()
    start = time.perf_counter()
    pyro.enable_validation(False)  # speed, as `pyro-vae train`; fit validates its first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    data = load_dataset("mnist-binary")
    if args.quick:
        data = data.subset(train=1000, test=200)
        args.epochs, args.is_samples, args.is_examples, args.snr_draws = 1, 20, 50, 5
        args.seeds = args.seeds[:2] if args.seeds != SEEDS else [0, 1]
    args.train_examples = data.x_train.shape[0]
    args.is_examples = min(args.is_examples, data.x_test.shape[0])
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run(case, c, seed, data, args) for case in args.cases for seed in args.seeds
            for c in ESTIMATORS[case]]
    write_outputs(rows, args, data)
    print(f"wrote {args.out}/README.md, metrics.csv, curves.csv and elbo_vs_time.png in "
          f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
