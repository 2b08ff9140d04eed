"""Labels through the whole chain: a model/guide pair of (x, y) gets each batch's own labels
in training, in the test loss, in evaluation and when a run is loaded again; a dataset
without labels is refused before anything is written."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import Config, DataError, Dataset, build_model, elbo, fit, log_likelihood
from pyro_vae.rundir import CONFIG, RunError, load_run
from pyro_vae.traces import takes_labels


class LabelChecking(nn.Module):
    """A tiny conditional model that checks, at every call, that y is the label of its own
    row (the data's first column is y / 10), and uses it: p(x | z, y)."""

    def __init__(self, x_dim: int = 5, z_dim: int = 2):
        super().__init__()
        self.z_dim = z_dim
        self.decoder = nn.Linear(z_dim + 1, x_dim)
        self.encoder = nn.Linear(x_dim + 1, 2 * z_dim)
        self.seen = 0

    def _check(self, x, y):
        assert y.shape == x.shape[:1] and y.dtype == torch.int64
        assert torch.equal((x[:, 0] * 10).round().long(), y), "a label away from its row"
        self.seen += len(y)
        return y.to(x.dtype)[:, None] / 10

    def model(self, x, y):
        pyro.module("decoder", self.decoder)
        code = self._check(x, y)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.z_dim), 1).to_event(1))
            mean = self.decoder(torch.cat([z, code.expand(*z.shape[:-1], 1)], -1))
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x)

    def guide(self, x, y):
        pyro.module("encoder", self.encoder)
        code = self._check(x, y)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(torch.cat([x, code], -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _labelled(n_train: int = 60, n_test: int = 20) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    x = torch.rand(n_train + n_test, 5, generator=g)
    x[:, 0] = y / 10
    return Dataset("toy", x[:n_train], x[n_train:], y[:n_train], y[n_train:])


def test_fit_evaluate_and_load_run_pass_each_rows_label(tmp_path):
    data = _labelled()
    m = build_model(LabelChecking)
    config = Config(dataset="toy", elbo="trace", batch_size=16, epochs=2)
    metrics = fit(m.model, m.guide, data, config, tmp_path / "run", quiet=True)
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(r["test_loss"]))
                                     for r in metrics)
    assert m.seen > 2 * 60  # training, the test loss and the parameter declaration
    bound = elbo(m.model, m.guide, data, num_particles=10)
    ll = log_likelihood(m.model, m.guide, data.x_test, num_samples=200, y=data.y_test)
    assert ll.shape == (20,) and ll.mean().item() > bound - 0.5  # IS above the ELBO
    with pytest.raises(ValueError, match="pass one label per row of x as y="):
        log_likelihood(m.model, m.guide, data.x_test, num_samples=10)


def test_a_model_of_labels_on_unlabelled_data_fails_before_training(tmp_path):
    data = _labelled()
    unlabelled = Dataset("vectors.csv", data.x_train, data.x_test)
    m = LabelChecking()
    with pytest.raises(DataError, match="dataset 'vectors.csv' has no labels"):
        fit(m.model, m.guide, unlabelled, Config(elbo="trace", epochs=1), tmp_path / "run",
            quiet=True)
    assert not (tmp_path / "run" / CONFIG).exists() and m.seen == 0  # nothing ran or written


def test_model_and_guide_must_agree_on_labels():
    m = LabelChecking()

    def guide_of_x(x):
        return m.guide(x, (x[:, 0] * 10).round().long())

    with pytest.raises(ValueError, match="the model takes labels .* the guide takes x alone"):
        takes_labels(m.model, guide_of_x)
    assert takes_labels(m.model, m.guide) and not takes_labels(guide_of_x, guide_of_x)


def test_a_run_of_labels_loads_again_with_its_labels(tmp_path):
    # load_run rebuilds the model from its factory and declares its parameters on a
    # labelled batch: the rebuilt pair scores the test set as the trained one did. Data
    # made in Python are not loaded by name: the caller gives them, and they must match.
    data = _labelled()
    m = build_model(LabelChecking)
    fit(m.model, m.guide, data, Config(dataset="toy", elbo="trace", epochs=1), tmp_path / "r",
        quiet=True)
    trained = log_likelihood(m.model, m.guide, data.x_test, num_samples=50, y=data.y_test)
    with pytest.raises(RunError, match="made in Python, not by load_dataset"):
        load_run(tmp_path / "r", factory=LabelChecking)
    other = _labelled()
    other.x_test[3, 1] += 0.25
    with pytest.raises(RunError, match="the contents of x_test"):
        load_run(tmp_path / "r", factory=LabelChecking, data=other)
    _, rebuilt, _ = load_run(tmp_path / "r", factory=LabelChecking, data=data)
    again = log_likelihood(rebuilt.model, rebuilt.guide, data.x_test, num_samples=50,
                           y=data.y_test)
    assert torch.allclose(trained, again)
