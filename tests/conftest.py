import pyro
import pytest

from pyro_vae import load_dataset


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty param store, Pyro's validation on, and one seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def mnist_binary():
    """Real MNIST with dynamic binarization, through the project's own fetch chain."""
    return load_dataset("mnist-binary")


@pytest.fixture(scope="session")
def mnist_small(mnist_binary):
    """A real MNIST subset small enough to train on in seconds."""
    return mnist_binary.subset(train=2000, test=500)
