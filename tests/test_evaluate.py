import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import VAE, make_elbo
from pyro_vae.evaluate import (
    active_units,
    chunk_shape,
    elbo,
    gradient_snr,
    kl_per_dimension,
    log_likelihood,
)
from pyro_vae.likelihoods import GaussianFixed

D, LATENT, SIGMA = 4, 2, 0.5


class PPCA:
    """Probabilistic PCA as a VAE with a linear decoder and the gaussian-fixed likelihood:
    p(x) = N(b, W W^T + sigma^2 I) exactly, and the exact posterior is Gaussian."""

    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.W, self.b = torch.randn(D, LATENT, generator=g), torch.randn(D, generator=g)
        decoder = nn.Linear(LATENT, D)
        with torch.no_grad():
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.b)
        self.vae = VAE(x_dim=D, z_dim=LATENT, likelihood=GaussianFixed(SIGMA), decoder=decoder)
        z = torch.randn(n, LATENT, generator=g)
        self.x = z @ self.W.T + self.b + SIGMA * torch.randn(n, D, generator=g)
        marginal = dist.MultivariateNormal(self.b, self.W @ self.W.T + SIGMA**2 * torch.eye(D))
        self.exact = marginal.log_prob(self.x)
        m_inv = torch.linalg.inv(self.W.T @ self.W + SIGMA**2 * torch.eye(LATENT))
        self.post_cov = SIGMA**2 * m_inv
        self.post_mean = lambda x: (x - self.b) @ self.W @ m_inv  # noqa: E731

    def exact_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.post_mean(x), self.post_cov))

    def poor_guide(self, x):
        """Diagonal, shifted and too wide: a valid but imperfect proposal."""
        scale = 2 * self.post_cov.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.post_mean(x) + 0.5, scale).to_event(1))


@pytest.fixture
def ppca():
    return PPCA()


def test_exact_posterior_guide_gives_the_exact_likelihood_for_any_k(ppca):
    for k in (1, 7):
        estimate = log_likelihood(ppca.vae.model, ppca.exact_guide, ppca.x, num_samples=k)
        assert torch.allclose(estimate, ppca.exact, atol=1e-4)


def test_importance_sampling_converges_to_the_exact_likelihood(ppca):
    errors = []
    for k in (1, 10, 100, 3000):
        estimate = log_likelihood(ppca.vae.model, ppca.poor_guide, ppca.x, num_samples=k)
        errors.append((estimate.mean() - ppca.exact.mean()).abs().item())
    assert errors[0] > 0.3  # the poor guide's ELBO is far off ...
    assert errors[-1] < 0.02  # ... and K = 3000 importance samples close the gap
    assert errors == sorted(errors, reverse=True)


def test_l1_is_the_elbo_and_lk_grows_with_k(ppca):
    x = ppca.x.repeat(50, 1)  # every row draws from its own stream: 2000 independent runs
    bounds = {k: log_likelihood(ppca.vae.model, ppca.poor_guide, x, num_samples=k)
              for k in (1, 5, 50)}
    means = {k: b.mean().item() for k, b in bounds.items()}
    stderr = {k: (b.std() / math.sqrt(len(b))).item() for k, b in bounds.items()}
    bound = -make_elbo("trace", num_particles=20000).loss(ppca.vae.model, ppca.poor_guide,
                                                          ppca.x) / ppca.x.shape[0]
    assert abs(means[1] - bound) < 4 * stderr[1] + 0.02  # L_1 is the ELBO in expectation
    assert means[1] + 4 * stderr[1] < means[5]  # L_K grows with K ...
    assert means[5] + 4 * stderr[5] < means[50]
    assert means[50] < ppca.exact.mean().item() + 4 * stderr[50]  # ... below log p(x)


