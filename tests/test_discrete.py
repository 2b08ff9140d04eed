"""Discrete latents: the estimators' gradients against the exact one, and the built-in VAE's
categorical and binary codes through fit and the CLI."""

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pyro.infer.util
import pytest
import torch

from pyro_vae import VAE, Config, fit
from pyro_vae.cli import main
from pyro_vae.estimators import make_elbo
from pyro_vae.iwae import leave_one_out_signal
from pyro_vae.relaxed import GumbelSoftmaxELBO, Temperature

# ----------------------------------------------------------------- a model small enough to sum
# z ~ OneHotCategorical(1/4), x | z ~ N(mu . z, 1); q(z | x) = softmax(a + b x).
C = 4
MU, A, B = [-2.0, 0.0, 1.0, 3.0], [0.3, -0.2, 0.1, 0.0], [-0.5, 0.0, 0.2, 0.6]
X = torch.tensor([-1.5, 0.2, 2.5])
NAMES = ("mu", "a", "b")


def model(x):
    mu = pyro.param("mu", torch.tensor(MU))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.OneHotCategorical(probs=torch.full((x.shape[0], C), 1 / C)))
        pyro.sample("x", dist.Normal((z * mu).sum(-1), 1.0), obs=x)


def guide(x, baseline=None):
    a, b = pyro.param("a", torch.tensor(A)), pyro.param("b", torch.tensor(B))
    infer = {} if baseline is None else {"baseline": {"baseline_value": baseline}}
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.OneHotCategorical(logits=a + b * x.unsqueeze(-1)), infer=infer)


def _leaves():
    return {n: torch.tensor(v, requires_grad=True) for n, v in zip(NAMES, (MU, A, B), strict=True)}


def _log_w(p, x, z):
    """log p(x, z) - log q(z | x) for class indices z (any shape, broadcast against x)."""
    log_q = torch.log_softmax(p["a"] + p["b"] * x.unsqueeze(-1), -1)
    chosen = torch.gather(log_q.expand(*z.shape, C), -1, z.unsqueeze(-1)).squeeze(-1)
    return math.log(1 / C) + dist.Normal(p["mu"][z], 1.0).log_prob(x) - chosen


def exact_elbo_gradient() -> torch.Tensor:
    """The ELBO summed over X, by summing over the 4 classes: its gradient, flat."""
    p = _leaves()
    q = torch.softmax(p["a"] + p["b"] * X.unsqueeze(-1), -1)  # (n, C)
    z = torch.arange(C).expand(X.shape[0], C)
    elbo = (q * _log_w(p, X.unsqueeze(-1), z)).sum()
    return torch.cat([g.flatten() for g in torch.autograd.grad(elbo, list(p.values()))])


def exact_iwae_gradient(k: int) -> torch.Tensor:
    """L_k summed over X, summing over all C**k particle tuples: its gradient, flat."""
    p = _leaves()
    q = torch.softmax(p["a"] + p["b"] * X.unsqueeze(-1), -1)  # (n, C)
    tuples = torch.tensor(list(itertools.product(range(C), repeat=k)))  # (C**k, k)
    z = tuples.T.unsqueeze(-1).expand(k, len(tuples), X.shape[0])  # (k, T, n)
    log_w = _log_w(p, X, z)
    bound = torch.logsumexp(log_w, 0) - math.log(k)  # (T, n)
    prob = torch.gather(q.T, 0, tuples.T.reshape(-1, 1).expand(-1, X.shape[0])).reshape(
        k, len(tuples), -1).prod(0)  # (T, n)
    total = (prob * bound).sum()
    return torch.cat([g.flatten() for g in torch.autograd.grad(total, list(p.values()))])


def gradient_draws(elbo, rounds: int = 60, copies: int = 100, guide_fn=guide) -> torch.Tensor:
    """``rounds`` gradients of the bound (the *negative* loss's), flat, each the mean over
    ``copies`` independent draws for every point of X (the data plate holds ``copies``
    copies of X, each point drawn on its own): of expectation the gradient over X."""
    out = []
    for _ in range(rounds):
        pyro.clear_param_store()
        elbo.loss_and_grads(model, guide_fn, X.repeat(copies))
        store = dict(pyro.get_param_store().named_parameters())
        out.append(torch.cat([-store[n].grad.flatten() for n in NAMES]) / copies)
    return torch.stack(out)


