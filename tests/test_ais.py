"""AIS and BDMC on probabilistic PCA, whose log p(x) is known exactly: AIS converges to it
as the steps grow, and BDMC's forward and reverse bounds bracket it with a shrinking gap."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae import ais_log_likelihood, bdmc

D, LATENT, SIGMA = 4, 2, 1.0
STEPS = (3, 30, 300)


@pytest.fixture(scope="module")
def ppca():
    """x = W z + b + sigma eps: p(x) = N(b, W W^T + sigma^2 I). The guide is the prior, a
    poor proposal; a second guide is off-centre."""
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(D, LATENT, generator=g), torch.randn(D, generator=g)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], LATENT), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T + b, SIGMA).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = (x - b) @ w / (1 + SIGMA**2)  # a rough posterior mean
            pyro.sample("z", dist.Normal(loc, 0.8).to_event(1))

    x = torch.randn(16, LATENT, generator=g) @ w.T + b + SIGMA * torch.randn(16, D, generator=g)
    exact = lambda x: dist.MultivariateNormal(  # noqa: E731
        b, w @ w.T + SIGMA**2 * torch.eye(D)).log_prob(x)
    return model, guide, x, exact


@pytest.mark.parametrize("initial", ["guide", "prior"])
def test_ais_converges_to_the_exact_log_likelihood(ppca, initial):
    model, guide, x, exact = ppca
    errors = []
    for steps in STEPS:
        result = ais_log_likelihood(model, guide, x, steps=steps, chains=16, initial=initial)
        assert result.log_likelihood.shape == result.acceptance.shape == (16,)
        errors.append(result.log_likelihood - exact(x))
    rms = [e.pow(2).mean().sqrt().item() for e in errors]
    assert rms[0] > rms[1] > rms[2], rms
    assert abs(errors[-1].mean().item()) < 0.05  # the largest setting: within 0.05 nat
    assert 0.5 < result.acceptance.mean().item() < 0.85  # adapted toward 0.65


def test_bdmc_brackets_the_exact_value_and_its_gap_shrinks(ppca):
    model, guide, x, exact = ppca
    gaps = []
    for steps in STEPS[:2] + (200,):
        result = bdmc(model, guide, x, steps=steps, chains=16)
        truth = exact(result.x).mean().item()
        # Stochastic bounds: in expectation forward <= log p(x) <= reverse. Averaged over
        # 16 examples, the noise at 200 steps is about 0.01 nat.
        assert result.forward.mean().item() <= truth + 0.02
        assert result.reverse.mean().item() >= truth - 0.02
        gaps.append(result.gap.mean().item())
    assert gaps[0] > gaps[1] > gaps[2] > -0.02, gaps
    assert gaps[-1] < 0.5  # under the study's 0.5-nat line at 200 steps


def test_ais_is_seeded_and_leaves_the_callers_random_state_alone(ppca):
    model, guide, x, _ = ppca
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = ais_log_likelihood(model, guide, x, steps=5, chains=4, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    b = ais_log_likelihood(model, guide, x, steps=5, chains=4, seed=2)
    assert torch.equal(a.log_likelihood, b.log_likelihood)


def test_bad_settings_and_latents_ais_cannot_move_are_refused(ppca):
    model, guide, x, _ = ppca
    with pytest.raises(ValueError, match="AIS needs steps >= 1, got 0"):
        ais_log_likelihood(model, guide, x, steps=0)
    with pytest.raises(ValueError, match="unknown initial distribution 'posterior'; choose "
                                         "from: guide, prior"):
        ais_log_likelihood(model, guide, x, initial="posterior")

    def positive_model(x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.Gamma(x.new_ones(x.shape[0]), 1.0))
            pyro.sample("x", dist.Normal(0.0, s.unsqueeze(-1)).to_event(1), obs=x)

    def positive_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("s", dist.Gamma(x.new_ones(x.shape[0]), 1.0))

    with pytest.raises(ValueError, match="AIS moves real-valued latents, and site 's'"):
        ais_log_likelihood(positive_model, positive_guide, x, steps=2)
