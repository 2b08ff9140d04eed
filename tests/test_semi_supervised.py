"""The M2 model of experiments/semi_supervised.py: the enumerated bound of an unlabelled image
is the q(y | x)-weighted sum of the labelled bounds, and the labels are chosen as stated."""

import pyro
import pytest
import torch
from scripts import ROOT, load_script

from pyro_vae import Dataset, load_dataset, make_elbo
from pyro_vae.data import DataError, differences, fixed_binarization, load_recorded
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


def test_kept_labels_are_balanced_true_and_drawn_by_their_seed():
    y = torch.arange(1000) % 10
    data = Dataset("d", torch.rand(1000, 6), torch.rand(50, 6), y, torch.arange(50) % 10)
    kept = data.keep_labels(100, seed=0).y_train
    assert (kept >= 0).sum() == 100 and torch.equal(
        torch.bincount(kept[kept >= 0], minlength=10), torch.full((10,), 10))
    assert torch.equal(kept[kept >= 0], y[kept >= 0])  # kept labels are the true ones
    assert torch.equal(kept, data.keep_labels(100, seed=0).y_train)
    assert not torch.equal(kept, data.keep_labels(100, seed=1).y_train)
    with pytest.raises(DataError, match="keep 105 labels: it must be a positive multiple of "
                       "the 10 classes"):
        data.keep_labels(105)
    few = torch.cat([torch.arange(10), torch.zeros(20, dtype=torch.long)])  # one 1, ..., 9
    with pytest.raises(DataError, match="class 1 has only 1 training examples"):
        Dataset("d", torch.rand(30, 6), torch.rand(5, 6), few).keep_labels(20)


def test_a_held_out_validation_split_and_kept_labels_load_again_from_the_record():
    """held_out and keep_labels are recorded in the source, so a run's data reload."""
    data = load_dataset("mnist-binary").subset(train=1200, test=10)
    semi = data.held_out(200).keep_labels(50, seed=3)
    assert semi.x_train.shape[0] == 1000 and torch.equal(semi.x_test, data.x_train[1000:])
    assert torch.equal(semi.y_test, data.y_train[1000:])  # validation labels kept
    drawn = fixed_binarization(data.x_train[:1000], data.x_train[1000:])["test"]
    assert torch.equal(semi.evaluation("test"), drawn.float())  # one fixed draw, seed 0
    again = load_recorded(semi.record())
    assert differences(semi.record(), again) == []
    assert torch.equal(again.y_train, semi.y_train)
    with pytest.raises(DataError, match="already have validation 200"):
        semi.held_out(100)
    with pytest.raises(DataError, match="validation after labels: derive data in the order"):
        data.keep_labels(50).held_out(200)  # load_recorded could not replay it
    with pytest.raises(DataError, match="it must leave some of the 1200"):
        data.held_out(1200)


@pytest.mark.parametrize("separate", [True, False])
def test_labelled_batches_show_each_labelled_image_repeat_times(separate):
    y = torch.arange(2000) % 10
    data = Dataset("d", torch.rand(2000, 6), torch.rand(50, 6), y, torch.arange(50) % 10,
                   binarize=True).keep_labels(100)
    semi = M2_SCRIPT.LabelledBatches.of(data, repeat=3, separate=separate)
    batches = list(semi.batches("train", 200, torch.Generator().manual_seed(0), labels=True))
    labels = torch.cat([b[1] for b in batches])
    assert (labels >= 0).sum() == 300 and (labels < 0).sum() == 1900  # every image, 3x each
    assert all(((b[0] == 0) | (b[0] == 1)).all() for b in batches)  # binarized draws
    pure = [bool((b[1] >= 0).all() or (b[1] < 0).all()) for b in batches]
    assert all(pure) if separate else not all(pure)
    if separate:  # two labelled batches (200 + 100), spread among the ten unlabelled ones
        marked = [i for i, b in enumerate(batches) if (b[1] >= 0).all()]
        assert len(marked) == 2 and 0 < marked[0] < marked[1] < len(batches) - 1
    whole = Dataset("d", torch.rand(2000, 6), torch.rand(50, 6), y).keep_labels(2000)
    every = M2_SCRIPT.LabelledBatches.of(whole, repeat=2, separate=separate)  # no unlabelled
    assert sum(len(b[1]) for b in every.batches("train", 200, labels=True)) == 4000  # none lost
    [(_, y_test)] = semi.eval_batches("test", 50, labels=True)
    assert (y_test == -1).all()  # fit's test loss: the bound on log p(x), y summed out
    assert torch.equal(semi.labels("test"), data.y_test)  # the labels themselves stay
    assert semi.record() == data.record()  # what a run records: the data, not the batching


