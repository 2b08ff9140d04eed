"""Gradient signal-to-noise ratio against the number of particles k, for IWAE, IWAE-DReG and
STL, at the shared initial weights and at a trained checkpoint.

    .venv/bin/python experiments/gradient_snr.py            # about 2 minutes on 2 CPU cores
    .venv/bin/python experiments/gradient_snr.py --quick    # seconds (tests)

Rainforth et al. (2018, "Tighter Variational Bounds are Not Necessarily Better") show that
the IWAE bound's gradient SNR falls like 1/sqrt(k) for the guide (encoder) while it rises
like sqrt(k) for the model (decoder); Tucker, Lawson, Gu & Maddison (2019) show that the
doubly reparameterized guide gradient (iwae-dreg) turns the encoder's trend around. STL
(Roeder et al., 2017) drops the same score term, but with weights w~ instead of w~^2 it is
biased for k > 1.

The model is the IWAE paper's (784-200-200-50 tanh, Bernoulli) on dynamically binarized MNIST;
the batch is 100 training images, one fixed binarization. SNR is |E g| / std g per parameter,
averaged over the encoder's (resp. decoder's) parameters, from --draws gradient draws
(pyro_vae.gradient_snr). The trained checkpoint is the same model after --epochs epochs of
the VAE (`meanfield`, k = 1, Adam lr 1e-3, batch 100), kept in results/estimators/gradient_snr/runs/
(not committed) and resumed if there.

Writes results/estimators/gradient_snr/: README.md, snr.csv, snr_vs_k.png (the estimator
study's README, results/estimators/README.md, shows the figure).
"""

import argparse
import csv
import logging
import math
import time
from pathlib import Path

import pyro
from matplotlib.figure import Figure

from pyro_vae import VAE, Config, fit, gradient_snr, load_dataset, make_elbo

ESTIMATORS = ("iwae", "iwae-dreg", "stl")
KS = (1, 5, 10, 50, 100)
NETWORK = dict(x_dim=784, likelihood="bernoulli", z_dim=50, hidden=[200, 200], activation="tanh")
GROUPS = ("encoder", "decoder")
COLOURS = {"iwae": "tab:red", "iwae-dreg": "tab:green", "stl": "tab:blue"}


def measure(vae, x, ks, draws, state: str) -> list[dict]:
    rows = []
    for name in ESTIMATORS:
        for k in ks:
            start = time.perf_counter()
            snr = gradient_snr(vae.model, vae.guide, make_elbo(name, num_particles=k), x, draws)
            rows.append(dict(state=state, estimator=name, k=k,
                             encoder=snr["encoder"]["snr"], decoder=snr["decoder"]["snr"]))
            print(f"{state:8s} {name:10s} k={k:4d}  encoder SNR {rows[-1]['encoder']:8.4f}  "
                  f"decoder SNR {rows[-1]['decoder']:8.4f}  {time.perf_counter() - start:5.1f} s",
                  flush=True)
    return rows


def slope(rows, state, name, group) -> float:
    """The least-squares slope of log SNR against log k."""
    points = [(math.log(r["k"]), math.log(r[group])) for r in rows
              if r["state"] == state and r["estimator"] == name and r[group] > 0]
    if len(points) < 2:
        return math.nan
    mx = sum(p[0] for p in points) / len(points)
    my = sum(p[1] for p in points) / len(points)
    return (sum((a - mx) * (b - my) for a, b in points)
            / sum((a - mx) ** 2 for a, _ in points))


