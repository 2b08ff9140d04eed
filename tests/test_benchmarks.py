"""The benchmarks' verdict logic, and each benchmark script once on a tiny setting (a smoke
test: the speed itself is measured by `make bench`, never by a test)."""

import runpy
import sys
from unittest import mock

import pytest
import torch
from scripts import ROOT, load_script

timing = load_script(ROOT / "benchmarks" / "timing.py")


def test_check_fails_only_a_row_whose_median_misses_its_target(capsys):
    rows = {"fast": ([1.0, 1.5, 1.05], 1.10), "untargeted": ([9.0], None)}
    timing.verdict(rows, check=True)  # median 1.05: passes, and nothing else is judged
    assert "ok     fast: median 1.050" in capsys.readouterr().out
    rows["slow"] = ([1.2, 1.31, 1.4], 1.30)
    timing.verdict(rows, check=False)  # reported, not fatal
    assert "MISSED slow: median 1.310" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="1 row\\(s\\) missed their target: slow"):
        timing.verdict(rows, check=True)


def test_spread_is_median_min_max():
    assert timing.spread([1.2, 1.0, 1.1]).split() == ["1.100", "[1.000,", "1.200]"]


def _run(script: str, *options: str) -> None:
    """Run a benchmark as __main__ in this process; the threads it pins are given back."""
    path = ROOT / "benchmarks" / script
    threads = torch.get_num_threads()
    try:
        with mock.patch.object(sys, "argv", [str(path), *options]), mock.patch.object(
                sys, "path", [str(path.parent), *sys.path]):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("mnist_binary")
def test_log_likelihood_benchmark_runs(capsys):
    _run("log_likelihood_speed.py", "--examples", "2", "--is-samples", "50", "--rounds", "2")
    out = capsys.readouterr().out
    assert "(c)/(a), log_likelihood / bare decoder:" in out and "threads pinned" in out


def test_the_gpu_check_script_parses_and_names_each_check():
    import subprocess

    script = ROOT / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for check in ("train-captured", "train-eager", "train-torch-compile", "captured-is-eager",
                  "step-speed", "resume-bit-exact", "evaluate-is-ais",
                  "plot-2d-latent", "open-on-cpu", "conv-network", "torchrun-nccl-2",
                  "test-cuda"):
        assert check in text


@pytest.mark.usefixtures("mnist_binary")
def test_the_iwae_rows_compute_what_their_plain_loops_compute(capsys):
    # the benchmark exits non-zero when a pair's first-epoch losses differ: the hand-written
    # IWAE and DReG loops are the estimators' own, draw for draw
    _run("train_speed.py", "--batch-size", "50", "--hidden", "16", "--z-dim", "4",
         "--activation", "tanh", "--examples", "200", "--rows", "ir", "--particles", "3",
         "--rounds", "1")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("(i) iwae", "(r) iwae-dreg"))]
    assert len(rows) == 2 and all(float(line.split()[-2]) < 1e-3 for line in rows)
