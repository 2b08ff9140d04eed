"""Estimator study: the same VAE trained under each ELBO estimator at an equal budget, over
several seeds, side by side on bound, likelihood, gradient noise and time.

    .venv/bin/python experiments/compare_estimators.py           # 7 configs x 3 seeds, 85 min
    .venv/bin/python experiments/compare_estimators.py --estimators meanfield iwae-dreg-50
    .venv/bin/python experiments/compare_estimators.py --quick   # seconds (tests)

The model of the importance-weighted autoencoder paper's single-stochastic-layer MNIST
experiments (Burda, Grosse & Salakhutdinov, 2016): encoder 784-200-200 tanh to the mean and
log-variance of 50 latent dimensions, decoder 50-200-200-784 tanh with Bernoulli output,
dynamically binarized MNIST, Adam lr 1e-3, batch 100. For each seed, every configuration
starts from the same weights and sees the same batches; only the estimator changes.

A configuration is ESTIMATOR-K: the estimator's name (`pyro-vae train --elbo`) and its number
of particles K; `renyi` uses alpha = 0.5. `--estimators` takes configurations, or bare names
for the study's own configurations of that estimator. One that fails (an impossible option,
a NaN loss) is reported in the table with its error, and the study goes on. The study's own
configurations rest on Pyro's `TraceMeanField_ELBO` and on our per-data-point estimators
(pyro_vae/iwae.py), none on Pyro's `RenyiELBO` or `TraceTailAdaptive_ELBO` (pyro #3104, #3170).

The budget. The default, 5 epochs, made the first full study (21 runs) take 85 minutes on
2 CPU cores, 67 of them in evaluation (IS-5000 on all 10,000 test images took about 3.2
minutes a run); the k = 50 runs are four fifths of the training time. With 30 runs on a
slower machine that would no longer fit a working session, so IS-5000 now reads the first
1,000 test images (--is-examples; the discrete-latent study does the same): every
configuration and seed sees the same images, so the paired differences keep their
precision, while the absolute level carries the spread of a 1,000-image sample (about 0.8
nats of standard error against the whole test set). The test ELBO still reads all 10,000.

Per run: the test ELBO (analytic KL, 10,000 images), the IS-K log-likelihood (K =
--is-samples on the first --is-examples test images, 1,000 by default), active units, the
gradient SNR and variance of encoder and decoder at the start and the end of training, and
seconds per epoch. After every epoch an IS-100 estimate on 500 test images draws the
likelihood-against-time curve (a callback of fit's, whose draws leave training's random
stream alone): the comparison at equal wall-clock time reads it at the training time of the
fastest configuration. All estimators run uncompiled (Pyro's eager step), so that the
seconds compare the estimators, not the engine's capture. Each run directory keeps its
result (result.json): a study that was stopped resumes with the runs it has not finished.

Writes results/estimators/: README.md (mean +- standard error over seeds, paired
differences, what they say, the paper's numbers), metrics.csv (a row per run), curves.csv,
log_likelihood_vs_time.png, gradient_snr.png; the run directories go to
results/estimators/runs/ (not committed).
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

# trace-K against meanfield-K: the two estimators the project is named for, the KL term
# sampled against in closed form, on the same draws of everything else.
CONFIGURATIONS = ["meanfield-1", "trace-1", "stl-1", "meanfield-5", "trace-5", "iwae-5",
                  "iwae-dreg-5", "stl-5", "iwae-50", "iwae-dreg-50"]
SEEDS = [0, 1, 2]
RENYI_ALPHA = 0.5
NETWORK = dict(x_dim=784, likelihood="bernoulli", z_dim=50, hidden=[200, 200], activation="tanh")
TRAINING = dict(dataset="mnist-binary", optimizer="adam", lr=1e-3, batch_size=100, jit=False)
# Burda et al. (2016), Table 1, MNIST, one stochastic layer, after 3,280 epochs:
# IS-5000 negative log-likelihood (nats) and active units of 50.
PAPER = {"VAE k=1": (86.76, 19), "VAE k=5": (86.47, 20), "VAE k=50": (86.35, 20),
         "IWAE k=5": (85.54, 22), "IWAE k=50": (84.78, 25)}
GROUPS = ("encoder", "decoder")
COLOURS = {"trace": "tab:blue", "meanfield": "tab:orange", "graph": "tab:green",
           "iwae": "tab:red", "renyi": "tab:purple", "tail-adaptive": "tab:brown",
           "iwae-dreg": "tab:olive", "stl": "tab:cyan"}
NUMBERS = ("test_elbo", "log_likelihood", "active_units", "seconds_per_epoch")


def parse(configuration: str) -> tuple[str, int]:
    """'iwae-50' -> ('iwae', 50)."""
    name, _, k = configuration.rpartition("-")
    if name not in ESTIMATORS or not k.isdigit():
        raise ValueError(f"{configuration!r} is neither an estimator ({', '.join(ESTIMATORS)})"
                         " nor ESTIMATOR-K, the estimator with K particles (for example iwae-50)")
    return name, int(k)


def expand(tokens: list[str]) -> list[str]:
    """Configurations from --estimators: bare names stand for the study's own (or, for an
    estimator the study does not run, its 5-particle configuration)."""
    chosen = []
    for token in tokens:
        if token in ESTIMATORS:
            own = [c for c in CONFIGURATIONS if parse(c)[0] == token] or [f"{token}-5"]
        else:
            parse(token)  # raises, naming the valid choices
            own = [token]
        chosen += [c for c in own if c not in chosen]
    return chosen


class LikelihoodCurve(Callback):
    """After every epoch: IS-K log-likelihood on a fixed test subset, as a metrics column
    (kept in metrics.jsonl, so a resumed run still has its whole curve)."""

    def __init__(self, vae, x, num_samples: int, label: str):
        self.vae, self.x, self.num_samples, self.label = vae, x, num_samples, label

    def after_epoch(self, epoch: int, record: dict) -> dict:
        ll = log_likelihood(self.vae.model, self.vae.guide, self.x, self.num_samples)
        print(f"{self.label:22s} epoch {epoch:2d}  train {record['train_loss']:8.2f}  "
              f"IS-{self.num_samples} {ll.mean().item():8.2f}  {record['seconds']:5.1f} s",
              flush=True)
        return {"curve_log_likelihood": ll.mean().item()}


def settings(args) -> dict:
    """What a run's result depends on: a result.json with other settings is run again."""
    return dict(epochs=args.epochs, is_samples=args.is_samples, is_examples=args.is_examples,
                snr_draws=args.snr_draws, curve=[args.curve_samples, args.curve_examples],
                train_examples=args.train_examples)


