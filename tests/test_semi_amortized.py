"""Semi-amortized training: the gradients go where Kim et al.'s Algorithm 1 sends them."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.estimators import make_elbo
from pyro_vae.semi_amortized import MAX_STEP, STEP_SIZE, SemiAmortizedELBO

X, Z, N, P = 6, 2, 5, 3


def pair():
    torch.manual_seed(0)
    encoder, decoder = torch.nn.Linear(X, 2 * Z), torch.nn.Linear(Z, X)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return model, guide, encoder, decoder, torch.randn(N, X)


def by_hand(encoder, decoder, x, steps, eps):
    """Algorithm 1 written out: lambda_K from K natural-gradient steps, the decoder's
    gradient at lambda_K held fixed, the encoder's through the steps."""

    def bound(loc, log_scale, e):
        z = loc + log_scale.exp() * e
        log_p = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
                 + dist.Normal(decoder(z), 0.5).log_prob(x).sum(-1))
        return (log_p - dist.Normal(loc, log_scale.exp()).log_prob(z).sum(-1)).mean(0)

    loc, log_scale = encoder(x).chunk(2, -1)
    for k in range(steps):
        g_loc, g_ls = torch.autograd.grad(bound(loc, log_scale, eps[k]).sum(),
                                          (loc, log_scale), create_graph=True)
        step_loc, step_ls = STEP_SIZE * (2 * log_scale).exp() * g_loc, STEP_SIZE / 2 * g_ls
        norm = (step_loc.pow(2).sum(-1) + step_ls.pow(2).sum(-1)).sqrt()
        shrink = (MAX_STEP / norm).clamp(max=1.0)[..., None]
        loc, log_scale = loc + shrink * step_loc, log_scale + shrink * step_ls
    final = bound(loc, log_scale, eps[-1])
    encoder_grads = torch.autograd.grad(-final.sum(), list(encoder.parameters()))
    decoder_grads = torch.autograd.grad(-bound(loc.detach(), log_scale.detach(),
                                               eps[-1]).sum(), list(decoder.parameters()))
    return final.sum().item(), encoder_grads, decoder_grads


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_gradients_follow_algorithm_1(steps):
    model, guide, encoder, decoder, x = pair()
    torch.manual_seed(1)
    eps = torch.randn(steps + 1, P, N, Z)
    expected_bound, expected_encoder, expected_decoder = by_hand(encoder, decoder, x, steps, eps)
    torch.manual_seed(1)  # the estimator draws the same eps: the guide itself draws nothing
    loss = SemiAmortizedELBO(steps, num_particles=P).loss_and_grads(model, guide, x)
    assert loss == pytest.approx(-expected_bound, rel=1e-5)
    for p, g in zip(encoder.parameters(), expected_encoder, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-5)
    for p, g in zip(decoder.parameters(), expected_decoder, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-5)


def test_refinement_tightens_the_reported_bound():
    model, guide, *_, x = pair()
    amortized = [SemiAmortizedELBO(0, num_particles=200).loss(model, guide, x)]
    refined = [SemiAmortizedELBO(10, num_particles=200).loss(model, guide, x)]
    assert refined[0] < amortized[0] - 1  # a loss: the refined bound is the higher


def test_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="refine_steps is an option of 'semi-amortized' only"):
        make_elbo("trace", refine_steps=3)
    with pytest.raises(ValueError, match="refine_steps must be at least 0, got -1"):
        make_elbo("semi-amortized", refine_steps=-1)
    assert make_elbo("semi-amortized").steps == 5
