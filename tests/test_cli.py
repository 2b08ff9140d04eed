import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.likelihoods import LIKELIHOODS


@pytest.fixture
def small_npz(tmp_path, mnist_binary):
    """A binarized real-MNIST subset as a user's .npz file (uint8 0/255 images)."""
    g = torch.Generator().manual_seed(0)
    binary = lambda x: (torch.bernoulli(x, generator=g) * 255).to(torch.uint8)  # noqa: E731
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        x=binary(mnist_binary.x_train[:400]).reshape(-1, 28, 28).numpy(),
        y=mnist_binary.y_train[:400].numpy(),
        x_test=binary(mnist_binary.x_test[:100]).reshape(-1, 28, 28).numpy(),
    )
    return path


def test_train_evaluate_sample_reconstruct_resume(small_npz, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--dataset", str(small_npz), "--z-dim", "5", "--hidden", "64", "--batch-size", "100"]
    assert main(["train", *flags, "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert "final test loss" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["jit"]  # on by default for meanfield

    assert main(["evaluate", str(run), "--is-samples", "20"]) == 0
    assert "IS-20 log-likelihood" in capsys.readouterr().out
    result = json.loads((run / "evaluation.json").read_text())
    assert result["split"] == "test" and result["examples"] == 100
    assert -600 < result["elbo"] < -50
    assert result["log_likelihood"] > result["elbo"]  # IS-20 is the tighter bound
    assert result["gap"] == pytest.approx(result["log_likelihood"] - result["elbo"])
    assert 0 < result["log_likelihood_stderr"] < 10
    assert 0 <= result["active_units"] <= 5 and len(result["kl_per_dimension"]) == 5
    assert (run / "figures" / "kl_per_dimension.png").read_bytes().startswith(b"\x89PNG")

    assert main(["sample", str(run), "--n", "16"]) == 0
    assert main(["reconstruct", str(run), "--n", "6"]) == 0
    for name in ("samples.png", "reconstructions.png"):
        png = (run / "figures" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 2000

    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


@pytest.mark.parametrize("elbo, particles", [("iwae", "3"), ("iwae-dreg", "5"), ("stl", "1"),
                                             ("semi-amortized", "2")])
def test_a_run_of_each_estimator_resumes_exactly(small_npz, tmp_path, elbo, particles):
    # captured (iwae, iwae-dreg, stl) or stepped eagerly (semi-amortized), the same numbers
    flags = ["--dataset", str(small_npz), "--z-dim", "5", "--hidden", "64", "--quiet",
             "--elbo", elbo, "--particles", particles]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["train", *flags, "--epochs", "2", "--out", str(straight)]) == 0
    assert main(["train", *flags, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    read = lambda r: [(m["epoch"], m["train_loss"], m["test_loss"]) for m in map(  # noqa: E731
        json.loads, (r / "metrics.jsonl").read_text().splitlines())]
    assert read(run) == read(straight) and len(read(run)) == 2


@pytest.mark.parametrize(
    "flag, value, choices",
    [("--likelihood", "poisson", LIKELIHOODS), ("--elbo", "reinforce", ESTIMATORS)],
)
def test_bad_names_exit_non_zero_and_list_the_choices(tmp_path, capsys, flag, value, choices):
    with pytest.raises(SystemExit) as e:
        main(["train", flag, value, "--out", str(tmp_path / "run")])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert value in err and all(name in err for name in choices)
    assert not (tmp_path / "run").exists()


def test_console_script_reports_bad_estimator(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pyro_vae.cli", "train", "--elbo", "nope"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert r.returncode == 2 and "meanfield" in r.stderr and "tail-adaptive" in r.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--elbo", "tail-adaptive"], "num_particles >= 2"),
        (["train", "--elbo", "renyi", "--particles", "5"], "renyi needs an alpha"),
        (["train", "--elbo", "iwae", "--particles", "5", "--no-jit", "--compile"],
         "needs jit=True"),
        (["train", "--dataset", "cifar10"], "unknown dataset 'cifar10'; choose from: mnist"),
        (["train", "--batch-size", "0"], "batch_size must be at least 1"),
        (["train", "--z-dim", "0"], "z_dim must be at least 1"),
        (["train", "--lr", "-1"], "lr must be positive"),
        (["train", "--clip-norm", "0"], "clip_norm must be positive"),
        (["train", "--likelihood", "bernoulli", "--min-scale", "0.1"],
         r"'bernoulli' does not take options \['min_scale'\]"),
    ],
)
def test_impossible_options_fail_before_anything_is_written(tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    assert main([*argv, "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: error:")
    assert re.search(message, err)
    assert not run.exists()


@pytest.mark.parametrize("command", ["evaluate", "sample", "reconstruct", "plot"])
def test_missing_or_corrupt_run_directory(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nowhere")]) == 1
    assert "not a run directory" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"epochs": 5}')
    (run / "model.json").write_text('{"factory": "pyro_vae.model:VAE", "arguments": {}}')
    (run / "checkpoint.pt").write_bytes(b"\x00" * 100)
    assert main([command, str(run)]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err
    (run / "config.json").write_text('{"epochs": 5, "colour": "blue"}')
    assert main([command, str(run)]) == 1
    assert "unknown config keys ['colour']" in capsys.readouterr().err
    (run / "config.json").write_text('{"epochs": 5}')
    (run / "model.json").write_text('{"factory": "pyro_vae.model:VAE"}')
    assert main([command, str(run)]) == 1
    assert "model.json is corrupt" in capsys.readouterr().err


USER_MODEL = """
import pyro
import pyro.distributions as dist
from pyro_vae import VAE


class StudentPriorVAE(VAE):
    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.StudentT(4.0, x.new_zeros(x.shape[0], self.z_dim), 1.0)
                            .to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)


def make(z_dim=2, hidden=32):
    return StudentPriorVAE(x_dim=784, z_dim=z_dim, hidden=[hidden])
"""


def test_a_model_from_a_file_trains_resumes_and_evaluates_from_the_cli(small_npz, tmp_path,
                                                                      capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "student.py").write_text(USER_MODEL)
    run = tmp_path / "run"
    train = ["train", "--dataset", str(small_npz), "--model", "student.py:make",
             "--model-args", '{"z_dim": 3}', "--elbo", "trace", "--out", str(run), "--quiet"]
    assert main([*train, "--epochs", "1", "--tensorboard"]) == 0
    recorded = json.loads((run / "model.json").read_text())
    assert recorded.pop("source") and recorded == {  # the factory file's digest, and
        "factory": "student.py:make", "arguments": {"z_dim": 3}}
    assert json.loads((run / "config.json").read_text())["jit"]  # captured, checked

    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 1
    assert "pass --model student.py:make" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--z-dim", "4"]) == 1
    assert "a resumed run keeps its model: drop --z-dim" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--model", "student.py:make", "--epochs", "2",
                 "--quiet", "--tensorboard"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    assert main(["evaluate", str(run), "--model", "student.py:make", "--is-samples", "10",
                 "--device", "cpu", "--examples", "8", "--ais-steps", "4", "--ais-chains",
                 "2"]) == 0
    out = capsys.readouterr().out
    assert "IS-10 log-likelihood" in out and "active units" in out
    assert "AIS log-likelihood" in out and "4 steps x 2 chains" in out
    assert "skipped KL per dimension: the model's prior is not N(0, I)" in out
    result = json.loads((run / "evaluation.json").read_text())
    assert result["kl_per_dimension"] is None and len(result["skipped"]) == 1
    assert result["examples"] == 8 and "4 steps x 2 chains" in result["ais_estimator"]
    assert 0 <= result["ais_acceptance"] <= 1 and result["ais_seconds"] > 0

    # Every metric of every epoch is a TensorBoard scalar, the resumed epoch appended.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train_loss", "test_loss", "seconds", "lr"} <= set(events.Tags()["scalars"])
    steps = [(e.step, e.value) for e in events.Scalars("test_loss")]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [(m["epoch"], pytest.approx(m["test_loss"])) for m in metrics]


@pytest.mark.parametrize("flag", ["--is-samples", "--examples", "--ais-steps", "--ais-chains",
                                  "--refine"])
def test_evaluate_refuses_empty_settings_before_opening_the_run(tmp_path, capsys, flag):
    assert main(["evaluate", str(tmp_path / "nowhere"), flag, "0"]) == 1
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err


def test_a_refine_family_needs_refine(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nowhere"), "--refine-family", "flow"]) == 1
    assert "--refine-family flow says what --refine STEPS optimises" in capsys.readouterr().err


def test_model_flags_and_a_factory_do_not_mix(tmp_path, capsys):
    assert main(["train", "--model", "x.py:make", "--z-dim", "3", "--out", str(tmp_path)]) == 1
    assert "--z-dim describe the built-in VAE" in capsys.readouterr().err
    assert main(["train", "--model", "x.py:make", "--model-args", "[1]",
                 "--out", str(tmp_path / "r")]) == 1
    assert not (tmp_path / "r").exists()


def test_data_fetch_says_where_the_files_are(capsys, mnist_binary):
    assert main(["data", "fetch", "mnist"]) == 0
    assert "four MD5-verified IDX files in" in capsys.readouterr().out