def within(draws: torch.Tensor, exact: torch.Tensor, sigmas: float = 4.0) -> None:
    mean, se = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    assert ((mean - exact).abs() <= sigmas * se + 1e-6).all(), (mean, exact, se)


def test_enum_gives_the_exact_elbo_gradient():
    draws = gradient_draws(make_elbo("enum"), rounds=2, copies=1)
    assert torch.allclose(draws[0], exact_elbo_gradient(), atol=1e-5)
    assert torch.equal(draws[0], draws[1])  # nothing is sampled


@pytest.mark.parametrize("baseline", [None, 5.0])
def test_graph_is_unbiased_with_or_without_a_baseline(baseline):
    guide_fn = guide if baseline is None else (
        lambda x: guide(x, baseline=torch.full((x.shape[0],), baseline)))
    pyro.set_rng_seed(1)
    within(gradient_draws(make_elbo("graph"), guide_fn=guide_fn), exact_elbo_gradient())


def test_a_baseline_near_the_signal_lowers_graph_variance():
    pyro.set_rng_seed(2)
    p = _leaves()
    with torch.no_grad():  # each point's exact ELBO, the signal's mean: a good baseline
        q = torch.softmax(p["a"] + p["b"] * X.unsqueeze(-1), -1)
        good = (q * _log_w(p, X.unsqueeze(-1), torch.arange(C).expand(3, C))).sum(-1)
    plain = gradient_draws(make_elbo("graph"))
    based = gradient_draws(make_elbo("graph"), guide_fn=lambda x: guide(
        x, baseline=good.repeat(x.shape[0] // 3)))
    assert based.var(0).sum() < 0.5 * plain.var(0).sum()


def test_vimco_is_unbiased_for_the_k_sample_bound():
    k = 3
    pyro.set_rng_seed(3)
    within(gradient_draws(make_elbo("vimco", num_particles=k)), exact_iwae_gradient(k))


def test_vimco_signal_is_the_bound_less_its_leave_one_out_bound():
    log_w = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]])  # (k=3, n=2)
    got = leave_one_out_signal(log_w)
    k = 3
    for i in range(k):
        for n in range(2):
            others = [log_w[j, n] for j in range(k) if j != i]
            swapped = torch.stack(others + [torch.stack(others).mean()])
            expected = (torch.logsumexp(log_w[:, n], 0)
                        - torch.logsumexp(swapped, 0))  # the log k of both cancels
            assert got[i, n].item() == pytest.approx(expected.item(), abs=1e-6)


def _gumbel_draws(tau: float) -> torch.Tensor:
    """Gradients at temperature tau, many draws each, so that bias shows through the noise."""
    elbo = GumbelSoftmaxELBO(temperature=Temperature(start=tau, rate=0.0, floor=tau))
    return gradient_draws(elbo, rounds=60, copies=500)


def test_gumbel_bias_shrinks_and_its_variance_grows_as_the_temperature_falls():
    pyro.set_rng_seed(4)
    exact = exact_elbo_gradient()
    found = {}
    for tau in (2.0, 0.5, 0.1):
        draws = _gumbel_draws(tau)
        bias = (draws.mean(0) - exact).norm().item()
        noise = (draws.std(0) / draws.shape[0] ** 0.5).norm().item()
        found[tau] = bias, noise, draws.var(0).sum().item()
    (b2, n2, v2), (b05, n05, v05), (b01, n01, v01) = found[2.0], found[0.5], found[0.1]
    assert b2 > 4 * n2  # a real bias at a high temperature, far outside the noise
    assert b01 + 2 * n01 < b05 and b05 + 2 * n05 < b2, found
    assert v01 > v05 > v2, found  # the price: the relaxed gradient's variance


def test_the_temperature_follows_the_papers_schedule_and_resumes():
    t = Temperature(start=1.0, rate=1e-4, floor=0.5, every=500)
    assert t.at(0) == t.at(499) == 1.0
    assert t.at(500) == pytest.approx(math.exp(-0.05))
    assert t.at(10**6) == 0.5
    elbo = GumbelSoftmaxELBO(temperature=t)
    elbo.steps = 1234
    other = GumbelSoftmaxELBO(temperature=t)
    other.load_state_dict(elbo.state_dict())
    assert other.tau == elbo.tau == t.at(1234)
    with pytest.raises(ValueError, match="temperature schedule"):
        GumbelSoftmaxELBO(temperature=Temperature(rate=1e-5)).load_state_dict(elbo.state_dict())
    with pytest.raises(ValueError, match="floor > 0"):
        Temperature(floor=0)


