"""The doctests in pyro_vae/ start as every test in tests/ does (tests/conftest.py): an empty
param store, Pyro's validation on, one seed. Without it an example would find the modules of
the one before it in the param store under the same names."""

import pyro
import pytest


@pytest.fixture(autouse=True)
def fresh_pyro_for_doctests(request):
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
