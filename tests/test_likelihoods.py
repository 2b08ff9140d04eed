import math
import warnings

import pytest
import torch

from pyro_vae.likelihoods import LIKELIHOODS, get_likelihood

D = 6
BATCH = (3, 4)  # extra leading dims: (particles, data) as under vectorized particles


def test_bernoulli_matches_closed_form():
    logits = torch.randn(*BATCH, D)
    x = torch.bernoulli(torch.full((BATCH[1], D), 0.5))  # broadcasts over the particle dim
    lam = torch.sigmoid(logits)
    expected = (x * lam.log() + (1 - x) * (1 - lam).log()).sum(-1)
    got = get_likelihood("bernoulli")(logits).log_prob(x)
    assert got.shape == BATCH
    assert torch.allclose(got, expected, atol=1e-5)


def test_bernoulli_equals_torch_cross_entropy_on_grey_levels_and_large_logits():
    logits = torch.randn(*BATCH, D) * 30
    x = torch.rand(BATCH[1], D)
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none"
    ).sum(-1)
    got = get_likelihood("bernoulli")(logits).log_prob(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-3)
    assert get_likelihood("bernoulli")(logits).expand((2, *BATCH)).log_prob(x).shape == (2, *BATCH)


def test_bernoulli_log_mass_gradient_is_exact():
    """The hand-written backward (x - sigmoid(l)), also for x broadcast over particles."""
    from pyro_vae.likelihoods import _BernoulliLogMass

    logits = (torch.randn(*BATCH, D, dtype=torch.float64) * 5).requires_grad_()
    x = torch.rand(BATCH[1], D, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_BernoulliLogMass.apply, (logits, x))


