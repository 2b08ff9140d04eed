"""pyro_vae.refine: the per-example optimum of q, checked where it is known exactly."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import pytest
import torch

from pyro_vae import refine
from pyro_vae.cli import main
from pyro_vae.refinement import Planar

D, Z, SIGMA = 10, 3, 0.5


def ppca():
    """Probabilistic PCA with orthogonal loadings: z ~ N(0, I), x ~ N(W z + b, sigma^2 I),
    W^T W diagonal, so the posterior N((W^T W + sigma^2 I)^-1 W^T (x - b), sigma^2 (W^T W +
    sigma^2 I)^-1) is a diagonal Gaussian, inside the refined family, and log p(x) =
    log N(x; b, W W^T + sigma^2 I) is exact. The guide is deliberately poor: N(1, 2^2 I)."""
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(D, Z, generator=g))
    w = q * torch.tensor([2.0, 1.0, 0.5])
    b = torch.randn(D, generator=g)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T + b, SIGMA).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(encoder(x), 2.0).to_event(1))

    encoder = torch.nn.Linear(D, Z)
    torch.nn.init.zeros_(encoder.weight)
    torch.nn.init.ones_(encoder.bias)
    x = torch.randn(40, Z, generator=g) @ w.T + b + SIGMA * torch.randn(40, D, generator=g)
    exact = dist.MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(D)).log_prob(x)
    return model, guide, encoder, x, exact


def test_refinement_reaches_the_exact_log_likelihood_of_ppca():
    model, guide, _, x, exact = ppca()
    r = refine(model, guide, x, steps=600, lr=0.05)
    assert r.elbo.shape == r.amortized_elbo.shape == (40,)
    assert (exact - r.amortized_elbo).mean() > 10  # the guide is poor ...
    assert (exact - r.elbo).mean().abs() < 0.05  # ... and the refined q is the posterior
    assert r.elbo.mean() >= r.amortized_elbo.mean()


def test_refined_q_is_the_exact_posterior_of_ppca():
    model, guide, _, x, _ = ppca()
    q = refine(model, guide, x, steps=600, lr=0.05).q
    # the posterior's covariance sigma^2 (W^T W + sigma^2 I)^-1 for W's column norms 2, 1, 0.5
    variance = SIGMA**2 / (torch.tensor([4.0, 1.0, 0.25]) + SIGMA**2)
    # each example's from its own noisy optimisation; their mean within 5%
    assert torch.allclose((q.base_dist.scale**2).mean(0), variance, rtol=0.05)


def test_refinement_never_lowers_the_bound_and_stops_by_its_window():
    model, guide, _, x, exact = ppca()
    # an optimum already: a step size this small cannot leave it, the pick keeps the start
    good = refine(model, guide, x, steps=300, lr=0.05)
    loc, scale = good.q.base_dist.loc, good.q.base_dist.scale

    def optimal(x):
        with pyro.plate("data", x.shape[0]):
            n = x.shape[0]
            pyro.sample("z", dist.Normal(loc[:n], scale[:n]).to_event(1))

    again = refine(model, optimal, x, steps=20, lr=1e-3)
    assert again.elbo.mean() >= again.amortized_elbo.mean() - 0.01
    stopped = refine(model, guide, x, steps=5000, lr=0.05, window=50)
    assert stopped.steps < 5000 and stopped.steps % 50 == 0
    assert (exact - stopped.elbo).mean().abs() < 0.1


def test_refinement_leaves_the_parameters_and_the_random_state_alone():
    model, guide, encoder, x, _ = ppca()
    before = [p.detach().clone() for p in encoder.parameters()]
    state = torch.get_rng_state()
    first = refine(model, guide, x, steps=30, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, p) for a, p in zip(before, encoder.parameters(), strict=True))
    assert all(p.grad is None for p in encoder.parameters())
    second = refine(model, guide, x, steps=30, seed=3)
    assert torch.equal(first.elbo, second.elbo)  # the seed alone decides the draws
    assert not torch.equal(first.elbo, refine(model, guide, x, steps=30, seed=4).elbo)


def test_the_flow_family_starts_as_its_gaussian_and_refines_a_flow_guide():
    model, guide, _, x, exact = ppca()
    r = refine(model, guide, x, steps=400, lr=0.05, family="flow", flows=2)
    assert (exact - r.elbo).mean().abs() < 0.2
    assert isinstance(r.q, dist.TransformedDistribution) and len(r.q.transforms) == 2
    z = r.q.rsample((5,))
    assert z.shape == (5, 40, Z) and torch.isfinite(r.q.log_prob(z)).all()

    # a guide whose q has no loc/scale (an IAF on a Gaussian): the Gaussian family starts
    # from the moments of its draws
    flow = T.affine_autoregressive(Z, hidden_dims=[8])

    def flow_guide(x):
        pyro.module("flow", flow)
        with pyro.plate("data", x.shape[0]):
            base = dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1)
            pyro.sample("z", dist.TransformedDistribution(base, [flow]))

    r = refine(model, flow_guide, x, steps=300, lr=0.05)
    assert (exact - r.elbo).mean().abs() < 0.05 and r.elbo.mean() > r.amortized_elbo.mean()


def test_planar_log_determinant_is_the_jacobians():
    g = torch.Generator().manual_seed(0)
    u, w, b = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(2)
    planar, z = Planar(u, w, b), torch.randn(2, 4, generator=g)
    for i in range(2):
        one = Planar(u[i], w[i], b[i])
        jacobian = torch.autograd.functional.jacobian(one, z[i])
        expected = torch.linalg.slogdet(jacobian).logabsdet
        assert math.isclose(planar.log_abs_det_jacobian(z, planar(z))[i].item(),
                            expected.item(), abs_tol=1e-5)


def test_bad_settings_are_refused_by_name():
    model, guide, _, x, _ = ppca()
    with pytest.raises(ValueError, match="unknown family 'ffg'; choose from: gaussian, flow"):
        refine(model, guide, x, family="ffg")
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        refine(model, guide, x, steps=0)

    def two_latents(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("b", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"2 continuous latent sites \['a', 'b'\]"):
        refine(model, two_latents, x)


def test_evaluate_and_reconstruct_refine_from_the_cli(tmp_path, capsys, mnist_binary):
    data = tmp_path / "digits.npz"
    g = torch.Generator().manual_seed(0)
    images = (torch.bernoulli(mnist_binary.x_train[:300], generator=g) * 255).to(torch.uint8)
    np.savez(data, x=images.reshape(-1, 28, 28).numpy())
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--z-dim", "4", "--hidden", "32",
                 "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--is-samples", "10", "--examples", "12",
                 "--refine", "30", "--ais-steps", "3", "--ais-chains", "2"]) == 0
    out = capsys.readouterr().out
    assert "amortization gap" in out and "approximation gap" in out
    r = json.loads((run / "evaluation.json").read_text())["refinement"]
    assert r["family"] == "gaussian" and r["steps"] == 30 and r["guide_in_family"]
    assert r["refined_elbo"] > r["amortized_elbo"]  # one epoch's encoder is far from q*
    assert r["amortization_gap"] == pytest.approx(r["refined_elbo"] - r["amortized_elbo"],
                                                  abs=1e-4)
    assert "approximation_gap" in r
    assert main(["reconstruct", str(run), "--n", "4", "--refine", "10"]) == 0
    assert (run / "figures" / "reconstructions_refined.png").read_bytes().startswith(b"\x89PNG")
