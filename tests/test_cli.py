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


def test_an_uncompilable_run_resumes(small_npz, tmp_path):
    # The JIT's default applies to new runs only: switched on when resuming an iwae run,
    # it would refuse the run ("jit is available for trace, meanfield, graph only").
    run = tmp_path / "run"
    flags = ["--dataset", str(small_npz), "--z-dim", "5", "--hidden", "64", "--quiet"]
    assert main(["train", *flags, "--elbo", "iwae", "--particles", "3", "--epochs", "1",
                 "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "flag, value, choices",
    [("--likelihood", "poisson", LIKELIHOODS), ("--elbo", "vimco", ESTIMATORS)],
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
        (["train", "--elbo", "iwae", "--particles", "5", "--jit"], "no compiled 'iwae'"),
        (["train", "--dataset", "cifar10"], "unknown dataset 'cifar10'; choose from: mnist"),
        (["train", "--batch-size", "0"], "batch_size must be at least 1"),
        (["train", "--z-dim", "0"], "z_dim must be at least 1"),
        (["train", "--lr", "-1"], "lr must be positive"),
    ],
)
def test_impossible_options_fail_before_anything_is_written(tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    assert main([*argv, "--out", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: error:")
    assert re.search(message, err)
    assert not run.exists()


@pytest.mark.parametrize("command", ["evaluate", "sample", "reconstruct"])
def test_missing_or_corrupt_run_directory(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nowhere")]) == 1
    assert "not a run directory" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"z_dim": 5}')
    (run / "checkpoint.pt").write_bytes(b"\x00" * 100)
    assert main([command, str(run)]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err
    (run / "config.json").write_text('{"z_dim": 5, "colour": "blue"}')
    assert main([command, str(run)]) == 1
    assert "unknown config keys ['colour']" in capsys.readouterr().err


def test_data_fetch_says_where_the_files_are(capsys, mnist_binary):
    assert main(["data", "fetch", "mnist"]) == 0
    assert "four MD5-verified IDX files in" in capsys.readouterr().out
