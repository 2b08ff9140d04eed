import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, iwae, make_elbo
from pyro_vae.estimators import ESTIMATORS


@pytest.fixture
def vae_and_x():
    vae = VAE(x_dim=20, z_dim=4, hidden=(16,))
    x = torch.bernoulli(torch.full((8, 20), 0.3))
    return vae, x


def _mean_and_stderr(elbo, vae, x, repeats):
    values = torch.tensor([elbo.loss(vae.model, vae.guide, x) for _ in range(repeats)])
    return values.mean().item(), values.std().item() / math.sqrt(repeats)


def test_meanfield_and_trace_agree_in_expectation(vae_and_x):
    # Both estimate the same ELBO; only the KL term is computed differently (closed form
    # against Monte Carlo). Their means over many draws must agree within 4 standard errors.
    vae, x = vae_and_x
    trace = make_elbo("trace", num_particles=500)
    meanfield = make_elbo("meanfield", num_particles=500)
    mean_t, se_t = _mean_and_stderr(trace, vae, x, 20)
    mean_m, se_m = _mean_and_stderr(meanfield, vae, x, 20)
    assert se_m < se_t  # the analytic KL removes the KL term's sampling noise
    assert abs(mean_t - mean_m) < 4 * math.hypot(se_t, se_m)


def test_iwae_bound_lies_between_elbo_and_log_likelihood_order(vae_and_x):
    # L_1 <= L_k: the importance-weighted loss is below the ELBO's loss on average.
    vae, x = vae_and_x
    elbo_mean, elbo_se = _mean_and_stderr(make_elbo("trace", num_particles=50), vae, x, 10)
    iwae_mean, iwae_se = _mean_and_stderr(make_elbo("iwae", num_particles=50), vae, x, 10)
    assert iwae_mean < elbo_mean - 4 * math.hypot(elbo_se, iwae_se)


@pytest.mark.parametrize(
    "options, expected",
    [
        (dict(name="trace"), Trace_ELBO),
        (dict(name="meanfield"), TraceMeanField_ELBO),
        (dict(name="iwae", num_particles=5), iwae.ImportanceWeightedELBO),
        (dict(name="renyi", num_particles=5, alpha=0.5), iwae.RenyiELBO),
        (dict(name="iwae-dreg", num_particles=5), iwae.DReG),
        (dict(name="stl"), iwae.StickingTheLanding),
        (dict(name="tail-adaptive", num_particles=5), iwae.TailAdaptiveELBO),
    ],
)
def test_estimators_by_name(options, expected):
    elbo = make_elbo(**options)
    assert type(elbo) is expected
    assert elbo.num_particles == options.get("num_particles", 1)
    if "alpha" in options:
        assert elbo.alpha == options["alpha"]
    assert elbo.vectorize_particles or elbo.num_particles == 1


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(name="elbo"), "choose from: " + ", ".join(ESTIMATORS)),
        (dict(name="trace", num_particles=0), "at least 1"),
        (dict(name="renyi", num_particles=5), "renyi needs an alpha"),
        (dict(name="renyi", num_particles=5, alpha=1.0), "alpha=1"),
        (dict(name="trace", alpha=0.5), "option of 'renyi' only"),
        (dict(name="iwae", num_particles=5, compile=True), "needs jit=True"),
        (dict(name="tail-adaptive"), "num_particles >= 2"),
        (dict(name="tail-adaptive", num_particles=5, vectorize_particles=False), "vectorized"),
        (dict(name="iwae-dreg", num_particles=5, vectorize_particles=False), "vectorized"),
    ],
)
def test_impossible_combinations_say_why(options, message):
    with pytest.raises(ValueError, match=message):
        make_elbo(**options)


@pytest.mark.parametrize(
    "options",
    [
        dict(name="trace"),
        dict(name="meanfield"),
        dict(name="graph"),
        dict(name="iwae", num_particles=3),
        dict(name="renyi", num_particles=3, alpha=0.5),
        dict(name="tail-adaptive", num_particles=3),
        dict(name="iwae-dreg", num_particles=3),
        dict(name="stl", num_particles=3),
        dict(name="stl"),
        dict(name="trace", num_particles=3, vectorize_particles=False),
        dict(name="meanfield", num_particles=3, jit=True),
    ],
    ids=lambda o: "-".join(f"{v}" for v in o.values()),
)
def test_every_estimator_gives_a_finite_loss_and_gradients(vae_and_x, options):
    vae, x = vae_and_x
    elbo = make_elbo(**options)
    loss = elbo.loss_and_grads(vae.model, vae.guide, x)
    assert math.isfinite(loss) and loss > 0
    params = dict(pyro.get_param_store().named_parameters())
    assert any(n.startswith("encoder") for n in params)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())


