"""What ``torch.compile`` would give in place of ``torch.jit.trace``, step by step.

    .venv/bin/python benchmarks/compile_speed.py [--batch-size 256] [--steps 200] [--rounds 5]

``torch.jit.trace`` (TorchScript), which ``Compiled`` builds on, is deprecated since torch
2.11 in favour of ``torch.compile``/``torch.export``. This times one training step (784-400-50
softplus MLPs, Bernoulli, Adam 1e-3, the mean-field loss with the KL in closed form) five ways,
alternating, on the same batch, and prints milliseconds per step, medians of ``--rounds``:

(plain)        a hand-written PyTorch step, eager;
(plain+c)      the same with its loss function under ``torch.compile`` (inductor);
(pyro)         Pyro's ``TraceMeanField_ELBO``, eager (``pyro-vae train --no-jit``);
(pyro+jit)     ``pyro_vae.estimators.Compiled``: Pyro's JIT trace, replayed (the default);
(pyro+c)       Pyro's ``TraceMeanField_ELBO.differentiable_loss`` under ``torch.compile``.

The compile rows also print their first call's seconds (the compilation) and how many
graphs Dynamo made of the loss (more than one means graph breaks).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings

import pyro
import timing  # benchmarks/timing.py
import torch
import torch.nn.functional as F
from pyro.infer import TraceMeanField_ELBO

from pyro_vae import VAE, make_elbo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=200, help="steps per timed round")
    timing.add_arguments(p, rounds=5)
    args = p.parse_args()
    timing.pin_threads(args.threads)
    warnings.simplefilter("ignore")  # TorchScript's deprecation, Dynamo's graph-break advice
    torch._logging.set_logs(dynamo=logging.ERROR)  # and its recompilation notices
    pyro.enable_validation(False)
    torch.manual_seed(0)
    vae = VAE(784, 50, [400], "softplus")
    x = torch.bernoulli(torch.full((args.batch_size, 784), 0.13))
    model, guide = vae.model, vae.guide

    # the plain step, eager and compiled
    encoder, decoder = copy.deepcopy(vae.encoder.net), copy.deepcopy(vae.decoder.net)
    plain_params = [*encoder.parameters(), *decoder.parameters()]
    plain_optimizer = torch.optim.Adam(plain_params, lr=1e-3, fused=True)

    def plain_loss(x):
        loc, log_variance = encoder(x).chunk(2, dim=-1)
        scale = (0.5 * log_variance).exp()
        logits = decoder(loc + scale * torch.randn_like(loc))
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        return reconstruction + 0.5 * (loc.square() + scale.square() - 1 - log_variance).sum()

    compiled_plain_loss = torch.compile(plain_loss)

    def plain_step(loss_fn):
        def step():
            loss = loss_fn(x)
            loss.backward()
            plain_optimizer.step()
            plain_optimizer.zero_grad(set_to_none=True)
            return loss.item()
        return step

    # the Pyro steps: one optimizer over the param store, as fit builds it
    make_elbo("meanfield").loss(model, guide, x)  # declares the parameters
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    eager, jit = TraceMeanField_ELBO(), make_elbo("meanfield", jit=True)
    compiled_pyro_loss = torch.compile(lambda x: eager.differentiable_loss(model, guide, x))

    def pyro_step(loss_and_grads):
        def step():
            loss = loss_and_grads(x)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss
        return step

    def backward(loss):
        loss.backward()
        return loss.item()

    rows = {
        "(plain)": plain_step(plain_loss),
        "(plain+c)": plain_step(compiled_plain_loss),
        "(pyro)": pyro_step(lambda x: eager.loss_and_grads(model, guide, x)),
        "(pyro+jit)": pyro_step(lambda x: jit.loss_and_grads(model, guide, x)),
        "(pyro+c)": pyro_step(lambda x: backward(compiled_pyro_loss(x))),
    }
    first = {}
    for name, step in rows.items():
        start = time.perf_counter()
        step()
        first[name] = time.perf_counter() - start
        for _ in range(10):
            step()
    graphs = {}
    for name, fn in (("(plain+c)", compiled_plain_loss), ("(pyro+c)", compiled_pyro_loss)):
        try:
            explanation = torch._dynamo.explain(fn)(x)
            graphs[name] = (f"{explanation.graph_count} graph(s), "
                            f"{explanation.graph_break_count} break(s)")
        except Exception as e:  # explain itself may fail where compile does not
            graphs[name] = f"explain failed: {type(e).__name__}"

    times = {name: [] for name in rows}
    names = list(rows)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(args.steps):
                rows[name]()
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)

    print(f"batch {args.batch_size}, {args.steps} steps x {args.rounds} rotating rounds, "
          f"torch {torch.__version__}, pyro {pyro.__version__}; {timing.machine()}")
    plain = times["(plain)"]
    print(f"{'row':12s} {'ms/step':>8s}  {'/ plain per round, median [min, max]':38s} first call")
    for name, ts in times.items():
        ratios = [t / q for t, q in zip(ts, plain, strict=True)]
        print(f"{name:12s} {statistics.median(ts):8.3f}  {timing.spread(ratios):38s} "
              f"{first[name]:6.1f} s  {graphs.get(name, '')}")


if __name__ == "__main__":
    main()