def test_chunking_and_seed(mnist_small):
    vae = VAE(x_dim=784, z_dim=8, hidden=(32,))
    x = next(mnist_small.eval_batches("test", 6))
    state = torch.get_rng_state()
    big = log_likelihood(vae.model, vae.guide, x, num_samples=20, memory_mb=64)
    tiny = log_likelihood(vae.model, vae.guide, x, num_samples=20, memory_mb=1e-4)  # 1 x 1
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert torch.allclose(big, tiny, atol=1e-4)
    assert torch.equal(big, log_likelihood(vae.model, vae.guide, x, num_samples=20))
    assert not torch.equal(big, log_likelihood(vae.model, vae.guide, x, num_samples=20, seed=1))
    first = log_likelihood(vae.model, vae.guide, x[:2], num_samples=20)
    assert torch.allclose(first, big[:2], atol=1e-4)  # example i's draws do not depend on N


def test_a_site_outside_the_data_plate_is_refused(ppca):
    def guide_with_global(x):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        ppca.exact_guide(x)

    with pytest.raises(ValueError, match="'scale' is outside the plate 'data'"):
        log_likelihood(ppca.vae.model, guide_with_global, ppca.x, num_samples=2)


def _guide_with_collapsed_units(x, active=3, total=5):
    """Units 0..2 follow the data; units 3..4 are the prior N(0, 1) whatever x is."""
    projection = torch.arange(1.0, 1 + x.shape[1] * active).reshape(x.shape[1], active) / 10
    loc = torch.cat([x @ projection, torch.zeros(x.shape[0], total - active)], -1)
    scale = torch.cat([torch.full((x.shape[0], active), 0.1),
                       torch.ones(x.shape[0], total - active)], -1)
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_active_units_counts_collapsed_units():
    x = torch.randn(300, D)
    count, variances = active_units(_guide_with_collapsed_units, x)
    assert count == 3
    assert (variances[:3] > 0.01).all() and (variances[3:] == 0).all()


def test_kl_per_dimension_is_zero_for_collapsed_units_and_sums_to_the_kl_term():
    x = torch.randn(300, D)
    kl = kl_per_dimension(_guide_with_collapsed_units, x)
    assert kl.shape == (5,)
    assert torch.allclose(kl[3:], torch.zeros(2), atol=1e-6)
    trace = pyro.poutine.trace(_guide_with_collapsed_units).get_trace(x)
    q = trace.nodes["z"]["fn"]
    prior = dist.Normal(0.0, 1.0).expand([5]).to_event(1)
    expected = torch.distributions.kl_divergence(q, prior).mean()
    assert kl.sum().item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_snr_rises_and_variance_falls_with_particles():
    vae = VAE(x_dim=20, z_dim=4, hidden=(16,))
    x = torch.bernoulli(torch.full((10, 20), 0.3))
    one = gradient_snr(vae.model, vae.guide, make_elbo("trace"), x, num_draws=30)
    many = gradient_snr(vae.model, vae.guide, make_elbo("trace", num_particles=16), x,
                        num_draws=30)
    assert set(one) == {"encoder", "decoder"}
    assert all(p.grad is None for _, p in pyro.get_param_store().named_parameters())
    for group in ("encoder", "decoder"):
        assert many[group]["variance"] < one[group]["variance"] / 4  # about 16x lower
        assert many[group]["snr"] > one[group]["snr"]


def test_elbo_is_seeded_and_leaves_the_callers_random_stream_alone(mnist_small):
    vae = VAE(x_dim=784, z_dim=4, hidden=(16,))
    data = mnist_small.subset(train=10, test=50)
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = elbo(vae.model, vae.guide, data)
    assert torch.equal(torch.rand(3), expected_next)
    assert elbo(vae.model, vae.guide, data) == first
    assert elbo(vae.model, vae.guide, data, seed=1) != first


@pytest.mark.parametrize("num_samples, memory_mb, expected", [
    (5000, 64, (1, 5000)),   # 5349 codes fit: one chunk per example
    (5000, 32, (1, 2500)),   # 2674 fit: two equal halves, not 2674 + 2326
    (5001, 32, (1, 2501)),
    (20, 64, (267, 20)),     # many examples per chunk, all their samples
    (20, 1e-4, (1, 1)),
])
def test_chunks_hold_what_fits_in_equal_parts(num_samples, memory_mb, expected):
    assert chunk_shape(num_samples, 784, memory_mb) == expected
