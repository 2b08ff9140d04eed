"""Preemption: a real ``pyro-vae train`` process sent SIGTERM (or SIGUSR1) at random steps
finishes the step, checkpoints inside the epoch, exits 128 + signal with the resume command,
and resuming it again and again ends where the uninterrupted run ends, parameter for
parameter and metric for metric. ``--checkpoint-every`` checkpoints inside epochs without
changing a number, and a run killed outright (SIGKILL) resumes from the last of them.

The signal is sent by the process to itself from its optimizer's step (a subclass that
counts steps), so that it lands at a chosen step; the process handles it as any signal.
"""

import random
import signal
import subprocess
import sys

import pytest
from runs import run_state, same, tiny_npz

from pyro_vae import Config, load_run
from pyro_vae.cli import main
from pyro_vae.rundir import load_checkpoint

EPOCHS, STEPS = 3, 8  # 64 training images in batches of 8

SIGNALLING = """\
import os, sys
import torch
from pyro_vae import config
from pyro_vae.cli import main

at, signum = int(sys.argv[1]), int(sys.argv[2])

class Adam(torch.optim.Adam):  # sends the signal to its own process after step `at`
    taken = 0

    def step(self, *args, **kwargs):
        out = super().step(*args, **kwargs)
        Adam.taken += 1
        if Adam.taken == at:
            os.kill(os.getpid(), signum)
        return out

config.OPTIMIZERS["adam"] = Adam
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return tiny_npz(tmp_path_factory.mktemp("data"))


def _train(npz, run, *extra):
    return ["train", "--dataset", str(npz), "--z-dim", "2", "--hidden", "8",
            "--batch-size", "8", "--epochs", str(EPOCHS), "--quiet", "--out", str(run), *extra]


def _signalled(argv, at: int, signum: int):
    """``pyro-vae`` with ``argv`` in its own process, which signals itself after step
    ``at`` (counted from its start)."""
    return subprocess.run([sys.executable, "-c", SIGNALLING, str(at), str(int(signum)), *argv],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def reference(npz, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(_train(npz, run)) == 0
    return run_state(run)


def test_signals_at_random_steps_then_resumes_end_where_the_uninterrupted_run_ends(
        npz, reference, tmp_path, capsys):
    run = tmp_path / "run"
    resume = ["train", "--resume", str(run), "--quiet"]
    stops = sorted(random.Random(0).sample(range(1, EPOCHS * STEPS), 3))  # global steps
    taken = 0
    for n, (stop, signum) in enumerate(zip(stops, (signal.SIGTERM, signal.SIGUSR1,
                                                   signal.SIGTERM), strict=True)):
        done = _signalled(_train(npz, run) if n == 0 else resume, stop - taken, signum)
        assert done.returncode == 128 + signum, done.stderr
        epoch, step = divmod(stop - 1, STEPS)
        assert (f"{signum.name}: stopped after step {step + 1} of {STEPS} of epoch "
                f"{epoch + 1}/{EPOCHS}") in done.stderr
        assert f"resume with pyro-vae train --resume {run} --epochs {EPOCHS}" in done.stderr
        state = load_checkpoint(run)
        assert (state["epoch"], state["position"]["step"]) == (epoch, step + 1)
        taken = stop
    load_run(run)  # opens, and says that its parameters are a step's inside an epoch
    assert "its checkpoint was written inside an epoch" in capsys.readouterr().err
    assert main(resume) == 0
    assert load_checkpoint(run)["position"] is None
    assert same(run_state(run), reference)


def test_checkpoint_every_changes_no_number_and_a_kill_resumes_from_the_last(
        npz, reference, tmp_path):
    """The resumed run writes its checkpoints every 3 steps too: it ends at the reference
    only if neither the kill nor the checkpoints changed a number."""
    killed = tmp_path / "killed"
    done = _signalled(_train(npz, killed, "--checkpoint-every", "3"), STEPS + 5, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL, done.stderr
    state = load_checkpoint(killed)  # after step 3 of epoch 2 (the kill came after its 5th)
    assert (state["epoch"], state["position"]["step"]) == (1, 3)
    assert main(["train", "--resume", str(killed), "--quiet"]) == 0
    assert same(run_state(killed), reference)


def test_checkpoint_every_must_be_a_positive_number_of_steps():
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1 step, got 0"):
        Config(checkpoint_every=0).check()


def test_a_run_in_memory_leaves_signals_alone():
    from pyro_vae.preemption import catching

    before = signal.getsignal(signal.SIGTERM)
    with catching(active=False) as requested:
        assert signal.getsignal(signal.SIGTERM) is before and requested.signum is None
    with catching() as requested:
        signal.raise_signal(signal.SIGUSR1)
        assert requested.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) is before

