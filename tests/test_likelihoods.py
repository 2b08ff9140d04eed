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


def test_gaussian_learned_variance_matches_closed_form():
    with pytest.warns(UserWarning, match="unbounded below"):
        likelihood = get_likelihood("gaussian")
    params = torch.randn(*BATCH, 2 * D)
    mu, log_s = params[..., :D], params[..., D:]
    x = torch.rand(BATCH[1], D)
    s = log_s.exp()
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
