"""The per-data-point importance-weighted estimators (pyro_vae.iwae), against what they
claim: the bound recomputed with torch alone from the same draws (also under
poutine.scale), Pyro's RenyiELBO where it is right, unbiased DReG gradients with a smaller
variance than IWAE's, and zero STL/DReG guide gradients at the exact posterior, with one
latent site and with two."""

import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F

from pyro_vae import VAE, make_elbo
from pyro_vae.iwae import DReG, ImportanceWeightedELBO, StickingTheLanding, tail_weights

K = 6


@pytest.fixture
def vae_and_x():
    pyro.set_rng_seed(0)
    vae = VAE(x_dim=20, z_dim=4, hidden=(16,))
    x = torch.bernoulli(torch.full((8, 20), 0.3))
    return vae, x


def _by_torch(vae, x, z, bound):
    """The bound of each point recomputed from the draws z (k, n, d), with torch alone."""
    with torch.no_grad():
        loc, scale = vae.encoder(x)
        logits = vae.decoder(z)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_lik = (x * logits - F.softplus(logits)).sum(-1)
    log_w = log_prior + log_lik - log_q  # (k, n)
    return bound(log_w)


BOUNDS = {
    "iwae": lambda lw: torch.logsumexp(lw, 0) - math.log(lw.shape[0]),
    "iwae-dreg": lambda lw: torch.logsumexp(lw, 0) - math.log(lw.shape[0]),
    "stl": lambda lw: torch.logsumexp(lw, 0) - math.log(lw.shape[0]),
    "renyi": lambda lw: (torch.logsumexp(0.5 * lw, 0) - math.log(lw.shape[0])) / 0.5,
    "tail-adaptive": lambda lw: lw.mean(0),  # it reports the ELBO of its particles
}


@pytest.mark.parametrize("scale", [None, 0.3, "per-point"])
@pytest.mark.parametrize("name", list(BOUNDS))
def test_the_loss_is_the_per_point_bound_recomputed_with_torch(vae_and_x, name, scale):
    vae, x = vae_and_x
    elbo = make_elbo(name, num_particles=K, alpha=0.5 if name == "renyi" else None)
    weights = {None: torch.ones(8), 0.3: torch.full((8,), 0.3),
               "per-point": torch.linspace(0.5, 2.0, 8)}[scale]
    model, guide = vae.model, vae.guide
    if scale is not None:  # poutine.scale around model and guide alike weighs each point
        s = 0.3 if scale == 0.3 else weights
        model, guide = poutine.scale(vae.model, scale=s), poutine.scale(vae.guide, scale=s)
    elbo.loss(model, guide, x)  # the first call guesses the plate nesting
    pyro.set_rng_seed(1)
    loss = elbo.loss(model, guide, x)
    pyro.set_rng_seed(1)
    grad_loss = elbo.loss_and_grads(model, guide, x)  # the same draws, with gradients
    pyro.set_rng_seed(1)
    z = elbo.weights(model, guide, x).guide_trace.nodes["z"]["value"].detach()
    assert z.shape == (K, 8, 4)
    expected = -(weights * _by_torch(vae, x, z, BOUNDS[name])).sum().item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert grad_loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name, alpha", [("iwae", 0.0), ("renyi", 0.5)])
def test_pyros_renyi_elbo_agrees_without_a_scale_and_not_with_one(vae_and_x, name, alpha):
    vae, x = vae_and_x
    ours = make_elbo(name, num_particles=K, alpha=alpha or None)
    pyros = pyro.infer.RenyiELBO(alpha=alpha, num_particles=K, vectorize_particles=True)
    for scale in (1.0, 0.3):
        model, guide = poutine.scale(vae.model, scale), poutine.scale(vae.guide, scale)
        losses = []
        for elbo in (ours, pyros):
            elbo.loss(model, guide, x)
            pyro.set_rng_seed(2)
            losses.append(elbo.loss(model, guide, x))
        if scale == 1.0:  # the same draws, the same per-point bound
            assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        else:  # Pyro's log-sum-exp over scaled log-weights is another objective
            assert losses[0] == pytest.approx(0.3 * _unscaled(ours, vae, x), rel=1e-5)
            assert losses[1] != pytest.approx(losses[0], rel=1e-3)