def test_a_run_whose_temperature_falls_every_step_resumes_exactly(mnist_small, tmp_path):
    data = mnist_small.subset(train=500, test=100)
    schedule = dict(start=1.0, rate=0.05, floor=0.1, every=1)  # changes at every step

    def run(name, epochs, resume=False):
        pyro.set_rng_seed(0)
        vae = VAE(hidden=[32], latent="categorical", groups=4, classes=5)
        config = Config(epochs=epochs, batch_size=100, elbo=None)
        elbo = GumbelSoftmaxELBO(temperature=Temperature(**schedule))
        metrics = fit(vae.model, vae.guide, data, config, tmp_path / name, resume=resume,
                      quiet=True, elbo=elbo)
        return metrics, elbo

    straight, elbo = run("a", 2)
    run("b", 1)
    resumed, resumed_elbo = run("b", 2, resume=True)
    assert [(m["train_loss"], m["test_loss"]) for m in straight] == \
        [(m["train_loss"], m["test_loss"]) for m in resumed]
    assert resumed_elbo.steps == elbo.steps == 10


# ----------------------------------------------------------------- the built-in VAE's codes


def test_the_vae_refuses_impossible_codes():
    with pytest.raises(ValueError, match="unknown latent 'poisson'.*gaussian, categorical"):
        VAE(latent="poisson")
    with pytest.raises(ValueError, match="needs groups .* and classes"):
        VAE(latent="categorical", groups=20)
    with pytest.raises(ValueError, match="z_dim=50 does not fit a categorical latent of 20 x 10"):
        VAE(latent="categorical", groups=20, classes=10, z_dim=50)
    with pytest.raises(ValueError, match="not a bernoulli one"):
        VAE(latent="bernoulli", classes=3)
    with pytest.raises(ValueError, match="network 'mlp'"):
        VAE(x_dim=16, latent="bernoulli", network="conv", image_shape=(1, 4, 4))


@pytest.mark.parametrize("latent, name, particles, refused", [
    (dict(latent="categorical", groups=3, classes=4), "meanfield", 1, "reparameterized"),
    (dict(latent="categorical", groups=3, classes=4), "enum", 1, "C\\*\\*G joint values"),
    (dict(latent="bernoulli", z_dim=6), "iwae", 5, "use 'vimco'"),
    (dict(latent="bernoulli", z_dim=6), "vimco", 1, "num_particles >= 2"),
    (dict(latent="bernoulli", z_dim=6), "gumbel", 5, "one relaxed draw"),
])
def test_estimators_that_do_not_fit_a_discrete_code_are_refused_by_name(
        mnist_small, latent, name, particles, refused):
    vae = VAE(hidden=[16], **latent)
    with pytest.raises(ValueError, match=refused):
        fit(vae.model, vae.guide, mnist_small.subset(train=100, test=50),
            Config(elbo=name, particles=particles, epochs=1))


def test_gumbel_refuses_a_categorical_of_class_indices():
    def indices(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Categorical(logits=torch.zeros(x.shape[0], 3)))

    with pytest.raises(ValueError, match="site 'z' \\(Categorical\\).*use OneHotCategorical"):
        make_elbo("gumbel").loss_and_grads(lambda x: indices(x), indices, X)


