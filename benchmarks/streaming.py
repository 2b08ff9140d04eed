"""Data larger than memory: peak resident memory of `pyro-vae train --stream` on a generated
array of 1,000,000 MNIST-sized images, and the streamed epoch's seconds against the in-memory
path's on a subset both can hold.

The array is binarized MNIST (pixels above 127 set to 255, the rest 0, so that the Bernoulli
likelihood is normalized), its 60,000 training images drawn with replacement (seed 0) into
an (N, 28, 28) uint8 ``.npy``: 784 MB at N = 1,000,000. Held as float32 it would be 3.1 GB.

1. **Memory.** One epoch of ``pyro-vae train --dataset big.npy --stream`` runs in a child
   process, which writes its own peak resident set size as it ends (``VmHWM`` of
   ``/proc/self/status``, Linux; ``ru_maxrss`` would count this benchmark's memory too, as
   the child had it before ``exec``): the interpreter and torch (about 0.9 GB for the CUDA
   build), the model, a batch, and any pages of the memory map left resident (file-backed
   pages count). The same epoch with ``--no-stream`` is printed beside it. Target: streamed
   < 1.5 GB.
2. **Speed.** On the first ``--subset`` images (a second ``.npy``), ``--epochs`` epochs with
   ``--stream`` and as many with ``--no-stream`` per round, which goes first alternating by
   round; the ratio is of the seconds of all epochs but the first (which captures the step).
   The two must give the same losses (the same batches). Target: streamed / in memory
   <= 1.2.

    .venv/bin/python benchmarks/streaming.py --check
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

from pyro_vae import load_dataset

MEMORY_TARGET = 1.5e9  # bytes of peak resident memory, streamed
SPEED_TARGET = 1.2  # streamed epoch / in-memory epoch


def generate(path: Path, n: int) -> None:
    """An (n, 28, 28) uint8 array of binarized MNIST training images drawn with replacement,
    written a chunk at a time (never held whole)."""
    mnist = load_dataset("mnist").x_train.reshape(-1, 28, 28)
    binary = np.where(mnist.numpy() > 127 / 255, 255, 0).astype(np.uint8)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 28, 28))
    rng = np.random.default_rng(0)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        out[start:stop] = binary[rng.integers(0, len(binary), stop - start)]
    out.flush()
    del out


# `pyro-vae train`, then the process's own peak resident kB written to the file $PEAK_KB
CHILD = """import os, re, sys
from pyro_vae.cli import main
code = main()
status = open("/proc/self/status").read()
open(os.environ["PEAK_KB"], "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
sys.exit(code)"""


def train(data: Path, out: Path, stream: bool, epochs: int, args) -> tuple[int, list[dict]]:
    """``pyro-vae train`` in a child process: its peak resident bytes and its metrics."""
    peak = out.with_name(out.name + ".peak")
    command = [sys.executable, "-c", CHILD, "train", "--dataset", str(data),
               "--stream" if stream else "--no-stream",
               "--likelihood", "bernoulli", "--elbo", "meanfield", "--z-dim", "50",
               "--hidden", "400", "--batch-size", str(args.batch_size), "--epochs", str(epochs),
               "--seed", "0", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PEAK_KB": str(peak)}
    code = subprocess.run(command, env=env).returncode
    if code != 0:
        sys.exit(f"pyro-vae train ({'--stream' if stream else '--no-stream'}) on {data} "
                 f"exited with {code}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return int(peak.read_text()) * 1024, [m for m in metrics if "train_loss" in m]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    timing.add_arguments(p, rounds=5)
    p.add_argument("--examples", type=int, default=1_000_000, help="images in the big array")
    p.add_argument("--subset", type=int, default=100_000, help="images in the speed rows")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each speed run (>= 2)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dir", type=Path, help="where the arrays go (default: a temporary folder)")
    args = p.parse_args()
    timing.pin_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        big, small = tmp / "big.npy", tmp / "subset.npy"
        generate(big, args.examples)
        np.save(small, np.load(big, mmap_mode="r")[: args.subset])
        print(f"{args.examples:,} images of 28x28, uint8: {big.stat().st_size / 1e6:.0f} MB "
              f"({args.examples * 784 * 4 / 1e9:.2f} GB as float32); meanfield, 784-400-50, "
              f"batch {args.batch_size}; {timing.machine()}")

        rss = {}
        for stream in (True, False):
            rss[stream], metrics = train(big, tmp / f"memory-{stream}", stream, 1, args)
            print(f"  one epoch, {'--stream   ' if stream else '--no-stream'}: peak resident "
                  f"{rss[stream] / 1e9:.2f} GB, epoch {metrics[0]['seconds']:.1f} s, "
                  f"train loss {metrics[0]['train_loss']:.4f}", flush=True)

        ratios = []
        for r in range(args.rounds):
            seconds, losses = {}, {}
            for stream in (True, False) if r % 2 == 0 else (False, True):
                _, metrics = train(small, tmp / f"speed-{r}-{stream}", stream, args.epochs, args)
                seconds[stream] = sum(m["seconds"] for m in metrics[1:])
                losses[stream] = [(m["train_loss"], m["test_loss"]) for m in metrics]
            if losses[True] != losses[False]:
                sys.exit(f"streamed and in-memory losses differ: {losses[True]} against "
                         f"{losses[False]}: the two paths did not step through the same batches")
            ratios.append(seconds[True] / seconds[False])
            print(f"round {r + 1}  {args.subset:,} images  streamed {seconds[True]:6.2f} s  "
                  f"in memory {seconds[False]:6.2f} s  (epochs 2-{args.epochs}; losses equal)",
                  flush=True)
        print(f"{timing.machine()}")
        print(f"streamed / in memory, epochs 2-{args.epochs}, median [min, max]: "
              f"{timing.spread(ratios)}")
    timing.verdict({"streamed epoch / in-memory epoch": (ratios, SPEED_TARGET),
                    "streamed peak resident GB": ([rss[True] / 1e9], MEMORY_TARGET / 1e9)},
                   args.check)


if __name__ == "__main__":
    main()
