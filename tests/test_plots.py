"""Each figure function writes a PNG of the size it promises; plot_run writes them all."""

import matplotlib.image
import pytest
import torch

from pyro_vae import VAE, Config, fit
from pyro_vae.plots import (
    DPI,
    latent_embedding,
    latent_manifold,
    learning_curves,
    plot_run,
    reconstructions,
    samples,
)

SHAPE = (28, 28)


def _pixels(path):
    """(height, width) of a PNG, after checking it is one and not blank."""
    assert path.read_bytes().startswith(b"\x89PNG")
    image = matplotlib.image.imread(path)
    assert image[..., :3].std() > 0.01  # something was drawn
    return image.shape[:2]


@pytest.fixture
def tiny_vae():
    return VAE(x_dim=784, z_dim=2, hidden=(16,))


def test_learning_curves(tmp_path):
    metrics = [dict(epoch=e, train_loss=200 - 10 * e, test_loss=195 - 9 * e, seconds=1.5)
               for e in range(1, 6)]
    path = learning_curves({"a": metrics, "b": metrics[:3]}, tmp_path / "c.png", title="t")
    assert _pixels(path) == (4.2 * DPI, 10 * DPI)


def test_reconstructions_and_samples(tmp_path, tiny_vae, mnist_small):
    x = mnist_small.x_test[:12]
    h, w = _pixels(reconstructions(x, tiny_vae.reconstruct(x), SHAPE, tmp_path / "r.png"))
    assert w > 2 * h  # one wide row of data over one of reconstructions
    h, w = _pixels(samples(tiny_vae.sample(64), SHAPE, tmp_path / "s.png"))
    assert 0.7 < w / h < 1.3  # 8 x 8


def test_latent_manifold_decodes_the_grid_it_labels(tmp_path, tiny_vae):
    seen = []

    def decode(z):
        seen.append(z)
        return tiny_vae.likelihood(tiny_vae.decoder(z)).mean

    path = latent_manifold(decode, SHAPE, tmp_path / "m.png", n=5, extent=2.0)
    assert _pixels(path) == (7 * DPI, 7 * DPI)
    z = seen[0].reshape(5, 5, 2)
    assert z[0, 0].tolist() == [-2.0, 2.0]  # top left: z_1 smallest, z_2 largest
    assert z[-1, -1].tolist() == [2.0, -2.0]


@pytest.mark.parametrize("z_dim", [2, 5])
def test_latent_embedding_with_and_without_projection(tmp_path, z_dim):
    z = torch.randn(300, z_dim)
    labels = torch.arange(300) % 10
    assert _pixels(latent_embedding(z, labels, tmp_path / "e.png")) == (6.5 * DPI, 8 * DPI)
    assert _pixels(latent_embedding(z, None, tmp_path / "n.png")) == (6.5 * DPI, 8 * DPI)


def test_plot_run_writes_every_figure_and_fit_none(tmp_path, mnist_small):
    data = mnist_small.subset(train=300, test=100)
    config = Config(batch_size=100, epochs=2)
    vae = VAE(x_dim=784, z_dim=2, hidden=(32,))
    fit(vae.model, vae.guide, data, config, tmp_path / "run", quiet=True)
    figures = tmp_path / "run" / "figures"
    assert not figures.exists()  # the training loop draws nothing
    written, skipped = plot_run(tmp_path / "run")
    assert sorted(p.name for p in written) == sorted(
        f"{name}.png" for name in
        ("learning_curves", "reconstructions", "samples", "latent_manifold", "latent_embedding"))
    assert all(p.parent == figures for p in written) and skipped == []


def test_plot_run_skips_what_does_not_apply_with_a_reason(tmp_path, mnist_small):
    data = mnist_small.subset(train=200, test=100)
    vae = VAE(x_dim=784, z_dim=3, hidden=(16,))
    fit(vae.model, vae.guide, data, Config(batch_size=100, epochs=1), tmp_path / "run",
        quiet=True)
    written, skipped = plot_run(tmp_path / "run")
    assert "latent_manifold.png" not in {p.name for p in written}
    assert skipped == ["latent_manifold.png: it needs one continuous latent site of 2 "
                       "dimensions; this model has site 'z' of 3 dimensions"]
