import json

import pyro
import pytest
import torch

from pyro_vae import VAE, Config, RunError, elbo, fit, load_run
from pyro_vae.train import CHECKPOINT, CONFIG, METRICS, build_vae, load_checkpoint

SMALL = dict(dataset="mnist-binary", z_dim=10, hidden=[100], batch_size=100)


def _train(data, run_dir, resume=False, **overrides):
    config = Config(**{**SMALL, **overrides})
    pyro.set_rng_seed(config.seed)
    vae = build_vae(config, data)
    return vae, fit(vae.model, vae.guide, data, config, run_dir, resume=resume, quiet=True)


def test_training_on_real_mnist_lowers_the_test_loss(mnist_small, tmp_path):
    untrained = VAE(x_dim=784, z_dim=10, hidden=(100,))
    before = -elbo(untrained.model, untrained.guide, mnist_small)
    vae, metrics = _train(mnist_small, tmp_path / "run", epochs=3)
    after = -elbo(vae.model, vae.guide, mnist_small)
    assert before > 400  # an untrained decoder: about 784 log 2 = 543 nats
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[2]["test_loss"] < metrics[1]["test_loss"] < metrics[0]["test_loss"]
    assert metrics[2]["test_loss"] < 250  # learned: well below half the untrained loss
    assert after == pytest.approx(metrics[2]["test_loss"], abs=3)  # same bound, new draws
    assert all(m["seconds"] > 0 for m in metrics)


def test_run_directory_contents(mnist_small, tmp_path):
    data = mnist_small.subset(train=300, test=100)
    _, metrics = _train(data, tmp_path / "run", epochs=2)
    run = tmp_path / "run"
    saved = json.loads((run / CONFIG).read_text())
    assert saved["z_dim"] == 10 and saved["epochs"] == 2 and saved["elbo"] == "meanfield"
    lines = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    assert lines == metrics
    assert set(lines[0]) == {"epoch", "train_loss", "test_loss", "seconds"}
    state = load_checkpoint(run)
    assert state["epoch"] == 2
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_interrupted_and_resumed_equals_uninterrupted(mnist_small, tmp_path, jit):
    data = mnist_small.subset(train=550, test=200)  # 5.5 batches: two shapes to compile
    vae_a, straight = _train(data, tmp_path / "a", epochs=3, jit=jit)
    _train(data, tmp_path / "b", epochs=1, jit=jit)  # "interrupted" after epoch 1
    vae_b, resumed = _train(data, tmp_path / "b", resume=True, epochs=3, jit=jit)
    strip = lambda ms: [(m["epoch"], m["train_loss"], m["test_loss"]) for m in ms]  # noqa: E731
    assert strip(resumed) == strip(straight)
    params_a, params_b = vae_a.state_dict(), vae_b.state_dict()
    assert params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert torch.equal(a["rng"]["torch"][0], b["rng"]["torch"][0])  # one process
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])