@pytest.mark.parametrize("flags, elbo, particles", [
    (["--latent", "categorical", "--groups", "4", "--classes", "5"], "vimco", "3"),
    (["--latent", "categorical", "--groups", "4", "--classes", "5"], "gumbel", "1"),
    (["--latent", "categorical", "--groups", "4", "--classes", "5"], "graph", "1"),
    (["--latent", "bernoulli", "--z-dim", "8"], "gumbel-st", "1"),
    (["--latent", "categorical", "--groups", "1", "--classes", "10"], "enum", "1"),
])
def test_a_discrete_run_trains_and_resumes_exactly_from_the_cli(small_npz, tmp_path, flags,
                                                                elbo, particles):
    common = ["--dataset", str(small_npz), "--hidden", "32", "--quiet", "--batch-size", "100",
              *flags, "--elbo", elbo, "--particles", particles]
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(["train", *common, "--epochs", "2", "--out", str(straight)]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    read = lambda r: [(m["epoch"], m["train_loss"], m["test_loss"]) for m in map(  # noqa: E731
        json.loads, (r / "metrics.jsonl").read_text().splitlines())]
    assert read(run) == read(straight) and len(read(run)) == 2
    assert all(100 < loss < 800 for _, loss, _ in read(run))


def test_a_categorical_run_evaluates_and_plots_from_the_cli(small_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(small_npz), "--hidden", "32", "--quiet",
                 "--latent", "categorical", "--groups", "1", "--classes", "10",
                 "--elbo", "graph", "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--is-samples", "30"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["elbo_estimator"].startswith("TraceEnum_ELBO")  # 10 values: summed exactly
    # IS with the guide as proposal: a bound in expectation above the exact ELBO
    assert result["elbo"] < result["log_likelihood"] < 0
    assert result["active_units"] is None and any("discrete ['z']" in s
                                                 for s in result["skipped"])
    assert main(["plot", str(run)]) == 0
    assert "classes.png" in capsys.readouterr().out
    assert (run / "figures" / "classes.png").read_bytes().startswith(b"\x89PNG")
    assert main(["sample", str(run), "--n", "8"]) == 0
    assert main(["reconstruct", str(run), "--n", "4"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--is-samples", "5", "--ais-steps", "5"]) == 1
    assert "AIS moves real-valued latents, and site 'z'" in capsys.readouterr().err


@pytest.fixture
def small_npz(tmp_path, mnist_binary):
    import numpy as np

    g = torch.Generator().manual_seed(0)
    binary = lambda x: (torch.bernoulli(x, generator=g) * 255).to(torch.uint8)  # noqa: E731
    path = tmp_path / "digits.npz"
    np.savez(path, x=binary(mnist_binary.x_train[:300]).reshape(-1, 28, 28).numpy(),
             x_test=binary(mnist_binary.x_test[:100]).reshape(-1, 28, 28).numpy())
    return path


def test_graph_gives_the_decoder_the_gradient_trace_gives_it(mnist_small):
    # TraceGraph_ELBO tracks which costs a discrete draw reaches through a tensor subclass;
    # the Bernoulli likelihood's fused log-mass must let the decoder's gradient through it.
    x = next(mnist_small.eval_batches("train", 50))
    grads = {}
    for name in ("graph", "trace"):  # the same draws: the decoder's gradient is the same
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        vae = VAE(hidden=[32], latent="categorical", groups=5, classes=4)
        make_elbo(name).loss_and_grads(vae.model, vae.guide, x)
        grads[name] = {n: p.grad for n, p in pyro.get_param_store().named_parameters()
                       if n.startswith("decoder")}
    assert len(grads["graph"]) == len(grads["trace"]) == 4
    for n, g in grads["trace"].items():
        assert g.abs().sum() > 0 and torch.allclose(grads["graph"][n], g, atol=1e-5)


def test_graph_with_particles_draws_them_one_by_one_beside_a_baseline(mnist_small):
    # a baseline is one number per data point: vectorized particles would give the learning
    # signal a particle dimension the baseline does not have
    elbo = make_elbo("graph", num_particles=3)
    assert not elbo.vectorize_particles
    vae = VAE(hidden=[16], latent="bernoulli", z_dim=6)
    x = next(mnist_small.eval_batches("train", 20))
    assert math.isfinite(elbo.loss_and_grads(vae.model, vae.guide, x))


def test_the_test_elbo_of_a_binary_code_is_reported_with_validation_on(mnist_small):
    from pyro_vae import elbo

    vae = VAE(hidden=[16], latent="bernoulli", z_dim=6)
    assert pyro.infer.util.is_validation_enabled()
    assert -800 < elbo(vae.model, vae.guide, mnist_small.subset(test=50)) < -300


def test_gumbel_refuses_a_guide_with_nothing_to_relax():
    vae = VAE(x_dim=3, hidden=[4], z_dim=2)
    with pytest.raises(ValueError, match="draws none: train a continuous code"):
        make_elbo("gumbel").loss_and_grads(vae.model, vae.guide, torch.rand(5, 3).round())


def test_a_new_run_starts_the_temperature_clock_again(mnist_small, tmp_path):
    elbo = GumbelSoftmaxELBO()
    elbo.steps = 10**6  # left over from another run
    vae = VAE(hidden=[16], latent="categorical", groups=2, classes=3)
    fit(vae.model, vae.guide, mnist_small.subset(train=200, test=50),
        Config(epochs=1, batch_size=100, elbo=None), tmp_path / "run", quiet=True, elbo=elbo)
    assert elbo.steps == 2
