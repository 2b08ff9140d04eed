"""The engine (pyro_vae.engine): a captured step is Pyro's step, for every estimator it
captures; what it cannot capture steps eagerly and says why."""

import shutil

import pyro
import pytest
import torch

from pyro_vae import VAE, make_elbo
from pyro_vae.engine import Captured, EagerFallback

CAPTURED = [("trace", 1), ("meanfield", 1), ("trace", 2), ("meanfield", 3), ("iwae", 3),
            ("iwae-dreg", 3), ("stl", 1), ("stl", 3), ("tail-adaptive", 3), ("renyi", 3)]


@pytest.fixture
def vae_and_x():
    torch.manual_seed(0)
    vae = VAE(x_dim=20, z_dim=4, hidden=(16,))
    x = torch.bernoulli(torch.full((8, 20), 0.3))
    return vae, x


def _steps(elbo, model, guide, batches, initial):
    """Losses and gradients of ``elbo`` on ``batches`` from the same parameters and seed,
    the parameters moving between steps; and the random state after."""
    store = pyro.get_param_store()
    elbo.loss(model, guide, batches[0])  # as fit does first: Pyro guesses the plate nesting
    with torch.no_grad():
        for n, p in store.named_parameters():
            p.copy_(initial[n])
            p.grad = None
    pyro.set_rng_seed(1)
    out = []
    for batch in batches:
        loss = elbo.loss_and_grads(model, guide, batch)
        out.append((loss, {n: p.grad.clone() for n, p in store.named_parameters()}))
        with torch.no_grad():
            for _, p in store.named_parameters():
                p.grad = None
                p.mul_(1.01)
    return out, torch.get_rng_state()


@pytest.mark.parametrize("name, k", CAPTURED, ids=[f"{n}-{k}" for n, k in CAPTURED])
def test_a_captured_step_is_pyros_step(vae_and_x, name, k, recwarn):
    """Same seed, same losses and gradients, step after step and across batch shapes:
    capturing draws no numbers from the training stream and leaves no gradient behind, and
    the graph reads the parameters as they are now."""
    vae, x = vae_and_x
    model, guide = vae.model, vae.guide
    options = dict(alpha=0.5) if name == "renyi" else {}
    make_elbo(name, k, **options).loss(model, guide, x)  # declares the parameters
    initial = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    batches = (x, x, x[:5], x[:5], x)  # a shape's first step is Pyro's, its second captured
    eager, eager_rng = _steps(make_elbo(name, k, **options), model, guide, batches, initial)
    captured = make_elbo(name, k, jit=True, **options)
    assert isinstance(captured, Captured) and captured.warmup == 50
    captured.warmup = 1  # a shape's first step is Pyro's, its second captured
    ours, our_rng = _steps(captured, model, guide, batches, initial)
    assert captured.eager_reason is None
    assert not [w for w in recwarn if issubclass(w.category, EagerFallback)]
    assert sum(callable(s) for s in captured._steps.values()) == 2  # one graph per shape
    assert torch.equal(our_rng, eager_rng)  # the same draws, and as many
    for (loss, grads), (our_loss, our_grads) in zip(eager, ours, strict=True):
        assert our_loss == pytest.approx(loss, rel=1e-6)
        for n in grads:
            assert torch.allclose(our_grads[n], grads[n], rtol=1e-5, atol=1e-6), n


def test_labels_are_part_of_the_graph(vae_and_x):
    """A model of (x, y): both are the graph's inputs, so a new y is read, not frozen."""
    vae, x = vae_and_x

    def model(x, y):
        with pyro.plate("labels", x.shape[0]):
            pyro.sample("y", pyro.distributions.Normal(0.0, 1.0), obs=y)
        vae.model(x)

    def guide(x, y):
        vae.guide(x)

    y = torch.randn(8)
    elbo = make_elbo("meanfield", jit=True)
    elbo.warmup = 1
    elbo.loss(model, guide, x, y)
    losses = []
    for labels in (y, y, y + 10):  # Pyro's step, then the graph's, on new labels
        pyro.set_rng_seed(3)
        losses.append(elbo.loss_and_grads(model, guide, x, labels))
    assert elbo.eager_reason is None and callable(next(iter(elbo._steps.values())))
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    shift = 0.5 * ((y + 10) ** 2 - y**2).sum().item()  # log N(y) at the new labels
    assert losses[2] - losses[1] == pytest.approx(shift, rel=1e-4)


