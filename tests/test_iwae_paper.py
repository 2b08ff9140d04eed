"""The IWAE paper study's own parts: the two-stochastic-layer model, and the route's
schedule and decoder initialisation (experiments/iwae_paper.py, experiments/route_to_88.py)."""

import copy
import itertools
import math
import warnings

import pyro
import pytest
import torch
from scripts import ROOT, load_script

from pyro_vae import VAE, Dataset, elbo, log_likelihood, make_elbo

paper = load_script(ROOT / "experiments" / "iwae_paper.py")
route = load_script(ROOT / "experiments" / "route_to_88.py")


@torch.no_grad()
def _brute_force_log_p(vae, x: torch.Tensor) -> torch.Tensor:
    """log p(x) of a two-layer model with one-dimensional h1 and h2, by summing
    p(h2) p(h1 | h2) p(x | h1) over a fine grid of (h1, h2)."""
    h2 = torch.linspace(-8, 8, 801, dtype=torch.float64)
    h1 = torch.linspace(-14, 14, 1401, dtype=torch.float64)
    area = math.log((h1[1] - h1[0]) * (h2[1] - h2[0]))
    vae = copy.deepcopy(vae).double()  # the caller's model stays in float32
    loc, scale = vae.p_h1(h2[:, None])  # (801, 1)
    log_h = (torch.distributions.Normal(0.0, 1.0).log_prob(h2)[:, None]
             + torch.distributions.Normal(loc, scale).log_prob(h1[None, :]))  # (801, 1401)
    logits = vae.p_x(h1[:, None])  # (1401, x_dim)
    log_x = torch.distributions.Bernoulli(logits=logits[None]).log_prob(
        x.double()[:, None]).sum(-1)  # (n, 1401)
    return torch.logsumexp(log_h[None] + log_x[:, None, :], dim=(1, 2)) + area


def test_two_layer_log_likelihood_matches_brute_force():
    torch.manual_seed(1)
    vae = paper.TwoLayerVAE(x_dim=3, h1=1, h2=1, hidden1=(4,), hidden2=(4,))
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))  # every binary image
    exact = _brute_force_log_p(vae, x)
    assert exact.exp().sum().item() == pytest.approx(1.0, abs=1e-4)  # a distribution on x
    estimate = log_likelihood(vae.model, vae.guide, x, num_samples=20000)
    assert estimate.double() == pytest.approx(exact, abs=0.02)
    crude = log_likelihood(vae.model, vae.guide, x, num_samples=1)  # one sample: a loose bound
    assert (crude.double() - exact).abs().max() > 0.05


def test_two_layer_model_is_top_down_and_guide_bottom_up():
    vae = paper.TwoLayerVAE(x_dim=6, h1=4, h2=2, hidden1=(5,), hidden2=(3,))
    x = torch.bernoulli(torch.full((7, 6), 0.5))
    guide = pyro.poutine.trace(vae.guide).get_trace(x)
    model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    latent = lambda trace: [n for n in trace.stochastic_nodes if n != "data"]  # noqa: E731
    assert latent(guide) == ["h1", "h2"] and latent(model) == ["h2", "h1"]
    assert guide.nodes["h1"]["value"].shape == (7, 4) and guide.nodes["h2"]["value"].shape == (7, 2)
    # Particle dimensions pass through every network: 5 vectorized particles.
    with pyro.plate("particles", 5, dim=-2):
        guide = pyro.poutine.trace(vae.guide).get_trace(x)
    assert guide.nodes["h2"]["value"].shape == (5, 7, 2)
    assert vae.sample(3).shape == (3, 6)
    assert paper.network(2).spec.short_name == "iwae_paper:TwoLayerVAE"  # rebuildable by name


def test_rows_and_bad_rows():
    assert paper.parse("vae-1") == ("trace", 1) and paper.parse("iwae-50") == ("iwae", 50)
    for bad in ("vae", "iwae-0", "meanfield-1", "iwae-x"):
        with pytest.raises(SystemExit, match=f"unknown row '{bad}'"):
            paper.parse(bad)


def test_cosine_schedule_runs_from_the_rate_to_the_end_rate():
    schedule = route.Cosine(epochs=11, end_factor=0.1)
    assert schedule.factor(0) == 1.0
    assert schedule.factor(5) == pytest.approx(0.55)
    assert schedule.factor(10) == pytest.approx(0.1) and schedule.factor(50) == pytest.approx(0.1)
    factors = [schedule.factor(i) for i in range(11)]
    assert factors == sorted(factors, reverse=True)


def test_decoder_bias_starts_at_the_logit_of_the_mean_image(mnist_small):
    vae = VAE(784, z_dim=5, hidden=[20], activation="tanh")
    route.initialise_bias(vae, mnist_small)
    mean = torch.sigmoid(vae.decoder.net[-1].bias.detach())
    assert mean == pytest.approx(mnist_small.x_train.mean(0).clamp(1e-3, 1 - 1e-3), abs=1e-5)


def test_the_elbo_of_a_hierarchy_is_sampled_not_mean_field():
    # Pyro's closed-form KL (TraceMeanField_ELBO) treats h2's draw, which depends on h1's,
    # as given, and warns that it cannot verify the mean-field restriction; evaluate.elbo
    # gives a guide with several latent sites the sampled KL instead.
    torch.manual_seed(2)
    vae = paper.TwoLayerVAE(x_dim=3, h1=1, h2=1, hidden1=(4,), hidden2=(4,))
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3))).repeat(50, 1)
    data = Dataset("patterns", x_train=x, x_test=x)
    exact = _brute_force_log_p(vae, x[:8]).mean().item()  # each pattern 50 times
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_elbo("meanfield").loss(vae.model, vae.guide, x)
        assert any("mean field restriction" in str(w.message) for w in caught)
        caught.clear()
        bound = elbo(vae.model, vae.guide, data, num_particles=100)
    assert not any("mean field restriction" in str(w.message) for w in caught)
    assert exact - 1 < bound < exact  # a lower bound, and a tight one for this small model
