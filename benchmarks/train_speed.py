"""Training speed: ``pyro_vae.fit`` against a hand-written PyTorch VAE, side by side.

    .venv/bin/python benchmarks/train_speed.py [--batch-size 256] [--z-dim 50] [--hidden 400]
        [--activation softplus] [--particles 5] [--examples N] [--rounds 5] [--rows bncde]
        [--compile] [--device cpu] [--threads 2] [--check]

Times an MNIST epoch (dynamically binarized, 784-H...-Z MLPs, Bernoulli likelihood, Adam lr
1e-3), alternating in one process, ``--rounds`` times each, of a plain PyTorch loop written
below (encoder, reparameterized sample, decoder, binary cross-entropy with logits, KL or
importance weights, ``torch.optim.Adam``) against ``pyro_vae.fit``, row by row. Each side
trains two epochs and the second is timed: the steady state of a run. The first epoch of
``fit`` also captures its step (once per batch shape: the full batches and the last, smaller
one), and with ``--compile`` compiles it; that one-time cost is printed in its own column,
seconds of ``fit``'s first epoch over its second.

(b) ``meanfield`` (KL in closed form), ``fit``'s captured step (eager; through
    ``torch.compile`` with ``--compile``), against (a) the plain loop with the KL in
    closed form;
(n) the same stepped by Pyro itself (``jit=False``);
(c) ``trace`` (KL by sampling) against a plain loop with log q(z|x) - log p(z);
(d) ``meanfield`` and (e) ``trace`` with ``--particles`` vectorized particles, against a
    plain loop that draws as many samples per example and averages their bounds;
(i) ``iwae`` and (r) ``iwae-dreg`` with k = ``--particles``, against a plain IWAE loop and a
    plain DReG loop (Tucker et al., 2019: the guide's gradient weighted by the squared
    normalized weights, through a gradient hook on the draws, the model's by the weights).

Each round of each row starts both loops from the same initial parameters and seed, and the
plain loop draws its noise in Pyro's order, so each pair computes the same first epoch: the
benchmark exits with status 1 if a pair's first-epoch losses differ by more than
``--tolerance`` nats per example. (The second epochs differ a little: ``fit``'s test loss
between them draws from the same random stream.) It prints each row's medians and the ratio
fit / plain per round as median [min, max]; ``--check`` exits with status 1 when a row's
median ratio misses its target (``target``, for the compiled engine, ``--compile``): (b) <=
1.05 at batch 256 and <= 1.10 at batch 64; (i) and (r) <= 1.05 at k = 50 and <= 1.10 at
k = 5.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import pyro
import timing  # benchmarks/timing.py
import torch
import torch.nn.functional as F

from pyro_vae import VAE, Config, fit, load_dataset


def target(row: str, batch_size: int, particles: int) -> float | None:
    """The largest median fit / plain a row may reach, or None (no target)."""
    if row == "b":
        return {256: 1.05, 64: 1.10}.get(batch_size)
    if row in "ir":
        return {50: 1.05, 5: 1.10}.get(particles)
    return None


def plain_epochs(vae: VAE, data, config: Config, kind: str) -> list[tuple[float, float]]:
    """``config.epochs`` epochs of the hand-written VAE, starting from ``vae``'s parameters;
    (seconds, mean negative bound per example) of each. ``kind``: ``analytic`` (closed-form
    KL), ``sampled`` (KL by sampling), ``iwae`` or ``dreg``."""
    # plain nn.Sequential MLPs with the VAE's initial weights
    encoder, decoder = copy.deepcopy(vae.encoder.net), copy.deepcopy(vae.decoder.net)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=config.lr,
                                 fused=True)  # as fit builds it
    torch.manual_seed(config.seed)  # as fit does: same batches, binarizations and noise
    generator = torch.Generator(device=config.device).manual_seed(config.seed)
    step = _iwae_step if kind in ("iwae", "dreg") else _plain_step
    epochs = []
    for _ in range(config.epochs):
        total, seen = 0.0, 0
        start = time.perf_counter()
        for x in data.batches("train", config.batch_size, generator):
            loss = step(encoder, decoder, x, config.particles, kind)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.item()
            seen += x.shape[0]
        epochs.append((time.perf_counter() - start, total / seen))
    return epochs


def _plain_step(encoder, decoder, x, s: int, kind: str) -> torch.Tensor:
    """The hand-written VAE's loss of a batch: minus the ELBO averaged over s samples."""
    loc, log_variance = encoder(x).chunk(2, dim=-1)
    scale = (0.5 * log_variance).exp()
    eps = torch.randn(loc.shape if s == 1 else (s, *loc.shape), device=x.device)
    z = loc + scale * eps
    logits = decoder(z)
    reconstruction = F.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="sum")
    if kind == "analytic":
        kl = 0.5 * (loc.square() + scale.square() - 1 - log_variance).sum() * s
    else:  # log q(z|x) - log p(z) at the samples; the log(2 pi) terms cancel
        kl = (0.5 * (z.square() - eps.square()) - scale.log()).sum()
    return (reconstruction + kl) / s