def test_gaussian_learned_variance_matches_closed_form():
    with pytest.warns(UserWarning, match="unbounded below"):
        likelihood = get_likelihood("gaussian")
    params = torch.randn(*BATCH, 2 * D)
    mu, log_variance = params[..., :D], params[..., D:]
    x = torch.rand(BATCH[1], D)
    s = (0.5 * log_variance).exp()
    expected = (-0.5 * ((x - mu) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    got = likelihood(params).log_prob(x)
    assert got.shape == BATCH
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("sigma", [1.0, 0.3])
def test_gaussian_fixed_matches_closed_form(sigma):
    mu = torch.randn(*BATCH, D)
    x = torch.rand(BATCH[1], D)
    expected = (
        -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    ).sum(-1)
    got = get_likelihood("gaussian-fixed", sigma=sigma)(mu).log_prob(x)
    assert got.shape == BATCH
    assert torch.allclose(got, expected, atol=1e-4)


def test_gaussian_fixed_keeps_the_normalizing_constant():
    # At x = mu with identity covariance, log p = -(D/2) log(2 pi): 720.44 nats for D = 784.
    mu = torch.rand(784)
    got = get_likelihood("gaussian-fixed")(mu).log_prob(mu)
    assert got.item() == pytest.approx(-392 * math.log(2 * math.pi), abs=1e-2)
    assert got.item() == pytest.approx(-720.44, abs=1e-2)


def test_continuous_bernoulli_matches_closed_form_and_integrates_to_one():
    logits = torch.empty(*BATCH, D).uniform_(0.5, 3.0) * torch.sign(torch.randn(*BATCH, D))
    lam = torch.sigmoid(logits).double()
    x = torch.rand(BATCH[1], D).double()
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = (log_c + x * lam.log() + (1 - x) * (1 - lam).log()).sum(-1)
    got = get_likelihood("continuous-bernoulli")(logits.double()).log_prob(x)
    assert got.shape == BATCH
    assert torch.allclose(got, expected, atol=1e-6)
    # A density on [0, 1]: each pixel's density integrates to one (trapezoid rule).
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    one_pixel = get_likelihood("continuous-bernoulli")(logits[0, 0, :1].double().expand(20001, 1))
    density = one_pixel.log_prob(grid[:, None]).exp()
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-6)


def test_continuous_bernoulli_is_accurate_for_all_logits_with_finite_gradients():
    logits = torch.cat([torch.linspace(-40, 40, 801), torch.tensor([0.0, 1e-4, -0.0999, 0.1])])
    logits = logits.reshape(-1, 1).requires_grad_()
    x = torch.rand(logits.shape[0], 1)
    got = get_likelihood("continuous-bernoulli")(logits).log_prob(x)
    # Reference in float64 from the closed form C = l / tanh(l / 2) (C = 2 at l = 0).
    l64, x64 = logits.detach().double(), x.double()
    log_c = torch.where(l64 == 0, math.log(2.0), (l64 / torch.tanh(l64 / 2)).log())
    exact = (x64 * l64 - torch.nn.functional.softplus(l64) + log_c).sum(-1)
    assert torch.allclose(got.double(), exact, rtol=1e-6, atol=1e-5 * 40)  # float32 of |l|=40
    # torch's own implementation agrees where it is accurate in float32
    moderate = l64.abs().squeeze(-1) < 10
    torch_cb = torch.distributions.ContinuousBernoulli(logits=logits.detach()).log_prob(x).sum(-1)
    assert torch.allclose(got[moderate], torch_cb[moderate], atol=1e-3)
    got.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_bernoulli_warns_once_on_grey_data_and_never_on_binary():
    likelihood = get_likelihood("bernoulli")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        likelihood.check(torch.tensor([[0.0, 0.5, 1.0]]))
        likelihood.check(torch.tensor([[0.0, 0.5, 1.0]]))
    assert len(caught) == 1
    assert "mnist-binary" in str(caught[0].message)
    assert "continuous-bernoulli" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        get_likelihood("bernoulli").check(torch.tensor([[0.0, 1.0, 1.0]]))


def test_unknown_likelihood_lists_the_choices():
    with pytest.raises(ValueError) as e:
        get_likelihood("poisson")
    assert "'poisson'" in str(e.value)
    for name in LIKELIHOODS:
        assert name in str(e.value)


def test_bad_likelihood_options_are_refused():
    with pytest.raises(ValueError, match="does not take options"):
        get_likelihood("bernoulli", sigma=2.0)
    with pytest.raises(ValueError, match="sigma > 0"):
        get_likelihood("gaussian-fixed", sigma=0.0)


def test_gaussian_scale_floor_bounds_the_scale_and_silences_the_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        likelihood = get_likelihood("gaussian", min_scale=0.05)
    params = torch.cat([torch.zeros(2, D), torch.full((2, D), -100.0)], -1)  # variance ~ 0
    q = likelihood(params)
    assert torch.allclose(q.base_dist.scale, torch.full((2, D), 0.05))
    x = torch.zeros(2, D)
    expected = D * (-math.log(0.05) - 0.5 * math.log(2 * math.pi))
    assert torch.allclose(q.log_prob(x), torch.full((2,), expected), atol=1e-3)
    with pytest.raises(ValueError, match="min_scale >= 0"):
        get_likelihood("gaussian", min_scale=-1.0)


@pytest.mark.parametrize("name", ["gaussian-shared", "laplace"])
def test_shared_scale_likelihoods_match_closed_forms_and_learn_their_scale(name):
    likelihood = get_likelihood(name)
    with torch.no_grad():
        likelihood.log_scale.fill_(math.log(0.3))
    mu = torch.randn(*BATCH, D)
    x = torch.rand(BATCH[1], D)
    b = 0.3
    if name == "laplace":
        expected = (-(x - mu).abs() / b - math.log(2 * b)).sum(-1)
    else:
        expected = (-0.5 * ((x - mu) / b) ** 2 - math.log(b) - 0.5 * math.log(2 * math.pi)).sum(-1)
    got = likelihood(mu).log_prob(x)
    assert got.shape == BATCH
    assert torch.allclose(got, expected, atol=1e-4)
    got.sum().backward()
    assert likelihood.log_scale.grad is not None and likelihood.log_scale.grad != 0
    assert list(dict(likelihood.named_parameters())) == ["log_scale"]


def test_shared_scale_is_a_pyro_parameter_of_the_model():
    import pyro
    import pyro.poutine as poutine

    from pyro_vae import VAE

    vae = VAE(x_dim=D, z_dim=2, hidden=(5,), likelihood="gaussian-shared")
    poutine.trace(vae.model).get_trace(torch.rand(3, D))
    assert "likelihood$$$log_scale" in pyro.get_param_store().keys()
