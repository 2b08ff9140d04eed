"""The worked model/guide edits of experiments/extending/: each script runs in --quick mode,
and each edit does what its header says."""

import csv
import json
import math

import pyro
import pytest
import torch
from scripts import ROOT, load_script, run_quick

from pyro_vae import VAE, log_likelihood, make_elbo
from pyro_vae.cli import main

FOLDER = ROOT / "experiments" / "extending"
SCRIPTS = {  # script -> (figure, number of rows, the edited run's directory and row)
    "kl_annealing": ("kl_per_dimension.png", 3, "warmup", 1),
    "learned_prior": ("samples.png", 2, "mixture", 1),
    "flow_guide": ("learning_curves.png", 2, "iaf", 1),
    "discretized_logistic": ("reconstructions.png", 2, "logistic", 1),
    "conditional": ("samples.png", 2, "conditional", 1),
}


def _load(name: str):
    return load_script(FOLDER / f"{name}.py")


TINY = dict(x_dim=20, z_dim=4, hidden=(16,))


@pytest.fixture
def tiny():
    pyro.set_rng_seed(0)
    base = VAE(**TINY)
    x = torch.bernoulli(torch.full((8, 20), 0.3))
    return base, x


def _edit(cls, **arguments):
    """The edit with the same networks as the tiny base VAE (same seed, built first)."""
    pyro.set_rng_seed(0)
    return cls(**TINY, **arguments)


@pytest.mark.usefixtures("mnist_binary")  # the data is fetched and verified before the runs
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_quick(name, tmp_path, capsys):
    out = run_quick(FOLDER / f"{name}.py", tmp_path / name)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # The edited model's run opens with pyro-vae evaluate and plot, given the edit's own
    # factory with --model (and the command says what to pass when it is missing), and the
    # rebuilt model is the trained one: the same IS-20 number as the script measured on it
    # (--quick: 100 test images, IS-20, seed 0).
    figure, n_rows, run_name, edited_row = SCRIPTS[name]
    run = out / "runs" / run_name
    factory = json.loads((run / "model.json").read_text())["factory"]
    assert factory.startswith(f"experiments/extending/{name}.py:")
    evaluate = ["evaluate", str(run), "--is-samples", "20", "--examples", "100"]
    assert main(evaluate) == 1
    assert f"pass --model {factory}" in capsys.readouterr().err
    assert main([*evaluate, "--model", factory]) == 0
    assert main(["plot", str(run), "--model", factory]) == 0
    printed = capsys.readouterr().out
    assert "100 examples" in printed and "wrote" in printed and "latent_embedding.png" in printed
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["log_likelihood"] == pytest.approx(float(rows[edited_row]["log_likelihood"]),
                                                         abs=1e-3)
    assert (run / "figures" / "samples.png").is_file()
    assert len(rows) == n_rows
    for row in rows:
        assert float(row["test_elbo"]) <= float(row["log_likelihood"]) + 3 * float(row["stderr"])
        assert 0 <= int(row["active_units"]) <= 50
    readme = (out / "README.md").read_text()
    assert all(f"| {row['run']} |" in readme for row in rows)
    assert (out / figure).read_bytes().startswith(b"\x89PNG") and f"]({figure})" in readme


def test_annealed_elbo_at_beta_one_is_the_base_elbo(tiny):
    base, x = tiny
    annealed = _edit(_load("kl_annealing").AnnealedVAE)  # the same networks
    for name in ("trace", "meanfield"):
        losses = []
        for model, guide in ((base.model, base.guide), (annealed.model, annealed.guide)):
            pyro.set_rng_seed(3)
            losses.append(make_elbo(name).loss(model, guide, x))
        assert losses[0] == losses[1]
    annealed.beta = 0.5  # and the scale does act: it halves the KL term
    pyro.set_rng_seed(3)
    assert make_elbo("meanfield").loss(annealed.model, annealed.guide, x) < losses[0]


