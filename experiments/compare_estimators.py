"""Estimator study: the same VAE trained under every ELBO estimator at an equal budget, side by
side on bound, likelihood, gradient noise and time.

    .venv/bin/python experiments/compare_estimators.py           # 10 configurations, ~25 min
    .venv/bin/python experiments/compare_estimators.py --estimators meanfield iwae-50
    .venv/bin/python experiments/compare_estimators.py --quick   # seconds (tests)

The model of the importance-weighted autoencoder paper's single-stochastic-layer MNIST
experiments (Burda, Grosse & Salakhutdinov, 2016): encoder 784-200-200 tanh to the mean and
log-variance of 50 latent dimensions, decoder 50-200-200-784 tanh with Bernoulli output,
dynamically binarized MNIST, Adam lr 1e-3, batch 100. Every configuration starts from the
same weights and sees the same batches (one seed); only the estimator changes.

A configuration is ESTIMATOR-K: the estimator's name (`pyro-vae train --elbo`) and its number
of particles K, vectorized; `renyi` uses alpha = 0.5. `--estimators` takes configurations, or
bare names for the study's own configurations of that estimator. One that fails (an
impossible option, a NaN loss) is reported in the table with its error, and the study goes on.

Per configuration: the test ELBO (analytic KL, 10,000 images), the IS-K log-likelihood (K =
--is-samples on the first --is-examples test images), active units, the gradient SNR and
variance of encoder and decoder at the start and the end of training, and seconds per epoch.
After every epoch an IS-100 estimate on 500 test images draws the likelihood-against-time
curve (a callback of fit's, whose draws leave training's random stream alone). All estimators run
uncompiled, so that the seconds compare the estimators, not Pyro's JIT, which only
trace/meanfield/graph have.

Writes results/estimators/: README.md (table, what it says, the paper's numbers), metrics.csv,
curves.csv, log_likelihood_vs_time.png, gradient_snr.png; the run directories go to
results/estimators/runs/ (not committed).
"""

import argparse
import csv
import logging
import shutil
import sys
import time
from pathlib import Path

import pyro
import torch
from matplotlib.figure import Figure

from pyro_vae import (
    ESTIMATORS,
    VAE,
    Callback,
    Config,
    active_units,
    elbo,
    fit,
    gradient_snr,
    load_dataset,
    log_likelihood,
)

CONFIGURATIONS = ["trace-1", "trace-5", "meanfield-1", "meanfield-5", "graph-1", "graph-5",
                  "iwae-5", "iwae-50", "renyi-5", "tail-adaptive-5"]
RENYI_ALPHA = 0.5
NETWORK = dict(x_dim=784, likelihood="bernoulli", z_dim=50, hidden=[200, 200], activation="tanh")
TRAINING = dict(dataset="mnist-binary", optimizer="adam", lr=1e-3, batch_size=100, jit=False)
# Burda et al. (2016), Table 1, MNIST, one stochastic layer, after 3,280 epochs:
# IS-5000 negative log-likelihood (nats) and active units of 50.
PAPER = {"VAE k=1": (86.76, 19), "VAE k=5": (86.47, 20), "VAE k=50": (86.35, 20),
         "IWAE k=5": (85.54, 22), "IWAE k=50": (84.78, 25)}
GROUPS = ("encoder", "decoder")
COLOURS = {"trace": "tab:blue", "meanfield": "tab:orange", "graph": "tab:green",
           "iwae": "tab:red", "renyi": "tab:purple", "tail-adaptive": "tab:brown"}


def parse(configuration: str) -> tuple[str, int]:
    """'iwae-50' -> ('iwae', 50)."""
    name, _, k = configuration.rpartition("-")
    if name not in ESTIMATORS or not k.isdigit():
        raise ValueError(f"{configuration!r} is neither an estimator ({', '.join(ESTIMATORS)})"
                         " nor ESTIMATOR-K, the estimator with K particles (for example iwae-50)")
    return name, int(k)


def expand(tokens: list[str]) -> list[str]:
    """Configurations from --estimators: bare names stand for the study's own."""
    chosen = []
    for token in tokens:
        own = [c for c in CONFIGURATIONS if parse(c)[0] == token]
        if not own:
            parse(token)  # raises, naming the valid choices
        chosen += [c for c in own or [token] if c not in chosen]
    return chosen