def _unscaled(elbo, vae, x):
    pyro.set_rng_seed(2)
    return elbo.loss(vae.model, vae.guide, x)


def test_sites_scaled_differently_and_non_reparameterized_guides_are_refused(vae_and_x):
    vae, x = vae_and_x

    def model(x):  # a KL weight on z alone: no importance-weighted meaning
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=0.5):
                z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 4), 1.0).to_event(1))
            pyro.sample("x", vae.likelihood(vae.decoder(z)), obs=x)

    guide = poutine.scale(vae.guide, scale=0.5)
    with pytest.raises(ValueError, match="model site 'z' and model site 'x' are scaled "
                                         "differently \\(0.5 and 1.0\\)"):
        make_elbo("iwae", num_particles=2).loss(model, guide, x)

    def discrete_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(x.shape[0])))

    def discrete_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.3 * torch.ones(x.shape[0])))

    with pytest.raises(ValueError, match="guide site 'c' \\(Bernoulli\\) cannot be "
                                         "reparameterized.*use 'vimco'.*'graph', 'trace'"):
        make_elbo("iwae-dreg", num_particles=2).loss(discrete_model, discrete_guide, x)

    def global_model(x):  # a latent outside the data plate has no per-point weight
        pyro.sample("g", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="cannot tell the plate over the data: 0 plates"):
        make_elbo("stl").loss(global_model, global_model, x)


def test_tail_weights_rank_the_particles_of_each_point_alone():
    log_w = torch.tensor([[0.0, 5.0], [2.0, -1.0], [1.0, 0.0]])  # (k=3, n=2)
    gamma = tail_weights(log_w, beta=-1.0)
    # F(w_i) = #{j: w_j >= w_i} / k: point 0 ranks its particles 3, 1, 2 (of 3)
    expected0 = torch.tensor([1 / 1, 1 / (1 / 3), 1 / (2 / 3)])
    assert torch.allclose(gamma[:, 0], expected0 / expected0.sum())
    assert gamma[0, 1] == gamma[:, 1].max()  # the heaviest particle of point 1
    moved = log_w.clone()
    moved[:, 1] += torch.tensor([0.0, 10.0, 0.0])  # reorder point 1 only
    assert torch.equal(tail_weights(moved)[:, 0], gamma[:, 0])
    assert torch.allclose(gamma.sum(0), torch.ones(2))


# ---------------------------------------------------------------- linear-Gaussian models

D, Z, SIGMA = 3, 2, 0.7
W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # orthogonal columns
B = torch.tensor([0.3, -0.2, 0.1])
# The exact posterior of z ~ N(0, I), x | z ~ N(Wz + b, sigma^2 I): diagonal here.
POST_VAR = 1 / (1 + (W**2).sum(0) / SIGMA**2)  # (Z,)
POST_A = POST_VAR[:, None] * W.T / SIGMA**2  # mean = A (x - b)


def linear_model(x):
    w = pyro.param("W", W.clone())
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ w.T + B, SIGMA).to_event(1), obs=x)


def linear_guide(x, off=0.0):
    """q(z | x), the exact posterior moved by ``off`` in every parameter."""
    a = pyro.param("A", POST_A + off)
    log_s = pyro.param("log_s", 0.5 * POST_VAR.log() - off)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal((x - B) @ a.T, log_s.exp()).to_event(1))


def _data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, Z, generator=g)
    return z @ W.T + B + SIGMA * torch.randn(4, D, generator=g)


def _gradient_draws(elbo, model, guide, x, draws):
    """``draws`` gradients of each parameter, stacked: {name: (draws, ...)}."""
    store = pyro.get_param_store()
    result = {}
    for _ in range(draws):
        for p in store.values():
            p.unconstrained().grad = None
        elbo.loss_and_grads(model, guide, x)
        for name in store.keys():
            grad = store.get_param(name).unconstrained().grad
            result.setdefault(name, []).append(torch.zeros(()) if grad is None else grad.clone())
    return {name: torch.stack(g) for name, g in result.items()}


