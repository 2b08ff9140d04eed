"""Helpers of the tests that stop a short run and resume it (test_faults, test_preemption):
its tiny data, and what a run ends with, to compare with the uninterrupted run's."""

import json
from pathlib import Path

import numpy as np
import torch

from pyro_vae.rundir import METRICS, load_checkpoint


def tiny_npz(folder: Path) -> Path:
    """64 + 16 random binary 8x8 images in ``folder/tiny.npz``: a run of two epochs takes a
    fraction of a second."""
    g = torch.Generator().manual_seed(0)
    images = lambda n: ((torch.rand(n, 8, 8, generator=g) < 0.3) * 255).to(torch.uint8)  # noqa: E731
    path = folder / "tiny.npz"
    np.savez(path, x=images(64).numpy(), x_test=images(16).numpy())
    return path


def timeless(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "seconds"}


def run_state(run: Path):
    """What a run ends with: its checkpoint's epoch and parameters, its metrics without the
    seconds they took."""
    state = load_checkpoint(run)
    metrics = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    return state["epoch"], state["params"], [timeless(m) for m in metrics]


def same(a, b) -> bool:
    (epoch_a, params_a, metrics_a), (epoch_b, params_b, metrics_b) = a, b
    return (epoch_a == epoch_b and metrics_a == metrics_b and params_a.keys() == params_b.keys()
            and all(torch.equal(params_a[k], params_b[k]) for k in params_a))
