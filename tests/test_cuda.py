"""The GPU path as written: training (compiled and not), exact resume with deterministic
kernels, the one evaluation binarization, IS and AIS, a 2-D latent's figures, the conv
network and a model of plain pyro.params, on CUDA. Skipped, by name, without a GPU;
``benchmarks/gpu_check.sh`` runs the same path from the command line, with torchrun."""

import pyro
import pytest
import torch

from pyro_vae import VAE, Config, ais_log_likelihood, fit, load_run, log_likelihood
from pyro_vae.plots import plot_run
from pyro_vae.rundir import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="tests/test_cuda.py needs a CUDA GPU; none here")


def _train(data, run, epochs, resume=False, **vae):
    pyro.set_rng_seed(0)
    model = VAE(x_dim=data.x_dim, **{"z_dim": 2, "hidden": [64], **vae})
    config = Config(batch_size=100, epochs=epochs, device="cuda", jit=not vae)
    fit(model.model, model.guide, data, config, run, resume=resume, quiet=True)
    return load_checkpoint(run)["params"]


@pytest.mark.parametrize("vae", [{}, {"network": "conv", "image_shape": (1, 28, 28)}],
                         ids=["mlp-compiled", "conv"])
def test_resume_on_cuda_is_bit_exact(mnist_small, tmp_path, vae):
    # Deterministic kernels (Config.deterministic, on by default): ConvTranspose2d's
    # backward included, a run resumed after epoch 1 ends where the straight run ends.
    data = mnist_small.subset(train=600, test=200)
    straight = _train(data, tmp_path / "a", 2, **vae)
    _train(data, tmp_path / "b", 1, **vae)
    resumed = _train(data, tmp_path / "b", 2, resume=True, **vae)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_evaluation_binarization_is_the_cpus_on_cuda(mnist_small):
    on_gpu = mnist_small.to("cuda")
    for size in (7, 1000):
        got = torch.cat(list(on_gpu.eval_batches("test", size)))
        assert got.is_cuda and torch.equal(got.cpu(), mnist_small.evaluation("test"))


def test_a_cuda_run_evaluates_plots_and_opens_on_the_cpu(mnist_small, tmp_path):
    data = mnist_small.subset(train=600, test=200)
    _train(data, tmp_path / "run", 1)
    _, built, loaded = load_run(tmp_path / "run")
    x = loaded.evaluation("test")[:20]
    assert x.is_cuda
    ll = log_likelihood(built.model, built.guide, x, num_samples=50)
    ais = ais_log_likelihood(built.model, built.guide, x, steps=10, chains=4)
    assert torch.isfinite(ll).all() and torch.isfinite(ais.log_likelihood).all()
    written, _ = plot_run(tmp_path / "run")
    assert "latent_manifold.png" in {p.name for p in written}  # the grid decoded on CUDA
    _, on_cpu, cpu_data = load_run(tmp_path / "run", device="cpu")
    cpu_ll = log_likelihood(on_cpu.model, on_cpu.guide, cpu_data.evaluation("test")[:20],
                            num_samples=50)
    assert abs(cpu_ll.mean().item() - ll.mean().item()) < 2.0  # other draws, one model


def test_a_model_of_plain_pyro_params_trains_on_cuda(mnist_small, tmp_path):
    import pyro.distributions as dist

    def model(x):
        w = pyro.param("w", torch.zeros(2, 784))  # made on the CPU, as a user writes it
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=z @ w).to_event(1), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.zeros(784, 2))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ loc / 784, 1.0).to_event(1))

    metrics = fit(model, guide, mnist_small.subset(train=300, test=100),
                  Config(elbo="trace", batch_size=100, epochs=2, device="cuda"), None,
                  quiet=True)
    assert metrics[1]["test_loss"] < metrics[0]["test_loss"]
    assert pyro.param("w").is_cuda