def plot(rows, path: Path, states) -> None:
    fig = Figure(figsize=(10, 4.2 * len(states)))
    axes = fig.subplots(len(states), 2, squeeze=False)
    for i, state in enumerate(states):
        for j, group in enumerate(GROUPS):
            ax = axes[i][j]
            for name in ESTIMATORS:
                mine = [r for r in rows if r["state"] == state and r["estimator"] == name]
                ax.plot([r["k"] for r in mine], [r[group] for r in mine], "o-",
                        color=COLOURS[name], label=name)
            ks = sorted({r["k"] for r in rows})
            anchor = next(r[group] for r in rows if r["state"] == state
                          and r["estimator"] == "iwae" and r["k"] == ks[0])
            for power, style, label in ((-0.5, ":", "1/sqrt(k)"), (0.5, "--", "sqrt(k)")):
                ax.plot(ks, [anchor * (k / ks[0]) ** power for k in ks], style, color="grey",
                        label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("k (particles)")
            ax.set_ylabel("gradient SNR, mean |E g| / std g")
            ax.set_title(f"{group}, {state} weights")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write(rows, args, out: Path, minutes: float, data) -> None:
    with open(out / "snr.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["state", "estimator", "k", "encoder", "decoder"])
        writer.writeheader()
        writer.writerows(rows)
    states = [s for s in ("initial", "trained") if any(r["state"] == s for r in rows)]
    plot(rows, out / "snr_vs_k.png", states)
    ks = sorted({r["k"] for r in rows})
    lines = ["# Gradient SNR against k", "",
             f"Written by `experiments/gradient_snr.py{' --quick' if args.quick else ''}` in "
             f"{minutes:.1f} min. The IWAE paper's model (784-200-200-50 tanh, Bernoulli), one "
             f"batch of {args.batch} training images of dynamically binarized MNIST (one fixed "
             f"binarization), {args.draws} gradient draws per point; SNR = |E g| / std g per "
             "parameter, averaged over the encoder's (guide) or the decoder's (model) "
             f"parameters. `initial`: the shared initial weights (seed {args.seed}); "
             f"`trained`: after {args.epochs} epoch(s) of the VAE (`meanfield`, k = 1) on "
             f"{data.x_train.shape[0]} images.", "",
             "| weights | estimator | " + " | ".join(f"k={k} enc / dec" for k in ks) + " |",
             "|---|---|" + "---|" * len(ks)]
    for state in states:
        for name in ESTIMATORS:
            cells = []
            for k in ks:
                r = next(r for r in rows
                         if (r["state"], r["estimator"], r["k"]) == (state, name, k))
                cells.append(f"{r['encoder']:.3g} / {r['decoder']:.3g}")
            lines.append(f"| {state} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "## What the numbers say", "",
              "Slopes of log SNR against log k (least squares over k = "
              f"{', '.join(map(str, ks))}); Rainforth et al. predict -0.5 for IWAE's encoder "
              "and +0.5 for its decoder; Tucker et al. report a rising encoder SNR for DReG.", ""]
    trend = lambda b: "rises" if b > 0.05 else "falls" if b < -0.05 else "stays flat"  # noqa: E731
    predicted = {("iwae", "encoder"): "falls", ("iwae", "decoder"): "rises",
                 ("iwae-dreg", "encoder"): "rises"}
    for state in states:
        for name in ESTIMATORS:
            parts = []
            for group in GROUPS:
                b = slope(rows, state, name, group)
                said = predicted.get((name, group))
                check = (f", {'as' if trend(b) == said else 'unlike'} predicted ({said})"
                         if said else "")
                parts.append(f"{group} SNR {trend(b)} (slope {b:+.2f}{check})")
            lines.append(f"- {state}, {name}: " + "; ".join(parts) + ".")
        first, last = ks[0], ks[-1]
        get = lambda n, k, s=state: next(  # noqa: E731
            r for r in rows if (r["state"], r["estimator"], r["k"]) == (s, n, k))
        lines.append(f"- {state}: at k = {last}, the encoder SNR of iwae-dreg is "
                     f"{get('iwae-dreg', last)['encoder'] / get('iwae', last)['encoder']:.3g} "
                     f"times iwae's (at k = {first}: "
                     f"{get('iwae-dreg', first)['encoder'] / get('iwae', first)['encoder']:.3g});"
                     " their decoder gradients are the same estimator (DReG changes only the "
                     "guide's), so their decoder SNRs differ only by the draws.")
    lines += ["", "![SNR against k](snr_vs_k.png)", ""]
    (out / "README.md").write_text("\n".join(lines))


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ks", type=int, nargs="+", default=list(KS))
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10, help="training of the trained checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="default: results/estimators/gradient_snr/, or "
                   "runs/quick/estimators/gradient_snr/ with --quick")
    p.add_argument("--quick", action="store_true", help="tiny budgets (tests)")
    args = p.parse_args()
    args.out = args.out or Path("runs/quick" if args.quick else "results", "estimators",
                                "gradient_snr")
    if min(args.ks) < 1 or args.draws < 2 or args.epochs < 1:
        p.error("--ks must be at least 1, --draws at least 2, --epochs at least 1")
    return args


def main() -> None:
    args = arguments()
    start = time.perf_counter()
    pyro.enable_validation(False)
    logging.getLogger("pyro").setLevel(logging.WARNING)
    data = load_dataset("mnist-binary")
    if args.quick:
        data = data.subset(train=500, test=100)
        args.ks, args.draws, args.batch, args.epochs = [1, 5], 4, 20, 1
    args.out.mkdir(parents=True, exist_ok=True)
    x = next(data.eval_batches("train", args.batch))

    pyro.set_rng_seed(args.seed)
    vae = VAE(**NETWORK)
    pyro.clear_param_store()
    rows = measure(vae, x, args.ks, args.draws, "initial")
    run_dir = args.out / "runs" / f"meanfield-{args.epochs}-epochs"
    config = Config(dataset="mnist-binary", elbo="meanfield", optimizer="adam", lr=1e-3,
                    batch_size=100, epochs=args.epochs, seed=args.seed, jit=True)
    pyro.set_rng_seed(args.seed)
    vae = VAE(**NETWORK)
    fit(vae.model, vae.guide, data, config, run_dir, resume=(run_dir / "checkpoint.pt").exists(),
        quiet=True)
    rows += measure(vae, x, args.ks, args.draws, "trained")
    write(rows, args, args.out, (time.perf_counter() - start) / 60, data)
    print(f"wrote {args.out}/README.md, snr.csv, snr_vs_k.png in "
          f"{(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
