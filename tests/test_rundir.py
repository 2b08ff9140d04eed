"""The run directory: one writer at a time (an OS lock that dies with its process), and a
model spec that rebuilds exactly the model that trained, or refuses by name."""

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pyro_vae import VAE, Config, Dataset, ModelSpec, RunError, build_model, fit, load_run
from pyro_vae.cli import main
from pyro_vae.rundir import LOCK, METRICS, writer_lock
from pyro_vae.spec import name_of, rebuild


def _locked(path) -> bool:
    """Whether another process holds the flock on ``path``."""
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / METRICS).read_text().splitlines()]


def test_a_second_writer_is_refused_at_once_and_writes_nothing(mnist_small, tmp_path):
    data = mnist_small.subset(train=200, test=100)
    run = tmp_path / "run"
    vae = VAE(x_dim=784, z_dim=4, hidden=[16])
    with writer_lock(run):
        with pytest.raises(RunError, match="another process is writing"):
            fit(vae.model, vae.guide, data, Config(epochs=1), run, quiet=True)
        assert sorted(p.name for p in run.iterdir()) == [LOCK]
    fit(vae.model, vae.guide, data, Config(epochs=1), run, quiet=True)  # released: it trains
    assert _epochs(run) == [1]


@pytest.fixture
def digits_npz(tmp_path, mnist_binary):
    path = tmp_path / "digits.npz"
    np.savez(path, x=(mnist_binary.x_train[:3000] * 255).to(torch.uint8).numpy(),
             x_test=(mnist_binary.x_test[:500] * 255).to(torch.uint8).numpy())
    return path


def _launch(*argv):
    return subprocess.Popen([sys.executable, "-m", "pyro_vae.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(condition, process, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_double_launches_and_double_resumes_refuse_and_a_killed_writer_blocks_nothing(
        digits_npz, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--dataset", str(digits_npz), "--z-dim", "4", "--hidden", "64", "--quiet"]
    first = _launch("train", *flags, "--epochs", "1000", "--out", str(run))
    _wait_until(lambda: _locked(run / LOCK) and (run / METRICS).exists()
                and _epochs(run), first)
    config_before = (run / "config.json").read_text()

    second = subprocess.run([sys.executable, "-m", "pyro_vae.cli", "train", *flags,
                             "--epochs", "2", "--out", str(run)], capture_output=True, text=True)
    assert second.returncode == 1
    assert "another process is writing" in second.stderr and str(run) in second.stderr
    first.send_signal(signal.SIGKILL)  # a crash: the OS drops its lock
    first.wait()
    assert (run / "config.json").read_text() == config_before  # the second wrote nothing
    done = _epochs(run)
    assert done == list(range(1, len(done) + 1))  # one line per epoch, none twice

    resume = ["train", "--resume", str(run), "--quiet"]
    one = _launch(*resume, "--epochs", "1000")
    _wait_until(lambda: _locked(run / LOCK), one)
    assert main([*resume, "--epochs", str(len(done) + 1)]) == 1  # a second writer, at once
    assert "another process is writing" in capsys.readouterr().err
    one.send_signal(signal.SIGKILL)
    one.wait()
    done = _epochs(run)
    assert done == list(range(1, len(done) + 1))

    assert main([*resume, "--epochs", str(len(done) + 1)]) == 0  # no lock left behind
    assert _epochs(run) == list(range(1, len(done) + 2))


def test_factory_names_and_their_checks(tmp_path, monkeypatch):
    assert name_of(VAE) == "pyro_vae.model:VAE"
    assert VAE(x_dim=6, z_dim=2, hidden=[3]).spec == ModelSpec("pyro_vae.model:VAE", dict(
        x_dim=6, z_dim=2, hidden=[3], activation="relu", likelihood="bernoulli",
        likelihood_options={}))
    # Given its own networks, or subclassed, a VAE cannot say how it was built.
    assert VAE(x_dim=6, z_dim=2, encoder=torch.nn.Identity()).spec is None
    assert ModelSpec("src/pkg/models.py:make").short_name == "models:make"
    assert ModelSpec("pkg.models:make").short_name == "models:make"
    with pytest.raises(ValueError, match="'package.module:function'"):
        ModelSpec("make_vae")
    with pytest.raises(ValueError, match="not JSON"):
        ModelSpec("a.py:f", {"net": torch.nn.Linear(1, 1)})

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(
        "from pyro_vae import VAE\n\n"
        "def make(z_dim=2):\n    return VAE(x_dim=5, z_dim=z_dim, hidden=[4])\n\n"
        "def not_a_model():\n    return 3\n")
    built = build_model("mine.py:make", z_dim=3)
    digest = hashlib.blake2b((tmp_path / "mine.py").read_bytes(), digest_size=8).hexdigest()
    assert built.spec == ModelSpec("mine.py:make", {"z_dim": 3}, digest) and built.z_dim == 3
    with pytest.raises(ValueError, match="has no model and guide"):
        build_model("mine.py:not_a_model")
    with pytest.raises(ValueError, match="mine.py has no 'nope'"):
        build_model("mine.py:nope")
    with pytest.raises(ValueError, match="no file missing.py"):
        build_model("missing.py:make")
    with pytest.raises(ValueError, match="pass --model mine.py:make"):
        rebuild(built.spec)
    with pytest.raises(ValueError, match="not by mine.py:not_a_model"):
        rebuild(built.spec, "mine.py:not_a_model")
    assert rebuild(built.spec, "./mine.py:make").z_dim == 3  # another spelling of the same


def test_a_model_rebuilt_from_an_edited_factory_file_is_refused_by_name(
        tmp_path, monkeypatch, capsys):
    # The same parameter names and shapes, other code: without the file's digest in the
    # spec, the run's parameters would load into the edited model without a word.
    monkeypatch.chdir(tmp_path)
    source = ("from pyro_vae import VAE\n\n"
              "def make(z_dim=2):\n    return VAE(x_dim=5, z_dim=z_dim, hidden=[4])\n")
    (tmp_path / "edited.py").write_text(source)
    spec = build_model("edited.py:make", z_dim=3).spec
    assert spec.source is not None and ModelSpec.from_dict(spec.to_dict()) == spec
    (tmp_path / "edited.py").write_text(source.replace("hidden=[4]", "hidden=[4], "
                                                       "activation='tanh'"))
    with pytest.raises(ValueError, match="edited.py, which defines the factory edited.py:make, "
                                         "has changed since the run was trained"):
        rebuild(spec, "edited.py:make")
    rebuilt = rebuild(spec, "edited.py:make", edited=True)
    assert rebuilt.spec == spec  # the run's record stands
    assert rebuilt.spec.arguments == {"z_dim": 3} and isinstance(
        rebuilt.encoder.net[1], torch.nn.Tanh)  # the edited code, as asked
    assert "rebuilding edited.py:make from an edited" in capsys.readouterr().err


def test_a_run_resumes_from_its_factory_in_another_checkout_and_not_from_another(
        tmp_path, monkeypatch):
    """The factory is recorded as spelled where the run started (``/a/x.py:make``); a copy
    of the same file elsewhere (``/b/x.py:make``) resumes it, another factory does not."""
    source = ("from pyro_vae import VAE\n\n"
              "def make(z_dim=2):\n    return VAE(x_dim=6, z_dim=z_dim, hidden=[4])\n\n"
              "def other(z_dim=2):\n    return VAE(x_dim=6, z_dim=z_dim, hidden=[4])\n")
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "x.py").write_text(source)
    data = Dataset("d", torch.bernoulli(torch.full((40, 6), 0.5)), torch.zeros(8, 6))
    first = build_model(f"{tmp_path / 'a' / 'x.py'}:make")
    fit(first.model, first.guide, data, Config(epochs=1, batch_size=20), tmp_path / "run",
        quiet=True)
    copy = build_model(f"{tmp_path / 'b' / 'x.py'}:make")
    metrics = fit(copy.model, copy.guide, data, Config(epochs=2, batch_size=20),
                  tmp_path / "run", resume=True, quiet=True)
    assert [m["epoch"] for m in metrics] == [1, 2]
    other = build_model(f"{tmp_path / 'b' / 'x.py'}:other")
    with pytest.raises(RunError, match="cannot resume .* with another model"):
        fit(other.model, other.guide, data, Config(epochs=3, batch_size=20), tmp_path / "run",
            resume=True, quiet=True)


def test_runs_of_the_first_format_are_refused_by_name(mnist_small, tmp_path):
    vae = VAE(x_dim=784, z_dim=4, hidden=[16])
    run = tmp_path / "run"
    fit(vae.model, vae.guide, mnist_small.subset(train=200, test=100), Config(epochs=1), run,
        quiet=True)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "z_dim": 4, "likelihood": "bernoulli"}))
    with pytest.raises(RunError, match=r"model settings \['likelihood', 'z_dim'\].*pyro-vae 0.1"):
        load_run(run)
    (run / "config.json").write_text(json.dumps(saved))
    os.remove(run / "model.json")
    with pytest.raises(RunError, match="has no model.json: it does not say which model"):
        load_run(run)


