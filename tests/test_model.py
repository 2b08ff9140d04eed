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


# ------------------------------------------------------------------ convolutional networks


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 20, 30), (3, 7, 5)])
def test_conv_networks_take_flat_rows_with_leading_dimensions(shape):
    from pyro_vae.networks import ConvDecoder, ConvEncoder

    d = shape[0] * shape[1] * shape[2]
    encoder, decoder = ConvEncoder(shape, [16], 3), ConvDecoder(3, [16], shape, 2)
    x = torch.rand(4, 6, d)  # (particles, batch, C*H*W)
    loc, scale = encoder(x)
    assert loc.shape == scale.shape == (4, 6, 3) and (scale > 0).all()
    assert decoder(loc).shape == (4, 6, 2 * d)
    # leading dimensions are only a batch: one row gives what it gives inside the batch
    assert torch.allclose(encoder(x[1, 2])[0], loc[1, 2], atol=1e-6)


def test_conv_vae_trains_scores_and_records_its_network():
    from pyro_vae import log_likelihood

    pyro.set_rng_seed(0)
    vae = VAE(x_dim=3 * 8 * 12, z_dim=4, hidden=[32], network="conv", image_shape=(3, 8, 12),
              likelihood="continuous-bernoulli")
    assert vae.spec.arguments["network"] == "conv"
    assert vae.spec.arguments["image_shape"] == [3, 8, 12]
    assert "network" not in VAE(x_dim=20).spec.arguments  # an MLP's spec reads as before
    x = torch.rand(16, 3 * 8 * 12)
    elbo = make_elbo("iwae", num_particles=3)  # vectorized particles through the convolutions
    before = elbo.loss(vae.model, vae.guide, x)
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    for _ in range(30):
        elbo.loss_and_grads(vae.model, vae.guide, x)
        optimizer.step()
        optimizer.zero_grad()
    assert elbo.loss(vae.model, vae.guide, x) < before
    ll = log_likelihood(vae.model, vae.guide, x[:3], num_samples=50)
    assert ll.shape == (3,) and torch.isfinite(ll).all()


def test_conv_vae_refuses_vectors_and_wrong_shapes():
    with pytest.raises(ValueError, match="network 'conv' is for images.*vectors of 10"):
        VAE(x_dim=10, network="conv")
    with pytest.raises(ValueError, match="of 10 numbers in all, got \\(1, 3, 3\\)"):
        VAE(x_dim=10, network="conv", image_shape=(1, 3, 3))
    with pytest.raises(ValueError, match="unknown network 'resnet'; choose from: mlp, conv"):
        VAE(x_dim=10, network="resnet")
