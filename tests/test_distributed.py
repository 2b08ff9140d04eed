"""Data-parallel training: two CPU processes (gloo), launched by PyTorch's own launcher,
train exactly as one process would on the same global batches."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from runs import run_state, same
from scripts import ROOT, load_script

from pyro_vae import ESTIMATORS, VAE, Config, fit, make_elbo
from pyro_vae.cli import main
from pyro_vae.rundir import CHECKPOINT, CONFIG, DATA, LOCK, METRICS, MODEL, load_checkpoint

# The stated tolerance: two processes draw the latent noise of each batch's halves from
# seeds 7 and 8, one process all of it from seed 7, so the two runs differ by their noise
# only. Measured on this setting (2,000 images, 3 epochs): one process trained from the same
# weights with six noise seeds ends with test losses 5.9 nats apart at the extremes.
TEST_LOSS_TOLERANCE = 8.0  # nats per example


def _torchrun(*args: str, restarts: int = 0) -> subprocess.CompletedProcess:
    """Two processes of ``args`` launched by torchrun on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", f"--max-restarts={restarts}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                          cwd=ROOT)


WORKER = str(ROOT / "tests" / "ddp_worker.py")


@pytest.fixture(scope="module")
def straight(mnist_binary, tmp_path_factory):
    """One uninterrupted 2-process run of the worker, 3 epochs, with its records: both
    tests below compare against it (a torchrun launch costs seconds)."""
    folder = tmp_path_factory.mktemp("straight")
    r = _torchrun(WORKER, "--out", str(folder / "run"), "--records", str(folder / "records"))
    assert r.returncode == 0, r.stderr[-3000:]
    return folder


def test_two_processes_train_as_one(mnist_binary, straight, tmp_path):
    records = [torch.load(straight / "records" / f"rank{i}.pt") for i in range(2)]
    settings = load_script(ROOT / "tests" / "ddp_worker.py")
    steps = 3 * settings.SUBSET["train"] // settings.CONFIG["batch_size"]

    # Both processes hold identical parameters after every step.
    assert len(records[0]["hashes"]) == steps
    assert records[0]["hashes"] == records[1]["hashes"]

    # The gradient DDP averaged is the gradient of the global batch, computed here in one
    # process from the same noise: each half drawn from its process's seed.
    data = mnist_binary.subset(**settings.SUBSET)
    config = Config(**settings.CONFIG, epochs=3)
    pyro.set_rng_seed(config.seed)
    vae = VAE(**settings.NETWORK)
    generator = torch.Generator().manual_seed(config.seed)
    x = next(data.batches("train", config.batch_size, generator))
    loss = 0.0
    for rank, half in enumerate(x.tensor_split(2)):
        pyro.set_rng_seed(config.seed + rank)
        loss = loss + make_elbo("meanfield").differentiable_loss(vae.model, vae.guide, half)
    loss.backward()
    params = dict(sorted(pyro.get_param_store().named_parameters()))  # fit's optimizer order
    for i, p in enumerate(params.values()):
        assert torch.allclose(records[0]["first_grads"][i], p.grad, rtol=1e-4, atol=1e-4), i

    # One run directory, written by one process: one line per epoch, one checkpoint.
    assert sorted(p.name for p in straight.iterdir()) == ["records", "run"]
    run = straight / "run"
    assert sorted(p.name for p in run.iterdir()) == sorted([CONFIG, MODEL, DATA, METRICS,
                                                          CHECKPOINT, LOCK])
    assert len((run / METRICS).read_text().splitlines()) == 3

    # The same training in one process ends within the stated tolerance.
    pyro.set_rng_seed(config.seed)
    vae = VAE(**settings.NETWORK)
    alone = fit(vae.model, vae.guide, data, config, tmp_path / "alone", quiet=True)
    together = records[0]["metrics"]
    assert abs(alone[-1]["test_loss"] - together[-1]["test_loss"]) < TEST_LOSS_TOLERANCE
    assert together[-1]["test_loss"] < together[0]["test_loss"] - 5  # and it did train


