"""Where the nats go: the approximation and amortization gaps of Cremer, Li & Duvenaud (2018),
"Inference Suboptimality in Variational Autoencoders", for three guides on two datasets.

    .venv/bin/python experiments/inference_gap.py           # ~2 hours on 2 CPU cores (resumes)
    .venv/bin/python experiments/inference_gap.py --quick   # seconds (tests)

For each dataset (dynamically binarized MNIST and Fashion-MNIST) and each case

- ``ffg``: the IWAE paper's one-layer VAE, 784-200-200 tanh to 50 and back, with its fully
  factorised Gaussian (FFG) guide;
- ``flow``: the same model, the guide's Gaussian pushed through 2 IAF transforms
  (``experiments/extending/flow_guide.py``);
- ``wide``: the same model, an FFG guide whose encoder is 784-500-500 (Cremer et al.'s wider
  encoder: 500 hidden units where the others have 200);

``--seeds`` models are trained (``trace``: the sampled ELBO, for all three, so that the
estimator is the same; Adam lr 1e-3, batch 100). On the first ``--examples`` test images
(one fixed binarization), each model gets

- log p(x): AIS from the guide (``pyro_vae.ais_log_likelihood``, ``--ais-steps`` x
  ``--ais-chains``, HMC with 5 leapfrog steps); its error is bracketed by BDMC on as many
  images simulated from the model (seed 0 of each case: forward and reverse AIS, same schedule);
- L[q*_FFG] and L[q*_flow]: ``pyro_vae.refine`` from the guide's output, a diagonal Gaussian
  and that Gaussian with 8 planar flows per example, Adam lr 1e-2, 10 particles a step,
  stopped when the mean bound over ``--window`` steps stops rising (at most ``--refine-steps``);
  bounds from 100 fresh draws per example;
- L[q]: the amortized guide's own bound on the same images (100 draws per example);

and the gaps: approximation = log p(x) - L[q*], amortization = L[q*] - L[q], with q* in the
guide's own family (FFG for ffg and wide, flow for flow). Each is a mean over the images; the
table gives the mean over seeds +- its standard error. The ffg models of ``--curve`` are also
measured after each of the earlier ``--epochs`` (the run trained in chunks, resumed), for the
gaps against epochs.

Runs go to OUT/runs/<dataset>/<case>/seed<k> and resume where they stopped; each model's
measurements are kept beside it (gaps-epoch<E>.json), so a stopped study runs on from there.
Writes OUT/: README.md (tables and what they say), metrics.csv, gaps.png, gaps_vs_epochs.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from matplotlib.figure import Figure

from pyro_vae import (
    VAE,
    Config,
    Encoder,
    ais_log_likelihood,
    bdmc,
    build_model,
    fit,
    load_dataset,
    refine,
)
from pyro_vae.plots import save_figure
from pyro_vae.rundir import CHECKPOINT, atomic_write_text, read_metrics

sys.path.insert(0, str(Path(__file__).parent / "extending"))
from flow_guide import FlowGuideVAE  # noqa: E402

NETWORK = dict(z_dim=50, hidden=[200, 200], activation="tanh", likelihood="bernoulli")
WIDE = [500, 500]
TRAINING = dict(elbo="trace", lr=1e-3, batch_size=100)
SEMI_STEPS = 5  # K of the semi-amortized case
CASES = {"ffg": "FFG guide", "semi": f"FFG guide, semi-amortized (K = {SEMI_STEPS}), FFG's minutes",
         "flow": "FFG + 2 IAF guide", "wide": "FFG guide, 500-wide encoder"}
FAMILY = {"ffg": "gaussian", "flow": "flow", "wide": "gaussian", "semi": "gaussian"}
DATASETS = {"mnist-binary": "binarized MNIST", "fashion-mnist-binary": "binarized Fashion-MNIST"}
REFINE = dict(lr=1e-2, particles=10)
LEAPFROG = 5


def wide_encoder_vae(encoder_hidden, **vae) -> VAE:
    """The VAE of ``vae``'s arguments with its encoder replaced by a wider one."""
    built = VAE(**vae)
    built.encoder = Encoder(vae["x_dim"], encoder_hidden, vae["z_dim"], vae["activation"])
    return built


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, nargs="+", default=[4, 20],
                   help="the ffg models of --curve are measured after each, the rest after "
                   "the last")
    p.add_argument("--curve", nargs="*", choices=DATASETS, default=["mnist-binary"],
                   help="the datasets whose ffg models draw the gaps against epochs")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--examples", type=int, default=100)
    p.add_argument("--ais-steps", type=int, default=300)
    p.add_argument("--ais-chains", type=int, default=8)
    p.add_argument("--refine-steps", type=int, default=3000)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--out", type=Path,
                   help="default: results/inference_gap/, or runs/quick/inference_gap/ "
                   "with --quick")
    p.add_argument("--quick", action="store_true", help="300 images, tiny budgets (tests)")
    args = p.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "inference_gap")
    args.curve = [d for d in args.curve if d in args.datasets]
    if args.quick:
        args.epochs, args.seeds, args.examples = [1, 2], 1, 3
        args.ais_steps, args.ais_chains, args.refine_steps, args.window = 3, 2, 20, 10
    args.flows, args.eval_particles = (2, 10) if args.quick else (8, 100)
    if min(args.epochs) < 1 or sorted(args.epochs) != args.epochs:
        p.error(f"--epochs takes rising positive numbers, got {args.epochs}")
    for name in ("seeds", "examples", "ais_steps", "ais_chains", "refine_steps", "window"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def build(case: str, data, seed: int):
    pyro.set_rng_seed(seed)
    vae = dict(x_dim=data.x_dim, **NETWORK)
    if case == "flow":
        return build_model(FlowGuideVAE, **vae)
    if case == "wide":
        return build_model(wide_encoder_vae, encoder_hidden=WIDE, **vae)
    return VAE(**vae)


def train(vae, case: str, data, run_dir: Path, epochs: int, seed: int) -> list[dict]:
    """Train (or resume) to ``epochs``; the metrics of every epoch. Captured by the engine
    (pyro_vae.engine) but for the IAF guide and the semi-amortized estimator, stepped by
    Pyro as the runs committed here were."""
    semi = dict(elbo="semi-amortized", refine_steps=SEMI_STEPS) if case == "semi" else {}
    config = Config(dataset=data.name, **{**TRAINING, **semi}, epochs=epochs, seed=seed,
                    jit=case in ("ffg", "wide"))
    return fit(vae.model, vae.guide, data, config, run_dir,
               resume=(run_dir / CHECKPOINT).exists(), quiet=True)


def seconds(metrics: list[dict]) -> float:
    """The seconds of all the epochs' training loops (not of their test losses)."""
    return sum(m["seconds"] for m in metrics)


def epoch_seconds(metrics: list[dict]) -> float:
    """The median seconds of an epoch's training loop: the cost of an epoch, robust to the
    epochs that another process on the machine slowed (and to the JIT's first epoch)."""
    return statistics.median(m["seconds"] for m in metrics)


def train_for(data, run_dir: Path, minutes: float, seed: int):
    """Train the semi-amortized case epoch by epoch (resumed) until its epochs, at their
    median cost, take ``minutes``, the time of the plain VAE it is compared with at its
    median cost: the model and the metrics of every epoch."""
    metrics = []
    while not metrics or epoch_seconds(metrics) * len(metrics) < 60 * minutes:
        vae = build("semi", data, seed)
        metrics = train(vae, "semi", data, run_dir, len(metrics) + 1, seed)
    return vae, metrics


class MomentGuide:
    """AIS's initial distribution for the IAF guide: per example the diagonal Gaussian with
    the mean and standard deviation of 256 of the guide's draws (seed 0), computed once per
    batch. AIS scores its initial density at every point the chains visit, and an IAF's
    density at a new point takes 50 sequential passes; any initial distribution gives a
    valid AIS estimate, and BDMC measures how good this one is."""

    def __init__(self, vae):
        self.vae, self.moments = vae, {}

    def __call__(self, x):
        key = (x.data_ptr(), tuple(x.shape))
        if key not in self.moments:
            with torch.no_grad(), torch.random.fork_rng(), poutine.block():
                torch.manual_seed(0)
                draws = poutine.trace(self.vae.guide).get_trace(x).nodes["z"]["fn"].sample((256,))
            self.moments[key] = draws.mean(0), draws.std(0)
        loc, scale = self.moments[key]
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def gaussian_guide(vae, case: str):
    """AIS's initial distribution: the guide where it is a diagonal Gaussian, else its
    :class:`MomentGuide`."""
    return MomentGuide(vae) if case == "flow" else vae.guide


def measure(vae, case: str, x, args, seed: int) -> dict:
    """Every bound and both gaps of one model on the images ``x``: per-image tensors
    reduced to their means (and the paired standard errors over images)."""
    started = time.perf_counter()
    ais = ais_log_likelihood(vae.model, gaussian_guide(vae, case), x, steps=args.ais_steps,
                             chains=args.ais_chains, leapfrog=LEAPFROG, seed=seed)
    ais_seconds = time.perf_counter() - started
    refined, seconds, steps = {}, {}, {}
    for family in ("gaussian", "flow"):
        started = time.perf_counter()
        r = refine(vae.model, vae.guide, x, steps=args.refine_steps, family=family,
                   window=args.window, seed=seed, flows=args.flows,
                   eval_particles=args.eval_particles, **REFINE)
        refined[family], steps[family] = r, r.steps
        seconds[family] = time.perf_counter() - started
    log_p, amortized = ais.log_likelihood, refined["gaussian"].amortized_elbo
    row = {"log_p": log_p, "elbo_flow": refined["flow"].elbo,
           "elbo_ffg": refined["gaussian"].elbo, "elbo_amortized": amortized}
    for family, name in (("gaussian", "ffg"), ("flow", "flow")):
        row[f"approximation_{name}"] = log_p - refined[family].elbo
        row[f"amortization_{name}"] = refined[family].elbo - amortized
    row["inference"] = log_p - amortized
    out = {key: value.mean().item() for key, value in row.items()}
    out.update({f"{key}_se": (value.std() / math.sqrt(len(value))).item()
                for key, value in row.items()})
    out.update(ais_seconds=ais_seconds, ais_acceptance=ais.acceptance.mean().item(),
               refine_seconds_ffg=seconds["gaussian"], refine_seconds_flow=seconds["flow"],
               refine_steps_ffg=steps["gaussian"], refine_steps_flow=steps["flow"])
    return out


def bracket(vae, case: str, x, args) -> dict:
    result = bdmc(vae.model, gaussian_guide(vae, case), x, steps=args.ais_steps,
                  chains=args.ais_chains, leapfrog=LEAPFROG, seed=0)
    se = lambda t: (t.std() / math.sqrt(len(t))).item()  # noqa: E731
    return {"bdmc_forward": result.forward.mean().item(),
            "bdmc_reverse": result.reverse.mean().item(),
            "bdmc_gap": result.gap.mean().item(), "bdmc_gap_se": se(result.gap)}


def study(args) -> list[dict]:
    rows = []
    for dataset in args.datasets:
        data = load_dataset(dataset)
        if args.quick:
            data = data.subset(train=300, test=20)
        x = next(data.eval_batches("test", args.examples))  # one fixed binarization
        for case in CASES:
            for seed in range(args.seeds):
                run_dir = args.out / "runs" / dataset / case / f"seed{seed}"
                epochs = args.epochs if case == "ffg" and dataset in args.curve \
                    else args.epochs[-1:]
                for e in dict.fromkeys(epochs):
                    kept = run_dir / f"gaps-epoch{e}.json"
                    if kept.exists():
                        row = json.loads(kept.read_text())
                    else:
                        if case == "semi":  # as many minutes as the FFG case's e epochs take
                            plain = [r["epoch_seconds"] for r in rows if (
                                r["dataset"], r["case"], r["epochs"]) == (dataset, "ffg", e)]
                            minutes = statistics.median(plain) * e / 60
                            vae, metrics = train_for(data, run_dir, minutes, seed)
                        else:
                            vae = build(case, data, seed)
                            metrics = train(vae, case, data, run_dir, e, seed)
                        row = {"train_seconds": seconds(metrics), "trained_epochs": len(metrics),
                               "test_loss": metrics[-1]["test_loss"],
                               **measure(vae, case, x, args, seed)}
                        if seed == 0 and e == args.epochs[-1]:
                            row.update(bracket(vae, case, x, args))
                        atomic_write_text(kept, json.dumps(row, indent=1) + "\n")
                    trained = read_metrics(run_dir)[:row.get("trained_epochs", e)]
                    row.update(dataset=dataset, case=case, seed=seed, epochs=e,
                               epoch_seconds=epoch_seconds(trained),
                               test_loss=trained[-1]["test_loss"])
                    rows.append(row)
                    train_seconds = row["train_seconds"]
                    print(f"{dataset:20s} {case:4s} seed {seed} epoch {e:3d}: log p(x) "
                          f"{row['log_p']:8.2f}  L[q*_flow] {row['elbo_flow']:8.2f}  "
                          f"L[q*_FFG] {row['elbo_ffg']:8.2f}  L[q] {row['elbo_amortized']:8.2f}"
                          f"  ({train_seconds / 60:.1f} min training)", flush=True)
    return rows


def summary(rows: list[dict], dataset: str, case: str, epochs: int, key: str):
    values = [r[key] for r in rows if (r["dataset"], r["case"], r["epochs"]) ==
              (dataset, case, epochs)]
    return mean_se(values) if values else (None, None)


def mean_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (nan for one value)."""
    mean = statistics.mean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, se


def tie(mean: float, se: float) -> bool:
    """A difference inside two standard errors (or of one seed, without one) is a tie."""
    return not abs(mean) >= 2 * se


def plot_gaps(rows, args, path: Path) -> None:
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    last = args.epochs[-1]
    labels, positions = [], []
    for i, dataset in enumerate(args.datasets):
        for j, case in enumerate(CASES):
            name = "ffg" if FAMILY[case] == "gaussian" else "flow"
            approx = summary(rows, dataset, case, last, f"approximation_{name}")
            amort = summary(rows, dataset, case, last, f"amortization_{name}")
            x = i * (len(CASES) + 1) + j
            ax.bar(x, approx[0], yerr=approx[1], color="tab:blue", capsize=3,
                   label="approximation gap" if x == 0 else None)
            ax.bar(x, amort[0], bottom=approx[0], yerr=amort[1], color="tab:orange",
                   capsize=3, label="amortization gap" if x == 0 else None)
            labels.append(f"{case}\n{dataset.split('-')[0]}")
            positions.append(x)
    ax.set_xticks(positions, labels)
    ax.set_ylabel("nats per example (mean over seeds +- 1 s.e.)")
    ax.set_title(f"log p(x) - L[q] = approximation + amortization, after {last} epochs")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_epochs(rows, args, path: Path) -> None:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for dataset, style in zip(args.curve, ("-", "--"), strict=False):
        for key, colour in (("approximation_ffg", "tab:blue"), ("amortization_ffg", "tab:orange")):
            points = [summary(rows, dataset, "ffg", e, key) for e in args.epochs]
            ax.errorbar(args.epochs, [m for m, _ in points], yerr=[s for _, s in points],
                        color=colour, ls=style, marker="o", capsize=3,
                        label=f"{key.split('_')[0]} gap, {DATASETS[dataset]}")
    ax.set_xlabel("training epochs")
    ax.set_ylabel("nats per example (mean over seeds +- 1 s.e.)")
    ax.set_title("The FFG guide's two gaps as training goes on")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


FIELDS = ["dataset", "case", "seed", "epochs", "log_p", "elbo_flow", "elbo_ffg",
          "elbo_amortized", "approximation_ffg", "amortization_ffg", "approximation_flow",
          "amortization_flow", "inference", "log_p_se", "elbo_ffg_se", "elbo_amortized_se",
          "amortization_ffg_se", "approximation_ffg_se", "bdmc_forward", "bdmc_reverse",
          "bdmc_gap", "bdmc_gap_se", "ais_acceptance", "ais_seconds", "refine_seconds_ffg",
          "refine_seconds_flow", "refine_steps_ffg", "refine_steps_flow", "train_seconds",
          "trained_epochs", "test_loss", "epoch_seconds"]


def write(rows: list[dict], args) -> None:
    minutes = sum(r["train_seconds"] + r["ais_seconds"] + r["refine_seconds_ffg"]
                  + r["refine_seconds_flow"] for r in rows) / 60
    with open(args.out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    plot_gaps(rows, args, args.out / "gaps.png")
    plot_epochs(rows, args, args.out / "gaps_vs_epochs.png")
    last = args.epochs[-1]

    def cell(dataset, case, epochs, key):
        mean, se = summary(rows, dataset, case, epochs, key)
        return "" if mean is None else f"{mean:.2f} +- {se:.2f}"

    lines = [
        "# Where the nats go: approximation and amortization gaps", "",
        "Written by `experiments/inference_gap.py` on 2 CPU cores, its runs resumed across "
        f"invocations: {minutes:.0f} min of training loops, AIS and refinement in all (BDMC and "
        "the per-epoch test losses not counted) "
        f"(command: `{' '.join(['.venv/bin/python', *sys.argv])}`). Model: 784-200-200-50 "
        "tanh, Bernoulli (the IWAE paper's one-layer architecture), trained with `trace` "
        f"(the sampled ELBO), Adam lr 1e-3, batch 100, {last} epochs, {args.seeds} seeds per "
        f"case. Data: dynamically binarized in training; the first {args.examples} test "
        "images, one fixed binarization (seed 0), for every number below. log p(x): AIS from "
        f"the guide, {args.ais_steps} steps x {args.ais_chains} chains, HMC with {LEAPFROG} "
        "leapfrog steps. L[q*]: `pyro_vae.refine` from the guide's output (diagonal Gaussian, "
        "or it with 8 planar flows per example), Adam lr 1e-2, 10 particles per step, stopped "
        f"when the mean bound over {args.window} steps stops rising (at most "
        f"{args.refine_steps} steps); bounds from 100 fresh draws per example. L[q]: the "
        "amortized guide's bound, 100 draws per example. Nats per example; each cell is the "
        "mean over seeds of the mean over the images, +- the standard error over seeds.", "",
        "| data | guide | log p(x) (AIS) | L[q*_flow] | L[q*_FFG] | L[q] | approximation gap "
        "| amortization gap | inference gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for dataset in args.datasets:
        for case in CASES:
            name = "ffg" if FAMILY[case] == "gaussian" else "flow"
            cells = [cell(dataset, case, last, key) for key in (
                "log_p", "elbo_flow", "elbo_ffg", "elbo_amortized", f"approximation_{name}",
                f"amortization_{name}", "inference")]
            lines.append(f"| {DATASETS[dataset]} | {CASES[case]} | {' | '.join(cells)} |")
            per_seed = [r[f"amortization_{name}"] - r[f"approximation_{name}"] for r in rows
                        if (r["dataset"], r["case"], r["epochs"]) == (dataset, case, last)]
            mean, se = mean_se(per_seed)
            which = ("a tie (inside two standard errors)" if tie(mean, se) else
                     "the amortization gap is the larger" if mean > 0 else
                     "the approximation gap is the larger")
            verdicts.append(f"- {DATASETS[dataset]}, {CASES[case]}: amortization - "
                            f"approximation = {mean:+.2f} +- {se:.2f} nats: {which}.")
    lines += ["", "Approximation and amortization gaps are in the guide's own family: the "
              "FFG for the FFG guides, the flow (FFG + 8 planar flows per example) for the "
              "IAF guide. The local flow is not the IAF guide's family (2 IAF layers whose "
              "hypernetworks are shared by all images): it is a family of its own, per image, "
              "so for the IAF guide the split is against that family: where the planar flows "
              "fit an image's posterior worse than the best IAF member would, its approximation "
              "gap is overstated and its amortization gap understated. "
              "L[q*_FFG] of the IAF guide's model starts from the moments of the IAF's draws.",
              "", "Which gap dominates (paired over seeds):", "", *verdicts, "",
              *paper(verdicts), ""]
    lines += semi_section(rows, args)
    lines += ["BDMC on images simulated from each case's seed-0 model (same AIS schedule): "
              "reverse - forward bounds the error of the AIS column on data like these.", "",
              "| data | guide | BDMC forward | BDMC reverse | gap |", "|---|---|---|---|---|"]
    for r in rows:
        if "bdmc_gap" in r and r["epochs"] == last:
            lines.append(f"| {DATASETS[r['dataset']]} | {CASES[r['case']]} | "
                         f"{r['bdmc_forward']:.2f} | {r['bdmc_reverse']:.2f} | "
                         f"{r['bdmc_gap']:.2f} +- {r['bdmc_gap_se']:.2f} |")
    lines += ["", "The FFG guide's gaps as training goes on (the same runs, measured after "
              f"epochs {', '.join(map(str, args.epochs))}):", "",
              "| data | epochs | approximation gap | amortization gap | L[q] |",
              "|---|---|---|---|---|"]
    for dataset in args.curve:
        for e in args.epochs:
            cells = [cell(dataset, "ffg", e, key) for key in (
                "approximation_ffg", "amortization_ffg", "elbo_amortized")]
            lines.append(f"| {DATASETS[dataset]} | {e} | {' | '.join(cells)} |")
    lines += ["", "![gaps](gaps.png)", "", "![gaps against epochs](gaps_vs_epochs.png)", ""]
    atomic_write_text(args.out / "README.md", "\n".join(lines) + "\n")


def paper(verdicts: list[str]) -> list[str]:
    amortization = sum("amortization gap is the larger" in v for v in verdicts)
    approximation = sum("approximation gap is the larger" in v for v in verdicts)
    return [
        "The paper's finding, from its abstract (Cremer, Li & Duvenaud, 2018, ICML, "
        "https://icml.cc/virtual/2018/poster/2425): \"We find that divergence from the true "
        "posterior is often due to imperfect recognition networks, rather than the limited "
        "complexity of the approximating distribution.\" Its table of gaps could not be "
        "retrieved with this project's search tools (the stored copies of the paper hold its "
        "abstract and introduction only), so no number of it is quoted here. Its setting, read "
        "from the authors' code (github.com/lxuechen/inference-suboptimality): 784-200-200-50 "
        "networks, 3280 epochs of training, log p(x) by AIS with 10,000 intermediate "
        "distributions x 100 chains, q* by Adam lr 1e-3 with 100 samples, stopped after 10 "
        "checks (every 100 steps) without improvement, 1,000 test images; ours trains for "
        "minutes, not days, so its models are far from converged. Its code binarizes "
        "Fashion-MNIST once, at a threshold of 0.5; ours draws each pixel from its grey level "
        "(`fashion-mnist-binary`), a noisier, higher-entropy dataset whose log-likelihoods "
        "are not comparable with a thresholded one's.", "",
        f"Here the amortization gap is the larger in {amortization} of {len(verdicts)} rows "
        f"and the approximation gap in {approximation} (the rest are ties): "
        + ("agreeing with the paper's finding." if amortization > approximation else
           "not the paper's finding." if approximation > amortization else
           "no side is favoured."),
    ]


def semi_section(rows: list[dict], args) -> list[str]:
    last = args.epochs[-1]
    lines = ["## Semi-amortized training", "",
             f"SA-VAE (Kim et al., 2018; `pyro-vae train --elbo semi-amortized --refine-steps "
             f"{SEMI_STEPS}`): each training step refines every example's q by {SEMI_STEPS} "
             "natural-gradient steps and differentiates the bound through them. Trained for as "
             f"many minutes as the FFG runs take for their {last} epochs (an epoch's cost is the "
             "median of its seconds over the run's epochs, and for the FFG runs the median of "
             "that over seeds: robust to another process slowing some epochs; the FFG run is "
             "compiled, the semi-amortized one cannot be), same model, same seeds. L[q] is the "
             "encoder's own bound (at lambda_0); 'its bound' is the training estimator's on all "
             "test images at the last epoch: the ELBO for the plain VAE, the bound after "
             f"{SEMI_STEPS} refinement steps for the semi-amortized one.", "",
             "| data | training | epochs | s / epoch | its bound | L[q] | L[q*_FFG] | "
             "log p(x) (AIS) | amortization gap | approximation gap |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dataset in args.datasets:
        for case in ("ffg", "semi"):
            picked = [r for r in rows if (r["dataset"], r["case"], r["epochs"]) ==
                      (dataset, case, last)]
            if not picked:
                continue
            epochs = [r.get("trained_epochs", last) for r in picked]
            per_epoch = [r["epoch_seconds"] for r in picked]
            bound = [-r["test_loss"] for r in picked]
            cells = ["{:.2f} +- {:.2f}".format(*mean_se(bound))]
            for key in ("elbo_amortized", "elbo_ffg", "log_p", "amortization_ffg",
                        "approximation_ffg"):
                mean, se = summary(rows, dataset, case, last, key)
                cells.append(f"{mean:.2f} +- {se:.2f}")
            training = "semi-amortized" if case == "semi" else "plain"
            lines.append(f"| {DATASETS[dataset]} | {training} | {'/'.join(map(str, epochs))} | "
                         f"{sum(per_epoch) / len(per_epoch):.1f} | {' | '.join(cells)} |")
    lines += [""]
    for dataset in args.datasets:
        semi = {r["seed"]: r for r in rows if (r["dataset"], r["case"], r["epochs"]) ==
                (dataset, "semi", last)}
        plain = {r["seed"]: r for r in rows if (r["dataset"], r["case"], r["epochs"]) ==
                 (dataset, "ffg", last) and r["seed"] in semi}
        if len(semi) < 2:
            continue
        for key, what in (("amortization_ffg", "amortization gap"), ("log_p", "log p(x)"),
                          ("elbo_amortized", "L[q]")):
            mean, se = mean_se([semi[k][key] - plain[k][key] for k in semi])
            lines.append(f"- {DATASETS[dataset]}: {what}, semi-amortized - plain = "
                         f"{mean:+.2f} +- {se:.2f} nats"
                         f"{' (a tie: inside two standard errors)' if tie(mean, se) else ''}.")
    return lines + [""]


def main():
    args = arguments()
    pyro.enable_validation(False)  # speed, as `pyro-vae train`; fit validates its first batch
    logging.getLogger("pyro").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = study(args)
    write(rows, args)
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