def test_a_pair_without_a_spec_trains_but_is_not_rebuilt_blindly(mnist_small, tmp_path):
    vae = VAE(x_dim=784, z_dim=4, hidden=[16])
    run = tmp_path / "run"

    def model(x):
        vae.model(x)

    fit(model, vae.guide, mnist_small.subset(train=200, test=100), Config(epochs=1), run,
        quiet=True)
    assert json.loads((run / "model.json").read_text()) is None
    with pytest.raises(RunError, match="does not record how its model was built"):
        load_run(run)


class PermutedVAE(VAE):
    """A VAE whose decoder sees z through a random permutation drawn at construction and
    kept in a buffer, as autoregressive flows keep theirs: no parameter, yet the model."""

    def __init__(self, **vae):
        super().__init__(**vae)
        self.register_buffer("permutation", torch.randperm(self.z_dim))

    def decode_z(self, z):
        return self.decoder(z[..., self.permutation])

    def model(self, x):
        import pyro
        import pyro.distributions as dist

        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0)
                            .to_event(1))
            pyro.sample("x", self.likelihood(self.decode_z(z)), obs=x)


def test_buffers_travel_with_the_checkpoint(mnist_small, tmp_path):
    import pyro

    from pyro_vae import elbo

    data = mnist_small.subset(train=300, test=100)
    pyro.set_rng_seed(0)
    vae = build_model(PermutedVAE, x_dim=784, z_dim=8, hidden=[32])
    fit(vae.model, vae.guide, data, Config(epochs=1, batch_size=100), tmp_path / "run",
        quiet=True)
    pyro.set_rng_seed(1)
    trained = elbo(vae.model, vae.guide, data)
    torch.manual_seed(123)  # the rebuilt model draws another permutation...
    _, loaded, _ = load_run(tmp_path / "run", factory=PermutedVAE)
    assert torch.equal(loaded.permutation, vae.permutation)  # ...and the checkpoint's wins
    pyro.set_rng_seed(1)
    assert elbo(loaded.model, loaded.guide, data) == trained