def _iwae_step(encoder, decoder, x, k: int, kind: str) -> torch.Tensor:
    """The hand-written IWAE's loss of a batch, minus the k-sample bound; with ``dreg`` its
    surrogate carries the doubly reparameterized guide gradient, its value the bound."""
    loc, log_variance = encoder(x).chunk(2, dim=-1)
    scale = (0.5 * log_variance).exp()
    eps = torch.randn((k, *loc.shape), device=x.device)
    z = loc + scale * eps  # (k, n, d)
    weights = []
    if kind == "dreg":  # the model sees z through a hook that weighs its gradient by w~
        z_model = z.view_as(z)
        z_model.register_hook(lambda grad: grad * weights[0].unsqueeze(-1))
    else:
        z_model = z
    logits = decoder(z_model)
    # the log-densities written as torch.distributions writes them, in Pyro's order, so
    # that the two loops round alike (an IWAE's trajectory amplifies rounding)
    log_px = (x * logits - F.softplus(logits)).sum(-1)
    half_log_2pi = math.log(math.sqrt(2 * math.pi))
    log_pz = (-(z_model**2) / 2 - half_log_2pi).sum(-1)
    if kind == "dreg":  # log q with its parameters held: the path derivative alone
        loc_q, scale_q = loc.detach(), scale.detach()
    else:
        loc_q, scale_q = loc, scale
    log_q = (-((z - loc_q) ** 2) / (2 * scale_q**2) - scale_q.log() - half_log_2pi).sum(-1)
    log_p = log_pz + log_px
    log_w = log_p - log_q
    bound = torch.logsumexp(log_w, 0) - math.log(k)
    if kind != "dreg":
        return -bound.sum()
    normalized = torch.softmax(log_w.detach(), 0)
    weights.append(normalized)
    surrogate = (normalized * log_p - normalized.square() * log_q).sum(0)
    return -(bound.detach() + surrogate - surrogate.detach()).sum()


def pyro_epochs(vae: VAE, data, config: Config) -> list[tuple[float, float]]:
    """``config.epochs`` epochs of ``pyro_vae.fit``; (seconds of its training loop, its train
    loss) of each."""
    with tempfile.TemporaryDirectory() as run_dir:
        records = fit(vae.model, vae.guide, data, config, run_dir, quiet=True)
    return [(record["seconds"], record["train_loss"]) for record in records]


