"""What both benchmarks share: pinned threads, per-round ratios with their spread, and the
``--check`` verdict.

A ratio is taken *per round* (the two sides of a round run back to back, so a slow minute
of this shared machine slows both), and a row is judged by the median of its rounds' ratios;
min and max are printed beside it so that a reader sees how much the hour moved it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch


def add_arguments(p: argparse.ArgumentParser, rounds: int) -> None:
    p.add_argument("--rounds", type=int, default=rounds, help="alternating rounds per row")
    p.add_argument("--threads", type=int, default=2,
                   help="torch's intra-op threads, pinned (2: the development machine's cores)")
    p.add_argument("--check", action="store_true",
                   help="exit with status 1 when a row's median ratio misses its target")


def pin_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def machine() -> str:
    """A line naming torch's threads and the machine's load now."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{torch.get_num_threads()} threads pinned of {os.cpu_count()} cores, "
            f"load average {load} (1, 5, 15 min)")


def spread(ratios: list[float]) -> str:
    """``median [min, max]`` of per-round ratios."""
    return f"{statistics.median(ratios):6.3f} [{min(ratios):.3f}, {max(ratios):.3f}]"


def verdict(rows: dict[str, tuple[list[float], float | None]], check: bool) -> None:
    """Print each targeted row's median ratio against its target; with ``check``, exit with
    status 1 if any misses. ``rows``: name -> (per-round ratios, target or None)."""
    missed = []
    for name, (ratios, target) in rows.items():
        if target is None:
            continue
        median = statistics.median(ratios)
        ok = median <= target
        print(f"{'ok    ' if ok else 'MISSED'} {name}: median {median:.3f}, target <= {target}")
        if not ok:
            missed.append(name)
    if check and missed:
        sys.exit(f"--check: {len(missed)} row(s) missed their target: {', '.join(missed)}")
