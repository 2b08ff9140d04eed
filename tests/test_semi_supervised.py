"""The M2 model of experiments/semi_supervised.py: the enumerated bound of an unlabelled image
is the q(y | x)-weighted sum of the labelled bounds, and the labels are chosen as stated."""

import pyro
import pytest
import torch
from scripts import ROOT, load_script

from pyro_vae import Dataset, make_elbo
from pyro_vae.evaluate import elbo_estimator

M2_SCRIPT = load_script(ROOT / "experiments" / "semi_supervised.py")


@pytest.fixture
def tiny_m2():
    pyro.set_rng_seed(0)
    m2 = M2_SCRIPT.M2(x_dim=6, z_dim=2, hidden=8, alpha=0.0)
    x = torch.bernoulli(torch.full((3, 6), 0.4))
    return m2, x


def test_enumeration_sums_the_labelled_bounds_under_the_classifier(tiny_m2):
    """U(x) = sum_y q(y|x) (L(x, y) - log q(y|x)), Kingma et al. (2014), eq. 7: the loss of
    TraceEnum_ELBO on unlabelled images against the same sum built from labelled passes
    (alpha = 0: no classification term), each by 20,000 vectorized particles."""
    m2, x = tiny_m2
    unknown = torch.full((3,), -1)
    enum = make_elbo("enum", num_particles=20000)
    enumerated = enum.loss(m2.model, m2.guide, x, unknown)
    log_q = torch.log_softmax(m2.classifier(x), -1).detach()  # (3, 10)
    trace = make_elbo("trace", num_particles=20000)
    by_hand = 0.0
    for i in range(3):
        for y in range(10):
            labelled = trace.loss(m2.model, m2.guide, x[i : i + 1], torch.tensor([y]))
            by_hand += log_q[i, y].exp().item() * (labelled + log_q[i, y].item())
    assert enumerated == pytest.approx(by_hand, abs=0.1)  # both within ~0.03 of their means


def test_the_classification_term_weighs_labelled_images_only(tiny_m2):
    m2, x = tiny_m2
    y = torch.tensor([3, -1, 7])
    losses = {}
    for alpha in (0.0, 2.0):
        m2.alpha = alpha
        pyro.set_rng_seed(1)
        losses[alpha] = make_elbo("enum").loss(m2.model, m2.guide, x, y)
    log_q = torch.log_softmax(m2.classifier(x), -1).detach()
    cross_entropy = -(log_q[0, 3] + log_q[2, 7]).item()
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * cross_entropy, rel=1e-5)
    assert elbo_estimator(m2.guide, x, y) == "enum"  # evaluation sums y out too


def test_balanced_labels_and_the_repeated_labelled_images():
    y = torch.arange(1000) % 10
    kept = M2_SCRIPT.balanced_labels(y, 100, seed=0)
    assert (kept >= 0).sum() == 100 and torch.equal(
        torch.bincount(kept[kept >= 0], minlength=10), torch.full((10,), 10))
    assert torch.equal(kept[kept >= 0], y[kept >= 0])  # kept labels are the true ones
    assert torch.equal(kept, M2_SCRIPT.balanced_labels(y, 100, seed=0))
    assert not torch.equal(kept, M2_SCRIPT.balanced_labels(y, 100, seed=1))
    with pytest.raises(SystemExit, match="--labels 105: must be a positive multiple of 10"):
        M2_SCRIPT.balanced_labels(y, 105, seed=0)
    data = Dataset("d", torch.rand(1000, 6), torch.rand(50, 6), y, torch.arange(50) % 10)
    semi = M2_SCRIPT.semi_supervised(data, 100, seed=0, repeat=None)
    labelled = semi.y_train >= 0
    assert labelled.sum() == 900 and (~labelled).sum() == 900  # half of every batch, about
    assert (semi.y_test == -1).all()  # the test loss is the bound on log p(x)
