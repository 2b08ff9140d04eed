"""Throughput of `pyro-vae train` under torchrun: training examples per second at 1 and 2
processes on this machine, for ``meanfield`` (784-400-50, batch 256) and ``iwae`` k = 50
(the IWAE paper's 784-200-200-50 tanh, batch 100).

The data are the first ``--examples`` MNIST training images, binarized once (pixels above
0.5), in a ``.npz``; each row runs ``--epochs`` epochs and is timed by the seconds of all
epochs but the first (which captures the step), summed over processes' shared wall clock
(the run's own per-epoch seconds). The cores are shared out: P processes get
``--threads / P`` torch threads each, so every row uses the same cores, and the ratio says
what splitting the batch over processes costs or gains against threads inside one.

What a step pays for being split: each process runs the whole optimizer update, and the
gradient (every parameter, one flat float32 buffer) is summed by one gloo ``all_reduce``
a step, plus two all-reduces of one number (the loss; the stop flag of preemption). The last
line of each row times that gradient all-reduce alone, two processes of one thread, so
that the step's extra milliseconds can be read against it.

    .venv/bin/python benchmarks/distributed_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import timing
import torch

from pyro_vae import load_dataset

ROWS = {
    "meanfield": ["--elbo", "meanfield", "--z-dim", "50", "--hidden", "400",
                  "--batch-size", "256"],
    "iwae k=50": ["--elbo", "iwae", "--particles", "50", "--z-dim", "50", "--hidden", "200",
                  "200", "--activation", "tanh", "--batch-size", "100"],
}


def run(data: Path, out: Path, processes: int, options: list[str], args) -> tuple[float, int]:
    """Examples per second of epochs 2.. of one torchrun launch, and the number of
    parameters (floats) the run trained."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "pyro_vae.cli", "train",
               "--dataset", str(data), "--likelihood", "bernoulli", *options,
               "--epochs", str(args.epochs), "--seed", "0", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // processes))}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"torchrun with {processes} process(es) failed:\n{result.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(m["seconds"] for m in metrics[1:])
    params = torch.load(out / "checkpoint.pt", weights_only=True)["params"]
    numel = sum(p.numel() for p in params.values())
    return (len(metrics) - 1) * args.train / seconds, numel


ALL_REDUCE = """
import os, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
flat = torch.randn({numel})
for _ in range(5):
    dist.all_reduce(flat)
start = time.perf_counter()
for _ in range({repeats}):
    dist.all_reduce(flat)
if dist.get_rank() == 0:
    print((time.perf_counter() - start) / {repeats} * 1e3)
dist.destroy_process_group()
"""


def all_reduce_ms(numel: int, repeats: int = 100) -> float:
    """Milliseconds of one gloo all_reduce of ``numel`` float32 between 2 processes."""
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:
        script.write(ALL_REDUCE.format(numel=numel, repeats=repeats))
        script.flush()
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc-per-node=2", script.name], capture_output=True, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        sys.exit(f"the all_reduce timing failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.add_arguments(p, rounds=2)
    p.add_argument("--examples", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        x = load_dataset("mnist").x_train[: args.examples].numpy()
        binary = np.where(x > 0.5, 255, 0).astype(np.uint8).reshape(-1, 28, 28)
        np.savez(tmp / "mnist.npz", x=binary)
        args.train = args.examples - args.examples // 10  # load_dataset holds out the last 10%
        print(f"{args.examples:,} binarized MNIST images ({args.train:,} trained on), epochs "
              f"2-{args.epochs} timed; {args.threads} threads shared out; {timing.machine()}")
        rows = {}
        for name, options in ROWS.items():
            speeds = {1: [], 2: []}
            for r in range(args.rounds):
                for processes in (1, 2) if r % 2 == 0 else (2, 1):
                    speed, numel = run(tmp / "mnist.npz",
                                       tmp / f"{name}-{r}-{processes}".replace(" ", ""),
                                       processes, options, args)
                    speeds[processes].append(speed)
            ratios = [b / a for a, b in zip(speeds[1], speeds[2], strict=True)]
            rows[name] = (ratios, None)
            batch = int(options[options.index("--batch-size") + 1])
            step_ms = {p: batch / np.median(v) * 1e3 for p, v in speeds.items()}
            print(f"{name:10s}  1 process x {args.threads} threads "
                  f"{np.median(speeds[1]):8.0f} examples/s   2 processes x "
                  f"{max(1, args.threads // 2)} thread(s) {np.median(speeds[2]):8.0f} examples/s   "
                  f"2 / 1 per round: {timing.spread(ratios)}", flush=True)
            print(f"{'':10s}  a step of {batch}: {step_ms[1]:.1f} ms in 1 process, "
                  f"{step_ms[2]:.1f} ms in 2; one all_reduce of its {numel:,}-float gradient "
                  f"between 2 processes: {all_reduce_ms(numel):.1f} ms", flush=True)
        print(timing.machine())
    timing.verdict(rows, args.check)


if __name__ == "__main__":
    main()