def _guide_gradients(name, k, off, draws, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = lambda x: linear_guide(x, off)  # noqa: E731
    grads = _gradient_draws(make_elbo(name, num_particles=k), linear_model, guide, _data(), draws)
    return torch.cat([grads["A"].flatten(1), grads["log_s"].flatten(1)], 1)  # (draws, 8)


def _snr(g):
    return (g.mean(0).abs() / g.std(0)).mean().item()


def test_dreg_and_iwae_guide_gradients_agree_in_mean():
    # Both are unbiased for the gradient of the same bound L_10: within 4 standard errors.
    draws = 600
    iwae = _guide_gradients("iwae", 10, 0.3, draws, seed=0)
    dreg = _guide_gradients("iwae-dreg", 10, 0.3, draws, seed=1)
    se = (iwae.var(0) / draws + dreg.var(0) / draws).sqrt()
    assert ((iwae.mean(0) - dreg.mean(0)).abs() < 4 * se).all()
    assert (iwae.mean(0).abs() > 4 * iwae.std(0) / draws**0.5).any()  # a gradient to agree on


def test_near_the_posterior_dreg_varies_less_and_iwaes_snr_falls_with_k():
    # Rainforth et al. (2018): IWAE's guide-gradient SNR falls like 1/sqrt(k); DReG's
    # variance vanishes as q approaches the posterior, IWAE's (its score term) does not.
    g = {(name, k): _guide_gradients(name, k, 0.1, 300) for name in ("iwae", "iwae-dreg")
         for k in (2, 50)}
    for k in (2, 50):
        assert g["iwae-dreg", k].var(0).sum() < 0.5 * g["iwae", k].var(0).sum()
        assert _snr(g["iwae-dreg", k]) > 2 * _snr(g["iwae", k])
    assert _snr(g["iwae", 50]) < 0.8 * _snr(g["iwae", 2])


def test_dreg_gives_the_model_iwaes_gradient_from_the_same_draws():
    pyro.clear_param_store()
    x = _data()
    guide = lambda x: linear_guide(x, 0.3)  # noqa: E731
    grads = {}
    for name in ("iwae", "iwae-dreg"):
        elbo = make_elbo(name, num_particles=5)
        elbo.loss(linear_model, guide, x)
        pyro.set_rng_seed(3)
        grads[name] = _gradient_draws(elbo, linear_model, guide, x, 1)
    assert torch.allclose(grads["iwae"]["W"], grads["iwae-dreg"]["W"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grads["iwae"]["A"], grads["iwae-dreg"]["A"], rtol=1e-3)


@pytest.mark.parametrize("name, k", [("stl", 1), ("stl", 5), ("iwae-dreg", 1), ("iwae-dreg", 5)])
def test_at_the_exact_posterior_stl_and_dreg_guide_gradients_are_zero(name, k):
    pyro.clear_param_store()
    x = _data()
    pyro.set_rng_seed(0)
    grads = _gradient_draws(make_elbo(name, num_particles=k), linear_model, linear_guide, x, 5)
    for param in ("A", "log_s"):
        assert grads[param].abs().max() < 1e-4, (param, grads[param])
    pyro.set_rng_seed(0)
    iwae = _gradient_draws(make_elbo("iwae", num_particles=k), linear_model, linear_guide, x, 5)
    assert iwae["log_s"].abs().max() > 1e-2  # the score term that STL and DReG drop


# A chain z2 -> z1 -> x with a bottom-up guide q(z1 | x) q(z2 | z1): exact when each factor
# is the true conditional. q(z2 | z1)'s parameters depend on z1, so dropping only the score
# term (not z1's path through them) needs the guide re-run on detached draws.
A_, S1, B_, S = 0.8, 0.6, 1.5, 0.5
V1 = A_**2 + S1**2  # marginal variance of z1
Q1_VAR = 1 / (1 / V1 + B_**2 / S**2)
Q2_VAR = 1 / (1 + A_**2 / S1**2)


def chain_model(x):
    with pyro.plate("data", x.shape[0]):
        z2 = pyro.sample("z2", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
        z1 = pyro.sample("z1", dist.Normal(A_ * z2, S1).to_event(1))
        pyro.sample("x", dist.Normal(B_ * z1, S).to_event(1), obs=x)


def chain_guide(x):
    c1 = pyro.param("c1", torch.tensor(Q1_VAR * B_ / S**2))
    log_e1 = pyro.param("log_e1", torch.tensor(0.5 * math.log(Q1_VAR)))
    c2 = pyro.param("c2", torch.tensor(Q2_VAR * A_ / S1**2))
    log_e2 = pyro.param("log_e2", torch.tensor(0.5 * math.log(Q2_VAR)))
    with pyro.plate("data", x.shape[0]):
        z1 = pyro.sample("z1", dist.Normal(c1 * x, log_e1.exp()).to_event(1))
        pyro.sample("z2", dist.Normal(c2 * z1, log_e2.exp()).to_event(1))


@pytest.mark.parametrize("estimator", [StickingTheLanding, DReG])
def test_with_two_latent_sites_the_exact_posterior_still_gives_zero(estimator):
    pyro.clear_param_store()
    x = torch.tensor([[0.5], [-1.0], [2.0]])
    pyro.set_rng_seed(0)
    elbo = estimator(num_particles=4)
    grads = _gradient_draws(elbo, chain_model, chain_guide, x, 5)
    for param in ("c1", "log_e1", "c2", "log_e2"):
        assert grads[param].abs().max() < 1e-4, (param, grads[param])
    # the bound is log p(x) exactly, for every draw: log w is the same for all particles
    w = elbo.weights(chain_model, chain_guide, x)
    assert torch.allclose(w.log_w, w.log_w[:1].expand_as(w.log_w), atol=1e-5)
    exact = dist.Normal(0.0, math.sqrt(B_**2 * V1 + S**2)).log_prob(x[:, 0])
    assert torch.allclose(w.log_w[0], exact, atol=1e-5)


def test_an_estimator_with_one_particle_is_the_elbo(vae_and_x):
    vae, x = vae_and_x
    ours = ImportanceWeightedELBO(num_particles=1)
    trace = pyro.infer.Trace_ELBO()
    for elbo in (ours, trace):
        elbo.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(4)
    a = ours.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(4)
    assert a == pytest.approx(trace.loss(vae.model, vae.guide, x), rel=1e-5)


def test_a_subsampled_plate_scales_each_points_bound_by_n_over_b(vae_and_x):
    # pyro.plate("data", N, subsample_size=B) scales every site by N / B: the loss is
    # (N / B) times the per-point bounds of the points drawn, recomputed with torch.
    vae, x = vae_and_x
    n, b = x.shape[0], 4

    def model(x):
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", n, subsample_size=b) as index:
            z = pyro.sample("z", dist.Normal(x.new_zeros(b, 4), 1.0).to_event(1))
            pyro.sample("x", vae.likelihood(vae.decoder(z)), obs=x[index])

    def guide(x):
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", n, subsample_size=b) as index:
            loc, scale = vae.encoder(x[index])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    elbo = make_elbo("iwae", num_particles=K)
    elbo.loss(model, guide, x)
    pyro.set_rng_seed(5)
    loss = elbo.loss(model, guide, x)
    pyro.set_rng_seed(5)
    w = elbo.weights(model, guide, x)
    assert w.scale == n / b
    index = w.guide_trace.nodes["data"]["value"]
    z = w.guide_trace.nodes["z"]["value"].detach()
    expected = -(n / b) * _by_torch(vae, x[index], z, BOUNDS["iwae"]).sum().item()
    assert loss == pytest.approx(expected, rel=1e-5)