class LikelihoodCurve(Callback):
    """After every epoch: IS-K log-likelihood on a fixed test subset, as a metrics column,
    against the cumulative training seconds (the curve of likelihood against time)."""

    def __init__(self, vae, x, num_samples: int, configuration: str):
        self.vae, self.x, self.num_samples = vae, x, num_samples
        self.configuration, self.points, self.seconds = configuration, [], 0.0

    def after_epoch(self, epoch: int, record: dict) -> dict:
        ll = log_likelihood(self.vae.model, self.vae.guide, self.x, self.num_samples)
        self.seconds += record["seconds"]
        self.points.append(dict(epoch=epoch, seconds=self.seconds,
                                log_likelihood=ll.mean().item()))
        print(f"{self.configuration:16s} epoch {epoch:2d}  train {record['train_loss']:8.2f}  "
              f"IS-{self.num_samples} {ll.mean().item():8.2f}  {record['seconds']:5.1f} s",
              flush=True)
        return {f"is{self.num_samples}_log_likelihood": ll.mean().item()}


def run(configuration: str, data, args, out: Path) -> dict:
    """Train one configuration and evaluate it; errors go into the row."""
    row = dict(configuration=configuration, error="", curve=[])
    try:
        name, k = parse(configuration)
        config = Config(**TRAINING, elbo=name, particles=k, seed=args.seed, epochs=args.epochs,
                        alpha=RENYI_ALPHA if name == "renyi" else None)
        config.check()
        run_dir = out / "runs" / configuration
        shutil.rmtree(run_dir, ignore_errors=True)  # this study's own output from an earlier run
        pyro.set_rng_seed(args.seed)
        vae = VAE(**NETWORK)
        pyro.clear_param_store()  # else pyro.module hands back the last configuration's weights
        x_snr = next(data.eval_batches("train", 100))
        x_is = next(data.eval_batches("test", args.is_examples))
        row["start"] = gradient_snr(vae.model, vae.guide, config.make_elbo(), x_snr,
                                    args.snr_draws)
        curve = LikelihoodCurve(vae, x_is[: args.curve_examples], args.curve_samples,
                                configuration)
        fit(vae.model, vae.guide, data, config, run_dir, quiet=True, callbacks=[curve])
        row["curve"], seconds = curve.points, curve.seconds
        row["end"] = gradient_snr(vae.model, vae.guide, config.make_elbo(), x_snr,
                                  args.snr_draws)
        row["test_elbo"] = elbo(vae.model, vae.guide, data)
        row["log_likelihood"] = log_likelihood(vae.model, vae.guide, x_is, args.is_samples,
                                               progress=sys.stderr.isatty()).mean().item()
        x_test = next(data.eval_batches("test", data.x_test.shape[0]))
        row["active_units"] = active_units(vae.guide, x_test)[0]
        row["seconds_per_epoch"] = seconds / args.epochs
    except Exception as e:  # noqa: BLE001 - any failure is this configuration's result
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
        print(f"{configuration:16s} FAILED  {row['error']}", flush=True)
    return row