@pytest.mark.parametrize(
    "validation, message",
    [(False, "the loss is nan at epoch 2, step 2"), (True, "invalid values at epoch 2, step 2")],
)
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(
    mnist_small, tmp_path, validation, message
):
    # Without Pyro's validation a NaN reaches the loss; with it, Pyro raises first.
    pyro.enable_validation(validation)
    data = mnist_small.subset(train=300, test=100)  # 3 training steps per epoch
    config = Config(**SMALL, epochs=3)
    vae = build_vae(config, data)
    calls = 0

    def model(x):
        # Called once to create parameters, 3 times per epoch to train, once to test:
        # call 7 is epoch 2, step 2.
        nonlocal calls
        calls += 1
        vae.model(x)
        if calls >= 7:
            pyro.factor("poison", torch.tensor(float("nan")))

    run = tmp_path / "run"
    with pytest.raises(RunError, match=message) as e:
        fit(model, vae.guide, data, config, run, quiet=True)
    assert "last good one (epoch 1)" in str(e.value)
    assert load_checkpoint(run)["epoch"] == 1
    assert len((run / METRICS).read_text().splitlines()) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_overwritten(
    mnist_small, tmp_path, damage
):
    data = mnist_small.subset(train=200, test=100)
    run = tmp_path / "run"
    _train(data, run, epochs=1)
    path = run / CHECKPOINT
    path.write_bytes(b"not a checkpoint" if damage == "garbage" else path.read_bytes()[:3000])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(RunError, match="corrupt or truncated"):
        _train(data, run, resume=True, epochs=2)
    with pytest.raises(RunError, match="corrupt or truncated"):
        load_run(run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_an_existing_run_is_never_overwritten(mnist_small, tmp_path):
    data = mnist_small.subset(train=200, test=100)
    run = tmp_path / "run"
    _train(data, run, epochs=1)
    before = (run / CHECKPOINT).read_bytes()
    with pytest.raises(RunError, match="already holds a run"):
        _train(data, run, epochs=1)
    with pytest.raises(RunError, match=r"different settings \['lr'\]"):
        _train(data, run, resume=True, epochs=2, lr=0.5)
    assert (run / CHECKPOINT).read_bytes() == before


def test_load_run_restores_the_trained_parameters(mnist_small, tmp_path):
    data = mnist_small.subset(train=200, test=100)
    vae, _ = _train(data, tmp_path / "run", epochs=1, dataset="mnist-binary")
    config, loaded, loaded_data = load_run(tmp_path / "run")
    assert config.z_dim == 10
    x = next(data.eval_batches("test", 10))
    assert torch.equal(loaded.reconstruct(x), vae.reconstruct(x))


def test_compiled_training_follows_the_uncompiled_run(mnist_small, tmp_path):
    """Same seed, same batches and draws: JIT and eager training agree up to float
    rounding, last (smaller) batch included."""
    data = mnist_small.subset(train=550, test=200)
    _, eager = _train(data, tmp_path / "eager", epochs=2)
    _, compiled = _train(data, tmp_path / "jit", epochs=2, jit=True)
    for e, c in zip(eager, compiled, strict=True):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-4)
        assert c["test_loss"] == pytest.approx(e["test_loss"], rel=1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(elbo="trace"),
        dict(elbo="graph"),
        dict(elbo="iwae", particles=3),
        dict(elbo="renyi", particles=3, alpha=0.5),
        dict(elbo="tail-adaptive", particles=3),
        dict(elbo="meanfield", jit=True),
        dict(likelihood="continuous-bernoulli", dataset="mnist"),
        dict(optimizer="sgd", lr=1e-4),
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_every_estimator_trains_through_fit(mnist_small, tmp_path, overrides):
    data = mnist_small.subset(train=300, test=100)
    _, metrics = _train(data, tmp_path / "run", epochs=1, **overrides)
    assert 0 < metrics[0]["test_loss"] < 1000 or overrides.get("dataset") == "mnist"


def test_likelihood_options_reach_the_likelihood_or_are_refused():
    assert Config(likelihood="gaussian", min_scale=0.1).make_likelihood().min_scale == 0.1
    assert Config(likelihood="gaussian-fixed", sigma=0.2).make_likelihood().sigma == 0.2
    with pytest.raises(ValueError, match="'bernoulli' does not take options \\['min_scale'\\]"):
        Config(likelihood="bernoulli", min_scale=0.1).check()


def test_a_checkpoint_with_one_random_state_per_run_still_resumes(mnist_small, tmp_path):
    # Checkpoints written before distributed training held the torch RNG state itself, not
    # a list of one state per process.
    data = mnist_small.subset(train=200, test=100)
    _, straight = _train(data, tmp_path / "a", epochs=2)
    _train(data, tmp_path / "b", epochs=1)
    path = tmp_path / "b" / CHECKPOINT
    state = torch.load(path, weights_only=True)
    state["rng"]["torch"] = state["rng"]["torch"][0]
    torch.save(state, path)
    _, resumed = _train(data, tmp_path / "b", resume=True, epochs=2)
    assert resumed[-1]["test_loss"] == straight[-1]["test_loss"]