def test_mixture_prior_meanfield_falls_back_to_the_sampled_kl(tiny):
    # No closed-form KL between a Gaussian and a mixture: TraceMeanField_ELBO then samples
    # log p(z) - log q(z|x), which is exactly Trace_ELBO on the same draws.
    base, x = tiny
    vae = _edit(_load("learned_prior").MixturePriorVAE)
    losses = {}
    for name in ("trace", "meanfield"):
        pyro.set_rng_seed(4)
        losses[name] = make_elbo(name).loss(vae.model, vae.guide, x)
    assert losses["meanfield"] == pytest.approx(losses["trace"], rel=1e-6)
    pyro.set_rng_seed(4)  # while with the standard normal prior the two differ
    assert make_elbo("meanfield").loss(base.model, base.guide, x) != pytest.approx(
        make_elbo("trace").loss(base.model, base.guide, x), rel=1e-6)


def test_flow_guide_scores_its_samples_and_its_likelihood_is_above_its_elbo(tiny):
    base, x = tiny
    vae = _edit(_load("flow_guide").FlowGuideVAE)
    for flow in vae.flows:  # away from the identity the flows start at
        for p in flow.parameters():
            p.data.normal_(0, 0.3)
    trace = pyro.poutine.trace(vae.guide).get_trace(x)
    q = trace.nodes["z"]["fn"]
    z = trace.nodes["z"]["value"]
    log_q = q.log_prob(z)
    assert log_q.shape == (8,) and torch.isfinite(log_q).all()
    gaussian = torch.distributions.Normal(*vae.encoder(x)).log_prob(z).sum(-1)
    assert not torch.allclose(log_q, gaussian)  # the flow does change the density

    elbo = -make_elbo("trace", num_particles=4000).loss(vae.model, vae.guide, x) / 8
    ll = log_likelihood(vae.model, vae.guide, x, num_samples=4000).mean().item()
    assert math.isfinite(ll) and ll >= elbo


def test_discretized_logistic_is_a_probability_mass_over_the_256_levels():
    levels = torch.arange(256.0) / 255
    module = _load("discretized_logistic")
    for loc, scale in ((0.0, 0.01), (0.5, 0.002), (0.3, 0.3), (1.2, 0.05), (-3.0, 1e-4)):
        q = module.DiscretizedLogistic(torch.full((256,), loc), torch.tensor(scale))
        log_p = q.log_prob(levels)
        assert torch.isfinite(log_p).all() and (log_p <= 0).all()
        assert log_p.double().exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_conditional_vae_reads_the_label_in_model_and_guide(tiny):
    cvae = _edit(_load("conditional").ConditionalVAE)
    _, x = tiny
    y = torch.arange(8) % 10
    q = [pyro.poutine.trace(cvae.guide).get_trace(x, labels).nodes["z"]["fn"].mean
         for labels in (y, (y + 1) % 10)]
    assert q[0].shape == (8, 4) and not torch.allclose(q[0], q[1])  # q(z | x, y)
    grid = cvae.samples_by_class(3)  # rows: classes; columns: one z each
    assert grid.shape == (30, 20)
    assert not torch.allclose(grid[0], grid[3])  # one z, classes 0 and 1: p(x | z, y) differs


def test_conditional_vae_compiles_with_its_labels(tiny):
    # the compiled estimator replays a graph of (x, y): same loss and gradients as Pyro's
    cvae = _edit(_load("conditional").ConditionalVAE)
    _, x = tiny
    y = torch.arange(8) % 10
    results = []
    for jit in (False, True):
        for p in cvae.parameters():
            p.grad = None
        pyro.set_rng_seed(5)
        elbo = make_elbo("meanfield", jit=jit)
        elbo.warmup = 0  # captured at once, not after Pyro's first 50 steps
        loss = elbo.loss_and_grads(cvae.model, cvae.guide, x, y)
        assert not jit or elbo.eager_reason is None  # the labelled step is captured
        results.append((loss, [p.grad.clone() for p in cvae.encoder.parameters()]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(results[0][1], results[1][1],
                                                               strict=True))
