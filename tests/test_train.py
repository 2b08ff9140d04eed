import json

import pyro
import pytest
import torch

from pyro_vae import VAE, Config, RunError, elbo, fit, load_run, make_elbo
from pyro_vae.rundir import CHECKPOINT, CONFIG, METRICS, MODEL, load_checkpoint

SMALL = dict(batch_size=100)
NETWORK = dict(z_dim=10, hidden=[100])


def _train(data, run_dir, resume=False, network=None, fit_options=None, **overrides):
    config = Config(**{**SMALL, **overrides})
    pyro.set_rng_seed(config.seed)
    vae = VAE(x_dim=data.x_dim, **{**NETWORK, **(network or {})})
    return vae, fit(vae.model, vae.guide, data, config, run_dir, resume=resume, quiet=True,
                    **(fit_options or {}))


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
    assert saved["epochs"] == 2 and saved["elbo"] == "meanfield" and "z_dim" not in saved
    assert saved["estimator"] == "TraceMeanField_ELBO(num_particles=1, vectorize_particles=False)"
    model = json.loads((run / MODEL).read_text())
    assert model["factory"] == "pyro_vae.model:VAE" and model["arguments"]["z_dim"] == 10
    lines = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    assert lines == metrics
    assert set(lines[0]) == {"epoch", "train_loss", "test_loss", "seconds", "lr"}
    state = load_checkpoint(run)
    assert state["epoch"] == 2
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize(
    "options",
    [dict(jit=False), dict(jit=True),
     dict(schedule="iwae", clip_norm=50.0), dict(lr_scheduler=True, clip_norm=50.0),
     dict(elbo="iwae-dreg", particles=3)],
    ids=["eager", "jit", "iwae-schedule-clipped", "steplr-clipped", "iwae-dreg"])
def test_interrupted_and_resumed_equals_uninterrupted(mnist_small, tmp_path, options):
    data = mnist_small.subset(train=550, test=200)  # 5.5 batches: two shapes to compile
    fit_options = {}
    if options.pop("lr_scheduler", False):  # any torch scheduler, its state checkpointed
        fit_options["lr_scheduler"] = lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    run = lambda out, **o: _train(data, tmp_path / out, fit_options=fit_options,  # noqa: E731
                                  **options, **o)
    vae_a, straight = run("a", epochs=3)
    run("b", epochs=1)  # "interrupted" after epoch 1
    vae_b, resumed = run("b", resume=True, epochs=3)
    strip = lambda ms: [(m["epoch"], m["train_loss"], m["test_loss"], m["lr"])  # noqa: E731
                        for m in ms]
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
    config = Config(**SMALL, epochs=3, jit=False)  # a model that counts its calls: not
    vae = VAE(x_dim=784, **NETWORK)                  # static, so Pyro steps it
    calls = 0

    def model(x):
        # Called once to check the data, once to create parameters, 3 times per epoch to
        # train, once to test: call 8 is epoch 2, step 2.
        nonlocal calls
        calls += 1
        vae.model(x)
        if calls >= 8:
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
    vae, _ = _train(data, tmp_path / "run", epochs=1)
    config, loaded, loaded_data = load_run(tmp_path / "run")
    assert loaded.z_dim == 10 and config.epochs == 1
    x = next(data.eval_batches("test", 10))
    assert torch.equal(loaded.reconstruct(x), vae.reconstruct(x))


@pytest.mark.parametrize("elbo, particles", [("meanfield", 1), ("iwae-dreg", 3)])
def test_a_captured_run_is_the_eager_run(mnist_small, tmp_path, elbo, particles):
    """Same seed, same batches and draws: training by the captured step and by Pyro's
    eager step is the same run, last (smaller) batch included, to the last bit."""
    data = mnist_small.subset(train=555, test=200)  # 55 steps of 10, and one of 5: the
    options = dict(elbo=elbo, particles=particles, epochs=2, batch_size=10)  # 51st captured
    _, eager = _train(data, tmp_path / "eager", jit=False, **options)
    engine = make_elbo(elbo, particles, jit=True)  # as Config(jit=True) makes it
    _, captured = _train(data, tmp_path / "jit", fit_options=dict(elbo=engine), **options)
    assert engine.eager_reason is None and callable(next(iter(engine._steps.values())))
    strip = lambda ms: [(m["train_loss"], m["test_loss"]) for m in ms]  # noqa: E731
    assert strip(captured) == strip(eager)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(elbo="trace"),
        dict(elbo="graph"),
        dict(elbo="iwae", particles=3),
        dict(elbo="renyi", particles=3, alpha=0.5),
        dict(elbo="tail-adaptive", particles=3),
        dict(elbo="iwae-dreg", particles=3),
        dict(elbo="stl"),
        dict(elbo="meanfield", jit=True),
        dict(network=dict(likelihood="continuous-bernoulli")),
        dict(optimizer="sgd", lr=3e-4),
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_every_estimator_trains_through_fit(mnist_small, tmp_path, overrides):
    # Learning, not just finite numbers: two epochs of 10 steps take the test loss well
    # below the untrained model's, on the same test images, for every estimator.
    data = mnist_small.subset(train=1000, test=200)
    pyro.set_rng_seed(0)
    untrained = VAE(x_dim=784, **{**NETWORK, **overrides.get("network", {})})
    before = -elbo(untrained.model, untrained.guide, data)
    _, metrics = _train(data, tmp_path / "run", epochs=2, **overrides)
    assert metrics[-1]["test_loss"] < before - 50, (before, metrics)


