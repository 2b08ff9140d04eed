"""Numbers you can trust blind (issue 26): each case of "what breaks today", as a test.

1. a run records the data it trained on, and reopens on exactly them or refuses;
2. every row is checked against the support of the model's observed site;
3. parameters first reached after the first step are refused by name;
4. one evaluation binarization, the same input to the test loss, ELBO and IS;
5. the GPU path's CPU-checkable parts (tests/test_cuda.py holds the rest);
6. edited factory files (tests/test_rundir.py), renyi below 0, a user's traceback;
8. fewer rules: Pyro's own example VAE, fit without a run directory.
"""

import json
import shlex

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scripts import ROOT
from test_labels import LabelChecking, _labelled
from torch import nn

from pyro_vae import (
    VAE,
    Config,
    RunError,
    build_model,
    elbo,
    fit,
    load_dataset,
    load_run,
    make_elbo,
)
from pyro_vae.cli import main
from pyro_vae.data import EVAL_SEED
from pyro_vae.distributed import World
from pyro_vae.evaluate import log_likelihood
from pyro_vae.rundir import CONFIG, DATA, params_on
from pyro_vae.train import _test_loss

SMALL = dict(batch_size=100, epochs=1)


def _vae():
    return VAE(x_dim=784, z_dim=4, hidden=[32])


# ----------------------------------------------------------------- 1. the run's data


def test_a_run_records_its_data_and_reopens_on_them_not_on_configs_default(tmp_path):
    # Before: config.json said "mnist-binary" (Config's default) for a run on other data,
    # and load_run evaluated it on binarized MNIST without a word.
    grey = load_dataset("mnist").subset(train=300, test=100)
    vae = _vae()
    fit(vae.model, vae.guide, grey, Config(**SMALL), tmp_path / "run", quiet=True)
    assert json.loads((tmp_path / "run" / CONFIG).read_text())["dataset"] == "mnist"
    recorded = json.loads((tmp_path / "run" / DATA).read_text())
    assert recorded["source"] == {"name": "mnist", "image_size": None,
                                  "subset": {"train": 300, "test": 100}}
    assert recorded["rows"] == {"train": 300, "test": 100} and recorded["binarization"] is None
    _, _, data = load_run(tmp_path / "run")
    assert data.name == "mnist" and not data.binarize and torch.equal(data.x_test, grey.x_test)