def test_what_it_cannot_capture_steps_eagerly_and_says_why(vae_and_x):
    vae, x = vae_and_x

    def peeking_model(x):  # reads a tensor's value in Python: a graph would freeze it
        if x.mean().item() > 0:
            vae.model(x)

    elbo = make_elbo("meanfield", jit=True)
    elbo.warmup = 1
    elbo.loss(peeking_model, vae.guide, x)
    elbo.loss_and_grads(peeking_model, vae.guide, x)  # Pyro's step; the second is captured
    pyro.set_rng_seed(2)
    with pytest.warns(EagerFallback, match="reads a tensor's value"):
        loss = elbo.loss_and_grads(peeking_model, vae.guide, x)
    pyro.set_rng_seed(2)
    for p in pyro.get_param_store().values():
        p.grad = None
    assert make_elbo("meanfield").loss_and_grads(peeking_model, vae.guide, x) == loss

    coded = VAE(x_dim=20, hidden=(16,), latent="categorical", groups=1, classes=3)
    for name, why in [("graph", "no objective written as tensors"),
                      ("trace", "cannot be reparameterized")]:
        elbo = make_elbo(name, jit=True)
        elbo.warmup = 1
        elbo.loss_and_grads(coded.model, coded.guide, x)
        with pytest.warns(EagerFallback, match=why):
            elbo.loss_and_grads(coded.model, coded.guide, x)
        assert why in elbo.eager_reason


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's CPU kernels need a C++ compiler")
def test_a_compiled_step_draws_what_pyro_draws(vae_and_x):
    """torch.compile of the captured graph: the same random draws (torch's generator, not
    inductor's), the same losses; gradients equal to float rounding. On `meanfield`, whose
    graph inductor compiles in 16 s from a cold cache, against 26 s for `iwae` k = 2
    (`make bench` times and checks the compiled `iwae` rows)."""
    vae, x = vae_and_x
    model, guide = vae.model, vae.guide
    make_elbo("meanfield").loss(model, guide, x)
    initial = {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    eager, eager_rng = _steps(make_elbo("meanfield"), model, guide, (x, x, x), initial)
    compiled = make_elbo("meanfield", jit=True, compile=True)
    assert compiled.warmup == 0
    ours, our_rng = _steps(compiled, model, guide, (x, x, x), initial)
    assert compiled.eager_reason is None
    assert torch.equal(our_rng, eager_rng)
    for (loss, grads), (our_loss, our_grads) in zip(eager, ours, strict=True):
        assert our_loss == pytest.approx(loss, rel=1e-5)
        for n in grads:
            assert torch.allclose(our_grads[n], grads[n], rtol=1e-3, atol=1e-5), n


@pytest.mark.parametrize("name, k", [("meanfield", 1), ("iwae", 3), ("iwae-dreg", 3),
                                     ("stl", 3), ("tail-adaptive", 3)])
def test_a_captured_run_resumed_ends_where_the_straight_run_ends(mnist_small, tmp_path,
                                                                 name, k):
    """Every batch shape captured on its second step (warmup 1), a run stopped after epoch
    1 and resumed (its shapes captured anew) ends with the straight run's every number."""
    from pyro_vae import Config, fit

    data = mnist_small.subset(train=230, test=100)  # 4 steps of 50 and one of 30

    def run(out, epochs, resume=False):
        pyro.set_rng_seed(0)
        vae = VAE(x_dim=784, z_dim=4, hidden=(32,))
        engine = make_elbo(name, k, jit=True)
        engine.warmup = 1
        config = Config(batch_size=50, epochs=epochs, particles=k)
        metrics = fit(vae.model, vae.guide, data, config, tmp_path / out, resume=resume,
                      quiet=True, elbo=engine)
        assert engine.eager_reason is None
        assert any(callable(s) for s in engine._steps.values())  # captured, not eager
        return metrics, vae.state_dict()

    straight, params = run("a", 3)
    run("b", 1)
    resumed, params_b = run("b", 3, resume=True)
    strip = lambda ms: [(m["epoch"], m["train_loss"], m["test_loss"]) for m in ms]  # noqa: E731
    assert strip(resumed) == strip(straight)
    assert all(torch.equal(params[n], params_b[n]) for n in params)