def plot_curves(rows: list[dict], path: Path, ylabel: str) -> None:
    fig = Figure(figsize=(10, 5))
    ax = fig.subplots()
    for r in rows:
        if r["curve"]:
            name, k = parse(r["configuration"])
            style = "-" if k == 1 else "--" if k < 50 else ":"
            ax.plot([p["seconds"] for p in r["curve"]], [p["log_likelihood"] for p in r["curve"]],
                    style, marker="o", ms=3, color=COLOURS[name], label=r["configuration"])
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, cumulative, log scale); one point per epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_snr(rows: list[dict], path: Path) -> None:
    done = [r for r in rows if not r["error"]]
    fig = Figure(figsize=(10, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    positions = torch.arange(len(done), dtype=torch.float64)
    for ax, group in zip(axes, GROUPS, strict=True):
        for offset, when, shade in ((-0.2, "start", 0.4), (0.2, "end", 1.0)):
            ax.bar((positions + offset).tolist(), [r[when][group]["snr"] for r in done], 0.4,
                   color=[COLOURS[parse(r["configuration"])[0]] for r in done], alpha=shade,
                   label=f"{when} of training")
        ax.set_xticks(positions.tolist(), [r["configuration"] for r in done], rotation=45,
                      ha="right")
        ax.set_yscale("log")
        ax.set_title(f"{group} gradient")
        ax.grid(alpha=0.3, axis="y", which="both")
    axes[0].set_ylabel("gradient SNR, mean over parameters of |E g| / std g")
    axes[0].legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def findings(rows: list[dict], args) -> list[str]:
    """Plain sentences computed from the numbers, so they stay true for any run."""
    done = {r["configuration"]: r for r in rows if not r["error"]}
    if not done:
        return ["- Every configuration failed."]
    lines = []
    trained = lambda c: done[c]["seconds_per_epoch"] * args.epochs  # noqa: E731
    best = max(done, key=lambda c: done[c]["log_likelihood"])
    lines.append(f"- Best IS-{args.is_samples} log-likelihood: **{best}** "
                 f"({done[best]['log_likelihood']:.2f} nats, {trained(best):.0f} s of training).")
    frontier, record = [], -float("inf")  # likelihood per second: no one faster and better
    for c in sorted(done, key=trained):
        if done[c]["log_likelihood"] > record:
            frontier.append(c)
            record = done[c]["log_likelihood"]
    lines.append("- Likelihood per second of training, at equal epochs: each configuration "
                 "below beats every faster one, and every other is slower and worse than one "
                 "of them: " + ", ".join(f"{c} ({trained(c):.0f} s, "
                                         f"{done[c]['log_likelihood']:.2f})" for c in frontier)
                 + ". The curves show what each had reached at any earlier time.")
    vaes = [c for c in ("trace-1", "meanfield-1") if c in done]
    if "iwae-50" in done and vaes:
        gaps = ", ".join(f"{done['iwae-50']['log_likelihood'] - done[c]['log_likelihood']:+.2f} "
                         f"against {c}" for c in vaes)
        agree = all(done["iwae-50"]["log_likelihood"] >= done[c]["log_likelihood"] for c in vaes)
        units = ", ".join(f"{c} {done[c]['active_units']}" for c in ["iwae-50", *vaes])
        lines.append(f"- IWAE k = 50 against the VAE in IS log-likelihood: {gaps} nats; "
                     f"{'as' if agree else 'unlike'} the paper, where IWAE k = 50 is better. "
                     f"Active units: {units} (the paper: IWAE uses more).")
    gap = {c: r["log_likelihood"] - r["test_elbo"] for c, r in done.items()}
    widest = max(gap, key=gap.get)
    lines.append(f"- The gap log p(x) - ELBO is widest for {widest} ({gap[widest]:.2f} nats; "
                 f"{min(gap.values()):.2f} at the narrowest): a k-sample bound no longer asks "
                 "q to fit the posterior, so its ELBO can fall while its likelihood rises.")
    ks = [c for c in ("trace-1", "iwae-5", "iwae-50") if c in done]
    if len(ks) >= 2:
        for when, what in (("start", "at the shared initial weights, a like-for-like "
                            "comparison"), ("end", "after training, each at its own weights")):
            parts = []
            for group in GROUPS:
                snrs = [done[c][when][group]["snr"] for c in ks]
                trend = ("falls" if all(a > b for a, b in zip(snrs, snrs[1:], strict=False))
                         else "rises" if all(a < b for a, b in zip(snrs, snrs[1:], strict=False))
                         else "is not monotone")
                parts.append(f"{group} SNR {trend} ("
                             + ", ".join(f"{s:.3g}" for s in snrs) + ")")
            lines.append(f"- As k grows ({', '.join(ks)}), {what}: " + "; ".join(parts) + ".")
        lines.append("  Rainforth et al. (2018) predict that the IWAE bound's encoder SNR falls "
                     "like 1/sqrt(k) while the decoder's rises like sqrt(k).")
    for k in (1, 5):
        t, m = done.get(f"trace-{k}"), done.get(f"meanfield-{k}")
        if t and m:
            ratio = [m[w]["encoder"]["variance"] / t[w]["encoder"]["variance"]
                     for w in ("start", "end")]
            lines.append(f"- Analytic KL, k = {k}: meanfield's encoder gradient variance is "
                         f"{ratio[0]:.3g} times trace's at the shared initial weights and "
                         f"{ratio[1]:.3g} times after training.")
    if "trace-1" in done and "graph-1" in done:
        d = done["graph-1"]["log_likelihood"] - done["trace-1"]["log_likelihood"]
        lines.append(f"- graph against trace: {d:+.3f} nats. Every site here is "
                     "reparameterized, so TraceGraph_ELBO has no score-function term to "
                     "Rao-Blackwellize and computes Trace_ELBO's gradient.")
    return lines


def write_outputs(rows: list[dict], args, out: Path, data, total: float) -> None:
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "test_elbo", f"is{args.is_samples}_log_likelihood",
                         "active_units", "seconds_per_epoch"]
                        + [f"{g}_{s}_{w}" for w in ("start", "end") for g in GROUPS
                           for s in ("snr", "variance")] + ["error"])
        for r in rows:
            numbers = [r.get(key, "") for key in
                       ("test_elbo", "log_likelihood", "active_units", "seconds_per_epoch")]
            grads = [r[w][g][s] if w in r and not r["error"] else "" for w in ("start", "end")
                     for g in GROUPS for s in ("snr", "variance")]
            writer.writerow([r["configuration"], *numbers, *grads, r["error"]])
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "epoch", "seconds", f"is{args.curve_samples}"])
        for r in rows:
            for p in r["curve"]:
                writer.writerow([r["configuration"], p["epoch"], p["seconds"],
                                 p["log_likelihood"]])
    curve_label = (f"IS-{args.curve_samples} log-likelihood, {args.curve_examples} test images "
                   "(nats per example)")
    plot_curves(rows, out / "log_likelihood_vs_time.png", curve_label)
    plot_snr(rows, out / "gradient_snr.png")

    arrow = lambda r, g, s: f"{r['start'][g][s]:.3g} → {r['end'][g][s]:.3g}"  # noqa: E731
    lines = [
        "# Estimator study",
        "",
        f"Dynamically binarized MNIST ({data.x_train.shape[0]} training images), the IWAE "
        "paper's model (784-200-200-50 tanh, Bernoulli), Adam lr 1e-3, batch 100, seed "
        f"{args.seed}, {args.epochs} epoch(s) per configuration, uncompiled; written by "
        f"`experiments/compare_estimators.py` in {total / 60:.1f} min on the machine that ran "
        "it. ESTIMATOR-K is the estimator with K vectorized particles; renyi has alpha = 0.5.",
        "",
        f"- test ELBO: analytic KL (`meanfield`, one sample), all {data.x_test.shape[0]} test "
        "images, one fixed binarization (seed 0), nats per example;",
        f"- IS-{args.is_samples}: the importance-sampled log-likelihood "
        f"log (1/K) sum p(x, z_k)/q(z_k|x) with K = {args.is_samples}, on the first "
        f"{args.is_examples} test images, same binarization, nats per example;",
        "- active units: latent dimensions with Cov_x E_q[z_u] > 0.01 (Burda et al.), of 50;",
        f"- gradient SNR and variance: {args.snr_draws} gradient draws of the training "
        "estimator on one batch of 100 training images, before the first and after the last "
        "step; SNR is |mean| / std per parameter, averaged; variance is summed over parameters "
        "(gradients of the batch's summed loss; tail-adaptive's are scaled by 1/K in Pyro).",
        "",
        f"| configuration | test ELBO | IS-{args.is_samples} log p(x) | active units | "
        "encoder SNR | decoder SNR | encoder variance | decoder variance | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['configuration']} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {r['configuration']} | {r['test_elbo']:.2f} | {r['log_likelihood']:.2f} "
                     f"| {r['active_units']} | {arrow(r, 'encoder', 'snr')} | "
                     f"{arrow(r, 'decoder', 'snr')} | {arrow(r, 'encoder', 'variance')} | "
                     f"{arrow(r, 'decoder', 'variance')} | {r['seconds_per_epoch']:.1f} |")
    lines += ["", "Gradient columns read start → end of training.", "", "## What the numbers say",
              "", *findings(rows, args), "",
              "## The paper, for direction", "",
              "Burda et al. (2016), Table 1, the same model after 3,280 epochs (ours: "
              f"{args.epochs}). Their numbers are far better than any 10-epoch run; what should "
              "carry over is the order: more samples help, IWAE more than the VAE, and IWAE "
              "uses more latent dimensions.", "",
              "| paper | IS-5000 log p(x) | active units |", "|---|---|---|"]
    lines += [f"| {name} | {-nll:.2f} | {units} |" for name, (nll, units) in PAPER.items()]
    lines += ["", "## Figures", "", "![log-likelihood against time](log_likelihood_vs_time.png)",
              "", "![gradient SNR](gradient_snr.png)", ""]
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--estimators", nargs="+", default=CONFIGURATIONS, metavar="CONFIG",
                        help=f"configurations (default: {' '.join(CONFIGURATIONS)}) or "
                        f"estimator names ({', '.join(ESTIMATORS)})")
    parser.add_argument("--is-samples", type=int, default=5000)
    parser.add_argument("--is-examples", type=int, default=2000,
                        help="test images for the IS log-likelihood (10000: all, ~4 min each)")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 images, 2 epochs, small IS and SNR budgets (tests)")
    parser.add_argument("--out", type=Path, default=Path("results/estimators"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        configurations = expand(args.estimators)
    except ValueError as e:
        parser.error(str(e))
    for flag in ("epochs", "is_samples", "is_examples"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    args.curve_samples, args.curve_examples, args.snr_draws = 100, 500, 100

    start = time.perf_counter()
    pyro.enable_validation(False)  # speed, as `pyro-vae train`; fit validates its first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    data = load_dataset("mnist-binary")
    if args.quick:
        data = data.subset(train=1000, test=200)
        args.epochs, args.is_samples, args.is_examples = 2, 20, 100
        args.curve_samples, args.curve_examples, args.snr_draws = 10, 50, 5
    args.is_examples = min(args.is_examples, data.x_test.shape[0])
    args.curve_examples = min(args.curve_examples, args.is_examples)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run(c, data, args, args.out) for c in configurations]
    write_outputs(rows, args, args.out, data, time.perf_counter() - start)
    print(f"wrote {args.out}/README.md, metrics.csv, curves.csv and the figures in "
          f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