def test_a_run_rebuilds_the_model_it_trained_not_one_whose_parameters_fit(mnist_small,
                                                                          tmp_path):
    # A gaussian-fixed VAE has the parameters of a Bernoulli VAE of the same sizes: the run
    # must say which it holds, and load_run must rebuild that one.
    data = mnist_small.subset(train=300, test=100)
    vae, _ = _train(data, tmp_path / "run", epochs=1,
                    network=dict(likelihood="gaussian-fixed", likelihood_options={"sigma": 0.5}))
    _, loaded, _ = load_run(tmp_path / "run")
    assert type(loaded.likelihood).__name__ == "GaussianFixed" and loaded.likelihood.sigma == 0.5
    pyro.set_rng_seed(1)
    trained = elbo(vae.model, vae.guide, data)
    pyro.set_rng_seed(1)
    assert elbo(loaded.model, loaded.guide, data) == trained


def test_likelihood_options_reach_the_likelihood_or_are_refused():
    assert VAE(likelihood="gaussian", likelihood_options={"min_scale": 0.1}).likelihood.min_scale \
        == 0.1
    assert VAE(likelihood="gaussian-fixed", likelihood_options={"sigma": 0.2}).likelihood.sigma \
        == 0.2
    with pytest.raises(ValueError, match="'bernoulli' does not take options \\['min_scale'\\]"):
        VAE(likelihood="bernoulli", likelihood_options={"min_scale": 0.1})


def test_an_estimator_object_trains_and_is_recorded(mnist_small, tmp_path):
    data = mnist_small.subset(train=300, test=100)
    renyi = make_elbo("renyi", num_particles=2, alpha=0.5)
    _, straight = _train(data, tmp_path / "a", epochs=2, fit_options=dict(elbo=renyi))
    saved = json.loads((tmp_path / "a" / CONFIG).read_text())
    assert saved["elbo"] is None and saved["particles"] == 2 and saved["alpha"] == 0.5
    assert saved["estimator"] == "RenyiELBO(num_particles=2, vectorize_particles=True, alpha=0.5)"
    _train(data, tmp_path / "b", epochs=1, fit_options=dict(elbo=renyi))
    with pytest.raises(RunError, match=r"different settings \['alpha', 'estimator'\]"):
        _train(data, tmp_path / "b", resume=True, epochs=2,
               fit_options=dict(elbo=make_elbo("iwae", num_particles=2)))
    _, resumed = _train(data, tmp_path / "b", resume=True, epochs=2, fit_options=dict(elbo=renyi))
    assert resumed[-1]["test_loss"] == straight[-1]["test_loss"]


def test_callbacks_change_settings_before_and_add_columns_after_each_epoch(mnist_small, tmp_path):
    data = mnist_small.subset(train=300, test=100)
    seen = []

    class Recorder:
        def before_epoch(self, epoch):
            seen.append(("before", epoch))
            torch.rand(1000)  # a callback's draws must not move training's random stream

        def after_epoch(self, epoch, record):
            seen.append(("after", epoch, record["test_loss"]))
            return {"twice_test_loss": 2 * record["test_loss"]}

    _, plain = _train(data, tmp_path / "plain", epochs=2)
    _, metrics = _train(data, tmp_path / "run", epochs=2, fit_options=dict(callbacks=[Recorder()]))
    assert [m["test_loss"] for m in metrics] == [m["test_loss"] for m in plain]
    assert seen == [("before", 1), ("after", 1, metrics[0]["test_loss"]),
                    ("before", 2), ("after", 2, metrics[1]["test_loss"])]
    lines = [json.loads(line) for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert [m["twice_test_loss"] for m in lines] == [2 * m["test_loss"] for m in lines]


def test_the_iwae_schedule_follows_the_paper():
    from pyro_vae.schedules import iwae, iwae_epochs, iwae_stage

    assert [iwae_epochs(i) for i in range(1, 9)] == [1, 4, 13, 40, 121, 364, 1093, 3280]
    stages = [iwae_stage(e) for e in range(1, 3281)]
    assert [stages.count(i) for i in range(8)] == [3**i for i in range(8)]
    assert iwae_stage(5000) == 7
    weights = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weights], lr=1e-3)

    scheduler, lrs = iwae(optimizer), []
    for _ in range(14):  # epochs 1 to 14
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 1e-3 and lrs[1:4] == [pytest.approx(1e-3 * 10 ** (-1 / 7))] * 3
    assert lrs[4:13] == [pytest.approx(1e-3 * 10 ** (-2 / 7))] * 9
    assert lrs[13] == pytest.approx(1e-3 * 10 ** (-3 / 7))


def test_clipping_bounds_the_gradient_norm_of_every_step(mnist_small, tmp_path, monkeypatch):
    norms = []
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    _train(mnist_small.subset(train=300, test=100), tmp_path / "run", epochs=1, clip_norm=5.0)
    assert len(norms) == 3 and max(norms) <= 5.0 + 1e-4


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


def test_adam_epsilon_reaches_the_optimizer_and_is_checked(mnist_small, tmp_path):
    _train(mnist_small.subset(train=200, test=100), tmp_path / "run", epochs=1, eps=1e-4)
    groups = load_checkpoint(tmp_path / "run")["optimizer"]["param_groups"]
    assert groups and all(g["eps"] == 1e-4 for g in groups)
    for wrong in (dict(eps=1e-4, optimizer="sgd"), dict(eps=0.0), dict(eps=-1.0)):
        with pytest.raises(ValueError, match="eps is Adam's and must be positive"):
            Config(**wrong).check()