def test_a_group_preempted_by_sigterm_checkpoints_inside_the_epoch_and_resumes_exactly(
        straight, tmp_path):
    """SIGTERM to torchrun after step 27 of 60, as a cluster preempting the job sends it:
    torchrun passes it on, both processes stop after the same step, the main process
    checkpoints inside epoch 2 and says how to resume; a second launch with --resume ends
    as the uninterrupted run, every later step's parameters included."""
    run = tmp_path / "run"
    stopped = _torchrun(WORKER, "--out", str(run), "--preempt-at", "27")
    assert stopped.returncode != 0
    assert "SIGTERM: stopped after step" in stopped.stderr, stopped.stderr[-3000:]
    assert "of epoch 2/3" in stopped.stderr and f"--resume {run}" in stopped.stderr
    state = load_checkpoint(run)
    step = 20 * state["epoch"] + state["position"]["step"]  # 20 steps an epoch
    assert state["epoch"] == 1 and 27 <= step < 40  # inside epoch 2, at or after step 27
    resumed = _torchrun(WORKER, "--out", str(run), "--resume", "--records", str(tmp_path / "r"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(straight / "records" / "rank0.pt")
    b = torch.load(tmp_path / "r" / "rank1.pt")
    strip = lambda ms: [(m["epoch"], m["train_loss"], m["test_loss"]) for m in ms]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"])
    assert b["hashes"] == a["hashes"][step:]  # every step after the checkpoint's


def test_a_group_that_torchrun_restarts_after_a_rank_dies_ends_as_if_never_stopped(straight,
                                                                                  tmp_path):
    """Rank 1 is killed (SIGKILL) after step 27 of 60; torchrun --max-restarts 1 stops rank 0
    and starts both again, and the group resumes from its own last checkpoint (epoch 2,
    step 5 of 20, by --checkpoint-every 5) without being told to."""
    r = _torchrun(WORKER, "--out", str(tmp_path / "run"), "--records", str(tmp_path / "rec"),
                  "--checkpoint-every", "5", "--die-at", "27", restarts=1)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torchrun restarted the group (restart 1): resuming" in r.stderr
    a = torch.load(straight / "records" / "rank0.pt")
    b = torch.load(tmp_path / "rec" / "rank1.pt")  # the restarted rank 1
    strip = lambda ms: [(m["epoch"], m["train_loss"], m["test_loss"]) for m in ms]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"])
    assert len(b["hashes"]) == 60 - 25  # from the checkpoint after step 25, not from step 0
    assert b["hashes"] == a["hashes"][25:]  # every step after it the uninterrupted run's


def test_only_a_checkpoint_of_the_same_launch_is_resumed_by_a_restart(tmp_path, capsys):
    from pyro_vae.distributed import World
    from pyro_vae.rundir import save_checkpoint
    from pyro_vae.train import _restarted_here

    restarted = World(launch="job-1", restarts=1)
    assert not _restarted_here(tmp_path, restarted)  # nothing checkpointed: a fresh start
    state = {"epoch": 1, "params": {}, "optimizer": {}, "rng": {"torch": [], "data": None}}
    save_checkpoint(tmp_path, {**state, "launch": "job-0"})  # another launch's run
    assert not _restarted_here(tmp_path, restarted)  # refused later as a used folder
    save_checkpoint(tmp_path, {**state, "launch": "job-1"})
    assert _restarted_here(tmp_path, restarted)
    assert "restarted the group (restart 1): resuming" in capsys.readouterr().err


def test_the_cli_runs_under_torchrun(tmp_path, capsys):
    """A per-point estimator, captured as in one process (the worker's runs are meanfield),
    on 200 + 50 random binary 8x8 images of a .npz file."""
    images = lambda n: (np.random.default_rng(n).random((n, 8, 8)) < 0.3).astype(np.uint8) * 255  # noqa: E731
    np.savez(tmp_path / "tiny.npz", x=images(200), x_test=images(50))
    run = tmp_path / "run"
    r = _torchrun("-m", "pyro_vae.cli", "train", "--dataset", str(tmp_path / "tiny.npz"),
                  "--z-dim", "4", "--hidden", "16", "--elbo", "iwae", "--particles", "5",
                  "--batch-size", "50", "--epochs", "1", "--quiet", "--out", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run directory:") == 1 and "(2 processes)" in r.stdout
    assert len((run / METRICS).read_text().splitlines()) == 1
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 1  # 1 process
    assert "trained by 2 process(es)" in capsys.readouterr().err
    assert len((run / METRICS).read_text().splitlines()) == 1  # nothing lost or overwritten


def test_two_nodes_with_a_rendezvous_on_127_0_0_1_train_one_run(tmp_path):
    """Two torchrun launches, --nnodes 2 and --node-rank 0 and 1, one process each, as two
    machines would run them (here both on this one), meeting at 127.0.0.1."""
    images = lambda n: (np.random.default_rng(n).random((n, 8, 8)) < 0.3).astype(np.uint8) * 255  # noqa: E731
    np.savez(tmp_path / "tiny.npz", x=images(200), x_test=images(50))
    hung = []
    for attempt in range(2):  # see _two_launches: one hang seen in about ten suite runs
        run = tmp_path / f"run{attempt}"
        nodes, outs = _two_launches(tmp_path / "tiny.npz", run)
        if outs is not None:
            break
        hung.append(nodes)
    else:
        pytest.fail(f"both tries hung; their launches' stderr: {hung}")
    for node, (_, err) in zip(nodes, outs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert outs[0][0].count("run directory:") == 1 and "(2 processes)" in outs[0][0]
    assert "run directory:" not in outs[1][0]  # node 1 writes and prints nothing of its own
    assert len((run / METRICS).read_text().splitlines()) == 2
    assert len(torch.load(run / CHECKPOINT)["rng"]["torch"]) == 2  # both processes' streams


def _two_launches(data, run, timeout=120):
    """The two launches of two nodes, and their (stdout, stderr); None for these, with each
    launch's stderr, where they are still running after ``timeout`` seconds (an ordinary
    run takes about 6). Once in about ten runs of the whole suite the launch of node 0 waited
    on, its worker exited, after node 1's launch had ended; twelve runs of the two launches
    alone did not repeat it. Every process of the run is killed then, so that the test can
    try once more. Output goes to files: a worker left alive would hold a pipe open."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = [(run.parent / f"{run.name}-node{rank}.out", run.parent / f"{run.name}-node{rank}.err")
            for rank in (0, 1)]
    nodes = []
    for rank, (out, err) in enumerate(logs):
        with open(out, "w") as o, open(err, "w") as e:
            nodes.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
                 f"--node-rank={rank}", "--nproc-per-node=1", "--master-addr=127.0.0.1",
                 f"--master-port={port}", "-m", "pyro_vae.cli", "train", "--dataset", str(data),
                 "--z-dim", "4", "--hidden", "16", "--batch-size", "50", "--epochs", "2",
                 "--quiet", "--out", str(run)],
                stdout=o, stderr=e, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    deadline = time.monotonic() + timeout
    try:
        for n in nodes:
            n.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        polled = [n.poll() for n in nodes]
        for pid in filter(str.isdigit, os.listdir("/proc")):  # the launches and their workers
            with contextlib.suppress(OSError):
                if str(run).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)
        for n in nodes:
            n.wait()
        return [f"node {rank} (exit {code}): {err.read_text()[-2000:]}"
                for rank, (code, (_, err)) in enumerate(zip(polled, logs, strict=True))], None
    return nodes, [(out.read_text(), err.read_text()) for out, err in logs]


@pytest.fixture(scope="module")
def estimators(tmp_path_factory):
    """One launch of tests/ddp_estimators.py: every estimator's first step, and its runs.
    Once in about seven runs of the whole suite a process of it was aborted in C++
    ("terminate called without an active exception", SIGABRT; not yet understood): then it
    is launched once more, into a new folder."""
    for _ in range(2):
        folder = tmp_path_factory.mktemp("estimators")
        r = _torchrun(str(ROOT / "tests" / "ddp_estimators.py"), str(folder))
        if "terminate called without an active exception" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr[-3000:]
    return folder


def test_every_estimator_gives_under_two_processes_the_gradient_of_one(estimators):
    """The first step of each estimator, split over two processes (each half of the
    global batch drawn from its process's seed), is the step one process takes on the
    whole batch from the same draws: the same loss, the same gradient on every parameter.
    The labelled case checks that each process gets its rows' labels."""
    worker = load_script(ROOT / "tests" / "ddp_estimators.py")
    records = [torch.load(estimators / "gradients" / f"rank{i}.pt") for i in range(2)]
    assert sorted(records[0]) == sorted([*ESTIMATORS, worker.LABELLED])  # none left out
    for case, name, network, particles in worker.CASES:
        pyro.clear_param_store()
        pyro.set_rng_seed(worker.SEED)
        vae, elbo, loss = worker.vae(case, network), worker.estimator(name, particles, False), 0
        params = worker.first_use(case, elbo, vae)
        halves = zip(*(a.tensor_split(2) for a in worker.batch(case)), strict=True)
        for rank, half in enumerate(halves):  # (x,) or (x, y) of each process
            pyro.set_rng_seed(worker.SEED + rank)
            loss += elbo.loss_and_grads(vae.model, vae.guide, *half)  # gradients add up
        for rank in (0, 1):
            got = records[rank][case]
            assert got["loss"] == pytest.approx(loss, rel=1e-5), (case, rank)
            for k, p in params.items():  # a parameter the step does not reach: a zero
                want = torch.zeros_like(p) if p.grad is None else p.grad
                assert torch.allclose(got["grads"][k], want, rtol=1e-4, atol=1e-5), (case, k)


def test_every_estimator_resumes_a_two_process_run_exactly(estimators):
    """Each estimator trains 2 epochs under two processes straight, and 1 epoch then
    resumed to 2: the same metrics and parameters, and both processes on the same
    parameters after every run."""
    worker = load_script(ROOT / "tests" / "ddp_estimators.py")
    for case, *_ in worker.CASES:
        straight = run_state(estimators / case / "straight")
        assert straight[0] == 2 and len(straight[2]) == 2, case
        assert same(straight, run_state(estimators / case / "resumed")), case
        hashes = [json.loads((estimators / case / f"rank{i}.json").read_text()) for i in (0, 1)]
        assert hashes[0] == hashes[1], case
        assert hashes[0]["straight, 2 epoch(s)"] == hashes[0]["resumed, 2 epoch(s)"], case
