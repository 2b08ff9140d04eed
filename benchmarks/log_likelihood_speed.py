"""How close is the IS-K log-likelihood to the bare cost of its matrix products?

    .venv/bin/python benchmarks/log_likelihood_speed.py [--run RUN_DIR] [--examples 20]
        [--rounds 15] [--threads 2] [--check]

Times, alternating in one process, on the same K x N latent codes in the same chunks:
(a) the decoder's forward pass alone, in plain PyTorch (the bare matrix products);
(b) (a) plus the Bernoulli log-mass x*l - softplus(l) summed per code, in plain PyTorch: the
    floor of any exact evaluation, since it needs one softplus per pixel per code;
(c) ``pyro_vae.log_likelihood`` with K samples for N examples (guide, prior, decoder,
    likelihood, Pyro traces, log-mean-exp).
Each round times the three in a rotating order; it prints the medians, codes per second, and
the ratios (c)/(a) and (c)/(b) per round as median [min, max]. ``--check`` exits with status
1 when the median of (c)/(b) is above its target, 1.10: what ``log_likelihood`` adds to the
floor that any exact evaluator pays. (The log-mass alone costs 0.17-0.25x of the matrix
products on a CPU, so (c)/(a) has no target.) The model is the core issue's VAE
(784-400-50, Bernoulli), freshly initialized unless --run names a run.
"""

import argparse
import statistics
import time

import pyro
import timing  # benchmarks/timing.py
import torch
import torch.nn.functional as F

from pyro_vae import VAE, load_dataset, load_run
from pyro_vae.evaluate import chunk_shape, log_likelihood
from pyro_vae.memory import reuse_freed_memory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a trained run directory (default: a fresh 784-400-50 VAE)")
    p.add_argument("--examples", type=int, default=20, help="N test examples")
    p.add_argument("--is-samples", type=int, default=5000, help="K samples per example")
    p.add_argument("--memory-mb", type=float, default=64)
    timing.add_arguments(p, rounds=15)
    args = p.parse_args()
    timing.pin_threads(args.threads)

    if args.run:
        _, vae, data = load_run(args.run)
    else:
        data = load_dataset("mnist-binary")
        vae = VAE(x_dim=784, z_dim=50, hidden=(400,))
    pyro.enable_validation(False)  # as in any timed evaluation; the tests run with it on
    reuse_freed_memory()  # as log_likelihood does, so that every row runs on the same heap
    x = torch.cat(list(data.eval_batches("test", 1000)))[: args.examples]
    n, k = x.shape[0], args.is_samples
    n_chunk, k_chunk = chunk_shape(k, x.shape[1], args.memory_mb)
    n_chunk = min(n_chunk, n)  # as log_likelihood slices them
    z = torch.randn(k_chunk, n_chunk, vae.z_dim)
    x_chunk = x[:n_chunk]
    chunks = -(-n // n_chunk) * -(-k // k_chunk)

    @torch.no_grad()
    def bare() -> None:
        for _ in range(chunks):
            vae.decoder(z)

    @torch.no_grad()
    def bare_log_mass() -> None:
        for _ in range(chunks):
            logits = vae.decoder(z)
            F.softplus(logits).neg_().addcmul_(x_chunk, logits).sum(-1)

    def ours() -> None:
        log_likelihood(vae.model, vae.guide, x, num_samples=k, memory_mb=args.memory_mb)

    runs = {"(a) bare decoder": bare, "(b) + log-mass": bare_log_mass, "(c) log_likelihood": ours}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    names = list(runs)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[: r % 3]:  # each goes first in turn
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)

    codes = n * k
    print(f"K = {k} samples x N = {n} examples = {codes:,} latent codes; chunks of "
          f"{k_chunk} x {n_chunk} ({args.memory_mb:g} MB); {args.rounds} rotating rounds")
    print(timing.machine())
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"  {name:20s} {median:8.3f} s   {codes / median:12,.0f} codes/s")
    a, b, c = times.values()
    over_a = [ci / ai for ai, ci in zip(a, c, strict=True)]
    over_b = [ci / bi for bi, ci in zip(b, c, strict=True)]
    print(f"ratio per round, median [min, max]:\n"
          f"  (c)/(a), log_likelihood / bare decoder:     {timing.spread(over_a)}\n"
          f"  (c)/(b), log_likelihood / bare + log-mass:  {timing.spread(over_b)}")
    timing.verdict({"(c)/(b)": (over_b, 1.10)}, args.check)


if __name__ == "__main__":
    main()