def run(configuration: str, seed: int, data, args, out: Path) -> dict:
    """Train one configuration from one seed and evaluate it, or read the result a finished
    run left; errors go into the row."""
    run_dir = out / "runs" / configuration / f"seed-{seed}"
    saved = run_dir / "result.json"
    if saved.exists():
        row = json.loads(saved.read_text())
        if row.get("settings") == settings(args):
            print(f"{configuration}, seed {seed}: done before, read from {saved}", flush=True)
            return row
    row = dict(configuration=configuration, seed=seed, error="", curve=[],
               settings=settings(args))
    start = time.perf_counter()
    try:
        name, k = parse(configuration)
        config = Config(**TRAINING, elbo=name, particles=k, seed=seed, epochs=args.epochs,
                        alpha=RENYI_ALPHA if name == "renyi" else None, device=args.device)
        config.check()
        pyro.set_rng_seed(seed)
        vae = VAE(**NETWORK).to(args.device)
        pyro.clear_param_store()  # else pyro.module hands back the last run's weights
        x_snr = next(data.eval_batches("train", 100)).to(args.device)
        x_is = next(data.eval_batches("test", args.is_examples)).to(args.device)
        row["start"] = gradient_snr(vae.model, vae.guide, config.make_elbo(), x_snr,
                                    args.snr_draws)
        curve = LikelihoodCurve(vae, x_is[: args.curve_examples], args.curve_samples,
                                f"{configuration}, seed {seed}")
        resume = (run_dir / "checkpoint.pt").exists()  # a run stopped mid-way goes on
        metrics = fit(vae.model, vae.guide, data, config, run_dir, resume=resume, quiet=True,
                      callbacks=[curve])
        seconds = 0.0
        for m in metrics:
            seconds += m["seconds"]
            row["curve"].append(dict(epoch=m["epoch"], seconds=seconds,
                                     log_likelihood=m["curve_log_likelihood"]))
        row["end"] = gradient_snr(vae.model, vae.guide, config.make_elbo(), x_snr,
                                  args.snr_draws)
        row["test_elbo"] = elbo(vae.model, vae.guide, data.to(args.device))
        row["log_likelihood"] = log_likelihood(vae.model, vae.guide, x_is, args.is_samples,
                                               progress=sys.stderr.isatty()).mean().item()
        x_test = next(data.eval_batches("test", data.x_test.shape[0])).to(args.device)
        row["active_units"] = active_units(vae.guide, x_test)[0]
        row["seconds_per_epoch"] = seconds / args.epochs
        row["wall_seconds"] = time.perf_counter() - start  # training, evaluation and SNR
        row["machine"] = machine(args.device)
        saved.write_text(json.dumps(row, indent=1))
    except Exception as e:  # noqa: BLE001 - any failure is this run's result
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
        print(f"{configuration}, seed {seed}: FAILED  {row['error']}", flush=True)
    return row