def test_a_config_naming_other_data_than_the_ones_given_is_refused_before_writing(tmp_path):
    grey = load_dataset("mnist").subset(train=300, test=100)
    vae = _vae()
    with pytest.raises(ValueError, match="config.dataset is 'mnist-binary', but the data given "
                                         "to fit are 'mnist'"):
        fit(vae.model, vae.guide, grey, Config(dataset="mnist-binary", **SMALL),
            tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_edited_data_are_refused_by_load_run_and_by_resume(tmp_path):
    csv = tmp_path / "v.csv"
    rows = np.random.default_rng(0).random((60, 4))
    np.savetxt(csv, rows, delimiter=",", fmt="%.6f")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(csv), "--likelihood", "gaussian-shared", "--z-dim",
                 "2", "--hidden", "8", "--batch-size", "20", "--epochs", "1", "--out", str(run),
                 "--quiet"]) == 0
    rows[7, 2] += 0.5
    np.savetxt(csv, rows, delimiter=",", fmt="%.6f")
    with pytest.raises(RunError, match=r"differ from the ones the run trained on: the "
                                       r"contents of x_(train|test)"):
        load_run(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 1
    assert main(["evaluate", str(run), "--is-samples", "5"]) == 1


# ----------------------------------------------------------------- 2. every row checked


def test_every_row_is_checked_against_the_likelihoods_support(tmp_path, capsys):
    # Before: the support was checked on the 8 rows that declare the parameters, and this
    # CSV trained with a Bernoulli likelihood to the end.
    values = np.random.default_rng(0).random((300, 6))
    values[100, 3], values[200, 1] = 7.5, -3  # rows 101 and 201 of the file
    csv = tmp_path / "bad.csv"
    np.savetxt(csv, values, delimiter=",", fmt="%.4f", header="a,b,c,d,e,f", comments="")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(csv), "--likelihood", "bernoulli", "--z-dim", "2",
                 "--hidden", "8", "--epochs", "1", "--out", str(run), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"row 101 of {csv} (line 102" in err and ": 7.5 at position 3" in err
    assert f"row 201 of {csv} (line 202" in err and ": -3 at position 1" in err
    assert "support [0, 1]" in err and "Traceback" not in err
    assert not run.exists()  # nothing written


def test_labels_are_checked_against_the_models_classes(tmp_path):
    data = _labelled()
    data.y_train[17] = 12
    m = LabelChecking()
    m.num_classes = 10
    with pytest.raises(ValueError, match="label 12 of train row 17 is not a class of the model "
                                         r"\(0 \.\. 9, or -1 for unknown\)"):
        fit(m.model, m.guide, data, Config(elbo="trace", epochs=1), tmp_path / "r", quiet=True)
    assert not (tmp_path / "r").exists() and m.seen == 0


# ----------------------------------------------------------------- 3. late parameters


def test_a_parameter_first_reached_after_the_first_step_is_refused_by_name(tmp_path,
                                                                           mnist_small):
    vae, head = _vae(), nn.Linear(4, 4)
    calls = 0

    def model(x):
        nonlocal calls
        calls += 1
        vae.model(x)
        if calls > 4:  # the data check, the declaration, and two steps without it
            pyro.module("second_head", head)

    data = mnist_small.subset(train=500, test=100)
    with pytest.raises(RuntimeError, match=r"parameters \['second_head\$\$\$bias', "
                                           r"'second_head\$\$\$weight'\] first appeared at epoch "
                                           r"1, step 3, after the optimizer was built"):
        # a model whose Python changes between steps is not static: Pyro steps it
        fit(model, vae.guide, data, Config(**SMALL, jit=False), tmp_path / "run", quiet=True)


# ----------------------------------------------------------------- 4. one binarization


def test_the_test_loss_elbo_and_is_read_one_binarization(mnist_small):
    data = mnist_small.subset(train=100, test=300)
    fixed = torch.bernoulli(data.x_test, generator=torch.Generator().manual_seed(EVAL_SEED))
    assert torch.equal(data.evaluation("test"), fixed)  # drawn once, on the CPU, seed 0
    vae, seen = _vae(), []

    def model(x):
        seen.append(x.clone())
        vae.model(x)

    def inputs(run):
        seen.clear()
        run()
        return torch.cat([x for x in seen if x.shape[0] > 1])  # not Pyro's probes of one row

    estimator = make_elbo("meanfield")
    loss_input = inputs(lambda: _test_loss(estimator, model, vae.guide, data, 7, World()))
    elbo_input = inputs(lambda: elbo(model, vae.guide, data, batch_size=500))
    x = torch.cat(list(data.eval_batches("test", 1000)))  # what evaluate, AIS and plots take
    for name, got in (("test loss", loss_input), ("elbo", elbo_input), ("IS input", x)):
        assert torch.equal(got, fixed), name
    seen.clear()
    log_likelihood(model, vae.guide, x[:3], num_samples=4)
    assert all(torch.equal(s[:, 0], s[:, 0]) for s in seen)
    assert torch.equal(torch.cat(list(data.eval_batches("test", 7))), fixed)


# ----------------------------------------------------------------- 5. the GPU path


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_trained_on_cuda_opens_on_a_cpu_with_one_line(tmp_path, mnist_small, capsys):
    vae = _vae()
    fit(vae.model, vae.guide, mnist_small.subset(train=200, test=100), Config(**SMALL),
        tmp_path / "run", quiet=True)
    config = json.loads((tmp_path / "run" / CONFIG).read_text())
    (tmp_path / "run" / CONFIG).write_text(json.dumps({**config, "device": "cuda"}))
    loaded, _, data = load_run(tmp_path / "run")
    assert loaded.device == "cpu" and data.x_test.device.type == "cpu"
    assert "was trained on cuda; CUDA is not available here, so it opens on the CPU" in \
        capsys.readouterr().err


def test_under_torchrun_each_process_trains_on_its_own_gpu():
    world = World(rank=1, size=2, local_rank=1)
    assert world.device("cuda") == "cuda:1" and world.device("cpu") == "cpu"
    with pytest.raises(ValueError, match="'cuda:1' names one GPU for all 2 processes"):
        world.device("cuda:1")
    assert World().device("cuda:1") == "cuda:1"  # one process: the device it names


def test_plain_pyro_params_move_to_the_runs_device_and_module_parameters_are_refused():
    pyro.param("w", torch.ones(3), constraint=dist.constraints.positive)
    params = params_on("meta")  # a device of its own, without a GPU
    assert params["w"].device.type == "meta" and pyro.param("w").device.type == "meta"
    pyro.module("net", nn.Linear(2, 2))
    with pytest.raises(RunError, match="parameter 'net\\$\\$\\$(weight|bias)' is on cpu, the run's "
                                       "device is meta: move its module there"):
        params_on("meta")


# ----------------------------------------------------------------- 6. smaller silent ones


def test_renyi_below_zero_is_refused_as_no_lower_bound():
    with pytest.raises(ValueError, match="below 0 the Renyi bound is an upper bound"):
        make_elbo("renyi", num_particles=2, alpha=-0.5)
    with pytest.raises(ValueError, match="alpha=-0.5: below 0"):
        from pyro_vae import RenyiELBO

        RenyiELBO(2, alpha=-0.5)


USER_BUG = '''
import pyro_vae


class Buggy(pyro_vae.VAE):
    def model(self, x):
        raise ValueError("the shapes of my model do not line up")


def make():
    return Buggy(x_dim=784, z_dim=2, hidden=[8])
'''


def test_an_error_inside_a_users_model_keeps_its_traceback_and_ours_stay_one_line(
        tmp_path, monkeypatch, capsys, mnist_small):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "buggy.py").write_text(USER_BUG)
    assert main(["train", "--model", "buggy.py:make", "--elbo", "trace", "--epochs", "1",
                 "--out", "runs/bug", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and 'buggy.py", line 7, in model' in err
    assert "ValueError: the shapes of my model do not line up" in err
    assert main(["train", "--elbo", "renyi", "--alpha", "-1", "--out", "runs/r"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pyro-vae: error: renyi needs an alpha") and "Traceback" not in err


# ----------------------------------------------------------------- 8. fewer rules


def test_pyros_own_example_vae_trains_evaluates_samples_and_plots_unchanged(
        tmp_path, monkeypatch, capsys, mnist_small):
    # Its plate is "data", its latent "latent", its observed site "obs", its Bernoulli built
    # with validate_args=False on probabilities: nothing of it is pyro-vae's.
    monkeypatch.chdir(tmp_path)
    factory = f"{ROOT / 'tests' / 'pyro_example_vae.py'}:make"
    vae = build_model(factory, z_dim=2, hidden_dim=32)
    data = load_dataset("mnist-binary").subset(train=500, test=200)
    config = Config(elbo="trace", batch_size=50, epochs=2, lr=3e-3)
    metrics = fit(vae.model, vae.guide, data, config, "run", quiet=True)
    assert metrics[1]["test_loss"] < metrics[0]["test_loss"] < 543  # 784 log 2: untrained
    for command in (f"evaluate run --model {factory} --is-samples 10",
                    f"sample run --model {factory}", f"plot run --model {factory}"):
        assert main(shlex.split(command)) == 0, command
    out = capsys.readouterr().out
    assert "IS-10 log-likelihood" in out and "active units" in out
    figures = {p.name for p in (tmp_path / "run" / "figures").iterdir()}
    assert {"samples.png", "reconstructions.png", "latent_manifold.png",
            "latent_embedding.png", "learning_curves.png", "kl_per_dimension.png"} <= figures


def test_fit_without_a_run_directory_trains_in_memory_and_writes_nothing(
        tmp_path, monkeypatch, mnist_small):
    monkeypatch.chdir(tmp_path)
    vae = _vae()
    metrics = fit(vae.model, vae.guide, mnist_small.subset(train=300, test=100),
                  Config(batch_size=100, epochs=2), quiet=True)
    assert [m["epoch"] for m in metrics] == [1, 2] and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="resume=True needs the run_dir"):
        fit(vae.model, vae.guide, mnist_small, Config(**SMALL), resume=True)


def test_a_second_argument_not_named_y_is_refused_by_name(mnist_small, tmp_path):
    vae = _vae()

    def model(x, ys):
        vae.model(x)

    def guide(x, ys):
        vae.guide(x)

    with pytest.raises(ValueError, match="takes a second argument 'ys' that pyro-vae cannot "
                                         "fill.*rename it y"):
        fit(model, guide, mnist_small, Config(**SMALL), tmp_path / "run", quiet=True)


def test_a_run_written_before_data_json_opens_with_a_line_and_a_resume_records_its_data(
        tmp_path, capsys, mnist_small):
    data = mnist_small.subset(train=200, test=100)
    vae = _vae()
    fit(vae.model, vae.guide, data, Config(**SMALL), tmp_path / "run", quiet=True)
    (tmp_path / "run" / DATA).unlink()  # as a run of the earlier format
    _, _, loaded = load_run(tmp_path / "run", data=data)
    assert "does not record its data (written before runs did)" in capsys.readouterr().err
    fit(vae.model, vae.guide, data, Config(**{**SMALL, "epochs": 2}), tmp_path / "run",
        resume=True, quiet=True)
    assert json.loads((tmp_path / "run" / DATA).read_text())["rows"]["train"] == 200


def test_the_latent_site_of_the_diagnostics_leaves_enumerated_sites_aside():
    from pyro_vae.evaluate import latent_site

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=torch.zeros(x.shape[0], 3)),
                        infer={"enumerate": "parallel"})
            pyro.sample("code", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))

    assert latent_site(guide, torch.zeros(4, 5)) == "code"