@dataclass
class Row:
    key: str
    name: str
    estimator: str
    particles: int
    jit: bool
    kind: str  # the plain loop's (plain_epochs)
    plain: list[float] = field(default_factory=list)  # second-epoch seconds
    pyro: list[float] = field(default_factory=list)
    first_extra: list[float] = field(default_factory=list)  # fit's first epoch - its second
    loss_gap: float = 0.0  # first epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--z-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[400],
                   help="hidden layer widths (the IWAE paper's: 200 200)")
    p.add_argument("--activation", default="softplus", help="softplus (ours) or tanh (IWAE)")
    p.add_argument("--particles", type=int, default=5, help="k of rows (d), (e), (i), (r)")
    p.add_argument("--examples", type=int, help="train on the first N training images only")
    timing.add_arguments(p, rounds=5)
    p.add_argument("--rows", default="bncde", help="which rows to run, e.g. 'bn'")
    p.add_argument("--compile", action="store_true",
                   help="fit's captured step through torch.compile (Config(compile=True)) in "
                   "every row but (n)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="largest allowed gap between a pair's epoch losses, nats per example")
    args = p.parse_args()
    timing.pin_threads(args.threads)

    pyro.enable_validation(False)  # as `pyro-vae train` runs; the tests run with it on
    logging.getLogger("pyro").setLevel(logging.WARNING)  # not "Guessed max_plate_nesting"
    data = load_dataset("mnist-binary").to(args.device)
    if args.examples is not None:
        data = data.subset(train=args.examples)
    k = args.particles
    known = {
        "b": Row("b", "(b) meanfield", "meanfield", 1, jit=True, kind="analytic"),
        "n": Row("n", "(n) meanfield, eager Pyro", "meanfield", 1, jit=False, kind="analytic"),
        "c": Row("c", "(c) trace", "trace", 1, jit=True, kind="sampled"),
        "d": Row("d", f"(d) meanfield x{k}", "meanfield", k, jit=True, kind="analytic"),
        "e": Row("e", f"(e) trace x{k}", "trace", k, jit=True, kind="sampled"),
        "i": Row("i", f"(i) iwae k={k}", "iwae", k, jit=True, kind="iwae"),
        "r": Row("r", f"(r) iwae-dreg k={k}", "iwae-dreg", k, jit=True, kind="dreg"),
    }
    unknown = sorted(set(args.rows) - set(known))
    if unknown:
        p.error(f"unknown rows {unknown}; choose from: {', '.join(known)}")
    rows = [known[r] for r in known if r in args.rows]
    layers = "-".join(map(str, [784, *args.hidden, args.z_dim]))
    print(f"fit {'compiled' if args.compile else 'captured, eager'}; "
          f"second of two epochs of {data.x_train.shape[0]} examples, batch {args.batch_size}, "
          f"{layers} {args.activation}, {args.device}, "
          f"torch {torch.__version__}, pyro {pyro.__version__}, "
          f"{timing.machine()}", flush=True)
    for r in range(1, args.rounds + 1):
        for row in rows:
            config = Config(dataset=data.name, elbo=row.estimator, particles=row.particles,
                            jit=row.jit, compile=args.compile and row.jit,
                            batch_size=args.batch_size,
                            epochs=2, lr=1e-3, device=args.device)
            # alternate which goes first, so that neither always runs on a warm cache
            if r % 2:
                plain = plain_epochs(_network(args, config), data, config, row.kind)
                ours = pyro_epochs(_network(args, config), data, config)
            else:
                ours = pyro_epochs(_network(args, config), data, config)
                plain = plain_epochs(_network(args, config), data, config, row.kind)
            (_, l_plain), (t_plain, _) = plain
            (t_first, l_pyro), (t_pyro, _) = ours
            row.plain.append(t_plain)
            row.pyro.append(t_pyro)
            row.first_extra.append(t_first - t_pyro)
            row.loss_gap = max(row.loss_gap, abs(l_plain - l_pyro))
            print(f"round {r}  {row.name:24s} plain {t_plain:6.2f} s  fit {t_pyro:6.2f} s  "
                  f"(first epoch {t_first:5.2f} s)  first-epoch loss {l_plain:.4f} / {l_pyro:.4f}",
                  flush=True)

    print(f"\nbatch {args.batch_size}, {args.rounds} rounds; {timing.machine()}")
    print(f"{'row':24s} {'plain s':>8s} {'fit s':>8s}  fit / plain per round, median [min, max]"
          f"  {'loss gap':>9s}  fit's first epoch, extra s")
    failed, ratios = [], {}
    for row in rows:
        plain, ours = statistics.median(row.plain), statistics.median(row.pyro)
        per_round = [f / q for f, q in zip(row.pyro, row.plain, strict=True)]
        goal = target(row.key, args.batch_size, row.particles) if args.compile else None
        ratios[row.name] = (per_round, goal)
        print(f"{row.name:24s} {plain:8.3f} {ours:8.3f}  {timing.spread(per_round):31s}"
              f"  {row.loss_gap:9.4f}  {statistics.median(row.first_extra):+.3f}")
        if row.loss_gap > args.tolerance:
            failed.append(row.name)
    if failed:
        sys.exit(f"the first-epoch losses of {', '.join(failed)} differ by more than "
                 f"{args.tolerance} nats per example: the two loops do not compute the same thing")
    timing.verdict(ratios, args.check)


def _network(args, config: Config) -> VAE:
    """The same freshly initialized VAE every time (fit trains its argument in place)."""
    torch.manual_seed(config.seed)
    return VAE(784, args.z_dim, args.hidden, args.activation).to(config.device)


if __name__ == "__main__":
    main()