def machine(device: str) -> str:
    return (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, torch "
            f"{torch.__version__}, pyro {pyro.__version__}, device {device}")


# ---------------------------------------------------------------- statistics over seeds


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); nan for one value)."""
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


def show(mean: float, se: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + ("" if math.isnan(se) else f" ± {se:.{digits}f}")


def paired(rows: dict, a: str, b: str, key: str = "log_likelihood"):
    """a − b over the seeds both finished: (mean, standard error, seeds), or None."""
    seeds = sorted(set(rows.get(a, {})) & set(rows.get(b, {})))
    if not seeds:
        return None
    mean, se = mean_se([rows[a][s][key] - rows[b][s][key] for s in seeds])
    return mean, se, len(seeds)


def verdict(mean: float, se: float, better: str, worse: str) -> str:
    """A difference within two standard errors (or from one seed) is a tie."""
    if math.isnan(se) or abs(mean) <= 2 * se:
        return f"a tie ({mean:+.2f} ± {se:.2f} nats, within two standard errors)"
    winner, loser = (better, worse) if mean > 0 else (worse, better)
    return f"{winner} is better than {loser} by {abs(mean):.2f} ± {se:.2f} nats"


def at_time(curve: list[dict], seconds: float) -> float | None:
    """The curve's value after ``seconds`` of training, linear between its epochs (None
    before its first epoch ends; its last value after its last epoch)."""
    if seconds < curve[0]["seconds"]:
        return None
    for a, b in zip(curve, curve[1:], strict=False):
        if a["seconds"] <= seconds <= b["seconds"]:
            t = (seconds - a["seconds"]) / (b["seconds"] - a["seconds"])
            return a["log_likelihood"] + t * (b["log_likelihood"] - a["log_likelihood"])
    return curve[-1]["log_likelihood"]


def by_configuration(rows: list[dict]) -> dict[str, dict[int, dict]]:
    done: dict[str, dict[int, dict]] = {}
    for r in rows:
        if not r["error"]:
            done.setdefault(r["configuration"], {})[r["seed"]] = r
    return done


def findings(rows: list[dict], args) -> list[str]:
    """Plain sentences computed from the numbers, so they stay true for any run."""
    done = by_configuration(rows)
    if not done:
        return ["- Every run failed."]
    lines = []
    ll = {c: mean_se([r["log_likelihood"] for r in runs.values()]) for c, runs in done.items()}
    best = max(ll, key=lambda c: ll[c][0])
    lines.append(f"- Highest mean IS-{args.is_samples} log-likelihood: **{best}** "
                 f"({show(*ll[best])} nats over {len(done[best])} seed(s)).")
    for k in sorted({parse(c)[1] for c in done}):
        base = f"iwae-{k}"
        for other in (f"iwae-dreg-{k}", f"stl-{k}"):
            d = paired(done, other, base)
            if d and base in done:
                lines.append(f"- {other} − {base}, IS-{args.is_samples}, paired by seed "
                             f"({d[2]} seeds): {verdict(d[0], d[1], other, base)}.")
    for k in (1, 5):  # the KL term sampled against in closed form
        a, b = f"trace-{k}", f"meanfield-{k}"
        d = paired(done, a, b)
        if d:
            snr = {c: mean_se([r["end"]["encoder"]["snr"] for r in done[c].values()])
                   for c in (a, b)}
            lines.append(f"- {a} − {b}, IS-{args.is_samples}, paired by seed ({d[2]} seeds): "
                         f"{verdict(d[0], d[1], a, b)}; encoder gradient SNR at the end "
                         f"{show(*snr[a], 3)} against {show(*snr[b], 3)} (mean ± standard error "
                         "over the seeds).")
    for a, b in (("stl-1", "meanfield-1"), ("iwae-50", "meanfield-1"),
                 ("iwae-dreg-50", "iwae-dreg-5")):
        d = paired(done, a, b)
        if d:
            lines.append(f"- {a} − {b}, paired by seed ({d[2]} seeds): "
                         f"{verdict(d[0], d[1], a, b)}.")
    if "iwae-50" in done and "meanfield-1" in done:
        units = ", ".join(f"{c} {show(*mean_se([r['active_units'] for r in done[c].values()]), 1)}"
                          for c in ("iwae-50", "meanfield-1"))
        lines.append(f"- Active units (of 50): {units}; the paper finds IWAE using more.")
    # Equal wall-clock time: every curve read at the training time of the fastest
    # configuration (its last epoch), seed by seed.
    totals = {c: statistics.fmean(r["curve"][-1]["seconds"] for r in runs.values())
              for c, runs in done.items() if all(r["curve"] for r in runs.values())}
    if len(totals) >= 2:
        fastest = min(totals, key=totals.get)
        budget = totals[fastest]
        parts = []
        for c in sorted(totals, key=totals.get):
            values = [at_time(r["curve"], r_fast["curve"][-1]["seconds"])
                      for s, r in done[c].items() if (r_fast := done[fastest].get(s))]
            values = [v for v in values if v is not None]
            parts.append(f"{c} {show(*mean_se(values))}" if values
                         else f"{c} (no epoch finished)")
        lines.append(f"- At equal wall-clock time, {budget:.0f} s of training (all of "
                     f"{fastest}'s {args.epochs} epochs, seed by seed; each curve read there, "
                     f"linear between its epochs, IS-{args.curve_samples} on "
                     f"{args.curve_examples} test images): " + "; ".join(parts) + ".")
    gap = {c: statistics.fmean(r["log_likelihood"] - r["test_elbo"] for r in runs.values())
           for c, runs in done.items()}
    widest = max(gap, key=gap.get)
    lines.append(f"- The gap log p(x) − ELBO is widest for {widest} ({gap[widest]:.2f} nats; "
                 f"{min(gap.values()):.2f} at the narrowest): a k-sample bound no longer asks "
                 "q to fit the posterior, so its ELBO can fall while its likelihood rises.")
    return lines


# ---------------------------------------------------------------- figures and files


def plot_curves(rows: list[dict], path: Path, ylabel: str) -> None:
    fig = Figure(figsize=(10, 5))
    ax = fig.subplots()
    for c, runs in by_configuration(rows).items():
        curves = [r["curve"] for r in runs.values() if r["curve"]]
        if not curves:
            continue
        n = min(len(curve) for curve in curves)
        seconds = [statistics.fmean(curve[i]["seconds"] for curve in curves) for i in range(n)]
        values = [statistics.fmean(curve[i]["log_likelihood"] for curve in curves)
                  for i in range(n)]
        name, k = parse(c)
        style = "-" if k == 1 else "--" if k < 50 else ":"
        ax.plot(seconds, values, style, marker="o", ms=3, color=COLOURS[name], label=c)
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, cumulative, log scale); one point per epoch, mean of seeds")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_snr(rows: list[dict], path: Path) -> None:
    done = by_configuration(rows)
    names = list(done)
    fig = Figure(figsize=(10, 4.5))
    axes = fig.subplots(1, 2, sharey=True)
    positions = torch.arange(len(names), dtype=torch.float64)
    for ax, group in zip(axes, GROUPS, strict=True):
        for offset, when, shade in ((-0.2, "start", 0.4), (0.2, "end", 1.0)):
            ax.bar((positions + offset).tolist(),
                   [statistics.fmean(r[when][group]["snr"] for r in done[c].values())
                    for c in names], 0.4,
                   color=[COLOURS[parse(c)[0]] for c in names], alpha=shade,
                   label=f"{when} of training")
        ax.set_xticks(positions.tolist(), names, rotation=45, ha="right")
        ax.set_yscale("log")
        ax.set_title(f"{group} gradient, mean of seeds")
        ax.grid(alpha=0.3, axis="y", which="both")
    axes[0].set_ylabel("gradient SNR, mean over parameters of |E g| / std g")
    axes[0].legend(fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_outputs(rows: list[dict], args, out: Path, data) -> None:
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "seed", "test_elbo",
                         f"is{args.is_samples}_log_likelihood", "active_units",
                         "seconds_per_epoch"]
                        + [f"{g}_{s}_{w}" for w in ("start", "end") for g in GROUPS
                           for s in ("snr", "variance")] + ["error"])
        for r in rows:
            numbers = [r.get(key, "") for key in NUMBERS]
            grads = [r[w][g][s] if w in r and not r["error"] else "" for w in ("start", "end")
                     for g in GROUPS for s in ("snr", "variance")]
            writer.writerow([r["configuration"], r["seed"], *numbers, *grads, r["error"]])
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "seed", "epoch", "seconds", f"is{args.curve_samples}"])
        for r in rows:
            for p in r["curve"]:
                writer.writerow([r["configuration"], r["seed"], p["epoch"], p["seconds"],
                                 p["log_likelihood"]])
    curve_label = (f"IS-{args.curve_samples} log-likelihood, {args.curve_examples} test images "
                   "(nats per example)")
    plot_curves(rows, out / "log_likelihood_vs_time.png", curve_label)
    plot_snr(rows, out / "gradient_snr.png")

    done = by_configuration(rows)
    seeds = sorted({r["seed"] for r in rows})
    timed = [r["wall_seconds"] for r in rows if "wall_seconds" in r]
    machines = {r["machine"] for r in rows if "machine" in r}
    lines = [
        "# Estimator study",
        "",
        f"Dynamically binarized MNIST ({data.x_train.shape[0]} training images), the IWAE "
        "paper's model (784-200-200-50 tanh, Bernoulli), Adam lr 1e-3, batch 100, "
        f"{args.epochs} epoch(s) per run, seeds {', '.join(map(str, seeds))}, uncompiled; "
        f"written by `experiments/compare_estimators.py{' --quick' if args.quick else ''}`. "
        f"Its {len(timed)} finished runs took {sum(timed) / 60:.1f} min of wall time in all "
        "(training, evaluation and gradient SNR), on "
        f"{'; '.join(sorted(machines)) or 'the machine that ran it'}. "
        "ESTIMATOR-K is the estimator with K vectorized particles. Each cell is the mean ± "
        "standard error over the seeds (sample standard deviation / sqrt(seeds)); for a seed, "
        "every configuration starts from the same weights and sees the same batches.",
        "",
        f"- test ELBO: analytic KL (`meanfield`, one sample), all {data.x_test.shape[0]} test "
        "images, one fixed binarization (seed 0), nats per example;",
        f"- IS-{args.is_samples}: the importance-sampled log-likelihood "
        f"log (1/K) sum p(x, z_k)/q(z_k|x) with K = {args.is_samples}, on the first "
        f"{args.is_examples} test images, same binarization, nats per example;",
        "- active units: latent dimensions with Cov_x E_q[z_u] > 0.01 (Burda et al.), of 50;",
        f"- gradient SNR: {args.snr_draws} gradient draws of the training estimator on one "
        "batch of 100 training images, before the first and after the last step; |mean| / std "
        "per parameter, averaged over the encoder's (decoder's) parameters.",
        "",
        f"| configuration | seeds | test ELBO | IS-{args.is_samples} log p(x) | active units | "
        "encoder SNR start → end | decoder SNR start → end | s / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in dict.fromkeys(r["configuration"] for r in rows):
        runs = done.get(c, {})
        failed = [r for r in rows if r["configuration"] == c and r["error"]]
        if not runs:
            lines.append(f"| {c} | 0 | failed: {failed[0]['error']} | | | | | |")
            continue
        cell = lambda key, d=2, rs=runs: show(  # noqa: E731
            *mean_se([r[key] for r in rs.values()]), d)
        snr = lambda g, rs=runs: " → ".join(  # noqa: E731
            f"{statistics.fmean(r[w][g]['snr'] for r in rs.values()):.3g}"
            for w in ("start", "end"))
        note = f" ({len(failed)} failed: {failed[0]['error']})" if failed else ""
        lines.append(f"| {c} | {len(runs)}{note} | {cell('test_elbo')} | "
                     f"{cell('log_likelihood')} | {cell('active_units', 1)} | {snr('encoder')} | "
                     f"{snr('decoder')} | {cell('seconds_per_epoch', 1)} |")
    lines += ["", "## What the numbers say", "",
              "A difference is called a tie when it lies within two of its standard errors.",
              "", *findings(rows, args), "",
              "## The paper, for direction", "",
              "Burda et al. (2016), Table 1, the same model after 3,280 epochs (ours: "
              f"{args.epochs}). Their numbers are far better than any short run; what should "
              "carry over is the order: more samples help, IWAE more than the VAE, and IWAE "
              "uses more latent dimensions. The DReG paper (Tucker et al., 2019) reports "
              "IWAE-DReG above IWAE at every k.", "",
              "| paper | IS-5000 log p(x) | active units |", "|---|---|---|"]
    lines += [f"| {name} | {-nll:.2f} | {units} |" for name, (nll, units) in PAPER.items()]
    lines += ["", "## Figures", "", "![log-likelihood against time](log_likelihood_vs_time.png)",
              "", "![gradient SNR](gradient_snr.png)", "", *snr_against_k(out)]
    (out / "README.md").write_text("\n".join(lines))


def snr_against_k(out: Path) -> list[str]:
    """The section on experiments/gradient_snr.py's results, where it wrote them beside."""
    path = out / "gradient_snr" / "snr.csv"
    if not path.exists():
        return []
    with open(path) as f:
        snr = {(r["state"], r["estimator"], int(r["k"])): float(r["encoder"])
               for r in csv.DictReader(f)}
    ks = sorted({k for _, _, k in snr})
    lines = ["## Gradient SNR against k", "",
             "From `experiments/gradient_snr.py` ([its README](gradient_snr/README.md)): the "
             "encoder's gradient SNR of iwae and iwae-dreg at the smallest and largest k, 100 "
             "draws on one batch of 100 training images.", "",
             "| weights | estimator | " + " | ".join(f"encoder SNR, k = {k}" for k in
                                                   (ks[0], ks[-1])) + " |", "|---|---|---|---|"]
    for state in ("initial", "trained"):
        for name in ("iwae", "iwae-dreg"):
            if (state, name, ks[0]) in snr:
                lines.append(f"| {state} | {name} | {snr[state, name, ks[0]]:.3g} | "
                             f"{snr[state, name, ks[-1]]:.3g} |")
    return [*lines, "", "![gradient SNR against k](gradient_snr/snr_vs_k.png)", ""]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--estimators", nargs="+", default=CONFIGURATIONS, metavar="CONFIG",
                        help=f"configurations (default: {' '.join(CONFIGURATIONS)}) or "
                        f"estimator names ({', '.join(ESTIMATORS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--is-samples", type=int, default=5000)
    parser.add_argument("--is-examples", type=int, default=1000,
                        help="test images for the IS log-likelihood (default: the first 1000)")
    parser.add_argument("--quick", action="store_true",
                        help="400 training and 100 test images, 2 epochs, 2 seeds, small IS "
                        "and SNR budgets (tests)")
    parser.add_argument("--out", type=Path, help="default: results/estimators/, or "
                        "runs/quick/estimators/ with --quick")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "estimators")
    try:
        args.configurations = expand(args.estimators)
    except ValueError as e:
        parser.error(str(e))
    for flag in ("epochs", "is_samples", "is_examples"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    return args


def main() -> None:
    args = arguments()
    args.curve_samples, args.curve_examples, args.snr_draws = 100, 500, 100

    start = time.perf_counter()
    pyro.enable_validation(False)  # speed, as `pyro-vae train`; fit validates its first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    data = load_dataset("mnist-binary")
    if args.quick:
        data = data.subset(train=400, test=100)
        args.epochs, args.is_samples, args.is_examples = 2, 20, 50
        args.curve_samples, args.curve_examples, args.snr_draws = 10, 25, 3
        args.seeds = args.seeds[:2] if args.seeds != SEEDS else [0, 1]
    args.train_examples = data.x_train.shape[0]
    args.is_examples = min(args.is_examples, data.x_test.shape[0])
    args.curve_examples = min(args.curve_examples, args.is_examples)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run(c, seed, data, args, args.out) for seed in args.seeds
            for c in args.configurations]
    write_outputs(rows, args, args.out, data)
    print(f"wrote {args.out}/README.md, metrics.csv, curves.csv and the figures in "
          f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