def test_the_class_signal_is_nil_for_a_decoder_that_ignores_y(tiny_m2):
    m2, x = tiny_m2
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():  # y one-hot is the last 10 inputs of the encoder and the decoder
        for net in (m2.encoder, m2.decoder):
            first = next(p for p in net.parameters() if p.dim() == 2)
            first[:, -10:] = 0.0
    m2.alpha = 2.0
    blind = M2_SCRIPT.class_signal(m2, x, y, draws=50)
    assert blind["class_spread"] < 0.5
    with torch.no_grad():
        next(p for p in m2.decoder.parameters() if p.dim() == 2)[:, -10:].normal_(
            0, 5.0, generator=torch.Generator().manual_seed(0))
    seeing = M2_SCRIPT.class_signal(m2, x, y, draws=50)
    assert seeing["class_spread"] > 1.0 and m2.alpha == 2.0  # alpha restored
    assert M2_SCRIPT.class_signal(m2, x, y, draws=50) == seeing  # its own seeded stream


def test_m1_m2_trains_m2_on_a_frozen_m1_and_bounds_log_p_of_the_images(tmp_path):
    """M1+M2: M1's parameters stay as its run saved them while M2 trains on its code, none
    of them enters the param store, and the stacked bound of an image is no more than its
    IS estimate of log p(x) (y summed out, z1 and z2 sampled); an M1 trained for other
    epochs than recorded is refused."""
    from pyro_vae import VAE, Config, fit
    from pyro_vae.evaluate import log_likelihood
    from pyro_vae.traces import replayed

    y = torch.arange(400) % 10
    x = torch.bernoulli(torch.full((400, 6), 0.3).add(0.05 * (y[:, None] % 3)))
    data = Dataset("d", x, x[:40], y, y[:40])
    pyro.set_rng_seed(0)
    m1 = VAE(6, z_dim=3, hidden=[8])
    fit(m1.model, m1.guide, data, Config(epochs=2, batch_size=50), tmp_path / "m1", quiet=True)
    with pytest.raises(ValueError, match="has trained 2 epochs, this stacked model was "
                       "built on it after 3"):
        M2_SCRIPT.StackedM2(str(tmp_path / "m1"), m1_epochs=3)
    every = M2_SCRIPT.StackedM2(str(tmp_path / "m1"), m1_epochs=2, z_dim=2, hidden=8)
    assert every.classifier[0].in_features == 3  # all of M1's code
    with pytest.raises(ValueError, match=r"m1_active must name some of M1's dimensions 0..2"):
        M2_SCRIPT.StackedM2(str(tmp_path / "m1"), m1_epochs=2, m1_active=[0, 3])
    # M2 models dimensions 0 and 2 of z1; dimension 1 keeps M1's prior
    stacked = M2_SCRIPT.StackedM2(str(tmp_path / "m1"), m1_epochs=2, m1_active=[0, 2],
                                  z_dim=2, hidden=8)
    assert stacked.classifier[0].in_features == 2
    model_trace, _ = replayed(stacked.model, stacked.guide, x[:4], y[:4])
    prior = model_trace.nodes["z1_labelled"]["fn"].base_dist
    assert (prior.loc[:, 1] == 0).all() and (prior.scale[:, 1] == 1).all()
    assert (prior.scale[:, [0, 2]] != 1).all()  # M2's p(z1 | y, z2)
    saved = {k: v.clone() for k, v in stacked.m1.state_dict().items()}
    assert all(torch.equal(saved[k], v) for k, v in m1.state_dict().items())  # the run's M1
    before = stacked.classifier[0].weight.clone()
    fit(stacked.model, stacked.guide, data.keep_labels(50), Config(elbo="enum", epochs=1,
        batch_size=50), quiet=True)
    assert not torch.equal(before, stacked.classifier[0].weight)  # M2 trained ...
    assert all(torch.equal(saved[k], v) for k, v in stacked.m1.state_dict().items())  # M1 not
    m1_tensors = {p.data_ptr() for p in stacked.m1.parameters()}
    assert not m1_tensors & {p.data_ptr() for _, p in pyro.get_param_store().named_parameters()}
    unlabelled = torch.full((40,), -1)
    bound = -make_elbo("enum", num_particles=200).loss(stacked.model, stacked.guide, x[:40],
                                                         unlabelled) / 40
    ll = log_likelihood(stacked.model, stacked.guide, x[:40], num_samples=200, y=unlabelled)
    assert bound <= ll.mean().item() + 0.05 and ll.mean().item() - bound < 5.0
    assert stacked.classify(x[:5]).shape == (5,) and stacked.restyle(x[:2]).shape == (2, 10, 6)
