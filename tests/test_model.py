import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_vae import VAE, make_elbo
from pyro_vae.networks import mlp

N, D, Z = 5, 12, 3


def test_model_and_guide_sites_shapes_and_plate():
    vae = VAE(x_dim=D, z_dim=Z, hidden=(8,))
    x = torch.bernoulli(torch.full((N, D), 0.5))
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)

    def sample_sites(trace):
        return {n for n, s in trace.nodes.items()
                if s["type"] == "sample" and not site_is_subsample(s)}

    assert sample_sites(model) == {"z", "x"}
    assert sample_sites(guide) == {"z"}
    for trace, name in [(model, "z"), (model, "x"), (guide, "z")]:
        site = trace.nodes[name]
        (frame,) = site["cond_indep_stack"]
        assert (frame.name, frame.size, frame.dim) == ("data", N, -1)
        assert site["fn"].batch_shape == (N,)
    assert model.nodes["z"]["fn"].event_shape == (Z,)
    assert model.nodes["z"]["value"].shape == (N, Z)
    assert model.nodes["x"]["is_observed"]
    assert torch.equal(model.nodes["x"]["value"], x)
    assert model.nodes["x"]["fn"].event_shape == (D,)
    # the model's z is the guide's z, and the prior is N(0, I)
    assert torch.equal(model.nodes["z"]["value"], guide.nodes["z"]["value"])
    prior = model.nodes["z"]["fn"].base_dist
    assert torch.equal(prior.loc, torch.zeros(N, Z)) and torch.equal(prior.scale, torch.ones(N, Z))
    params = set(pyro.get_param_store().keys())
    assert any(p.startswith("encoder$$$") for p in params)
    assert any(p.startswith("decoder$$$") for p in params)


def test_vectorized_particles_add_a_leading_dimension():
    vae = VAE(x_dim=D, z_dim=Z, hidden=(8,))
    x = torch.bernoulli(torch.full((N, D), 0.5))
    with pyro.plate("particles", 7, dim=-2):
        guide = poutine.trace(vae.guide).get_trace(x)
        model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    model.compute_log_prob()
    assert guide.nodes["z"]["value"].shape == (7, N, Z)
    assert model.nodes["x"]["log_prob"].shape == (7, N)


@pytest.mark.parametrize("likelihood, per_dim", [("bernoulli", 1), ("gaussian", 2)])
def test_decoder_emits_the_likelihoods_parameters(likelihood, per_dim):
    vae = VAE(x_dim=D, z_dim=Z, hidden=(8, 6), likelihood=likelihood)
    assert vae.decoder(torch.zeros(2, Z)).shape == (2, per_dim * D)
    sizes = [m.out_features for m in vae.encoder.modules() if isinstance(m, nn.Linear)]
    assert sizes == [8, 6, 2 * Z]  # encoder D-8-6-(loc, log-variance)
    sizes = [m.out_features for m in vae.decoder.modules() if isinstance(m, nn.Linear)]
    assert sizes == [6, 8, per_dim * D]  # the decoder mirrors the hidden sizes


def test_user_supplied_encoder_and_decoder_train():
    class MyEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp([D, 10, 2 * Z], "tanh")

        def forward(self, x):
            loc, raw = self.net(x).chunk(2, -1)
            return loc, nn.functional.softplus(raw) + 1e-3

    decoder = nn.Sequential(nn.Linear(Z, 10), nn.Tanh(), nn.Linear(10, D))
    vae = VAE(x_dim=D, z_dim=Z, encoder=MyEncoder(), decoder=decoder)
    assert vae.decoder is decoder
    x = torch.bernoulli(torch.full((N, D), 0.5))
    elbo = make_elbo("meanfield")
    elbo.loss_and_grads(vae.model, vae.guide, x)
    assert decoder[0].weight.grad is not None
    assert vae.encoder.net[0].weight.grad is not None


def test_sample_and_reconstruct_are_decoder_means_in_range():
    vae = VAE(x_dim=D, z_dim=Z, hidden=(8,))
    samples = vae.sample(9)
    assert samples.shape == (9, D) and ((samples >= 0) & (samples <= 1)).all()
    x = torch.bernoulli(torch.full((N, D), 0.5))
    assert vae.reconstruct(x).shape == (N, D)


def test_unknown_activation_lists_the_choices():
    with pytest.raises(ValueError, match="'swish'.*relu.*tanh"):
        VAE(x_dim=D, z_dim=Z, activation="swish")
