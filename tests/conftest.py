import hashlib
from pathlib import Path

import pyro
import pytest

from pyro_vae import load_dataset

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _fingerprint(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: its path (relative) -> (size, SHA-256 of its content);
    a study's training runs (any ``runs/`` folder, git-ignored, where a full run in the
    background may be writing: ``iwae_paper/our_recipe/runs/``) aside."""
    prints = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()
                       and "runs" not in p.relative_to(folder).parts[:-1]):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        prints[path.relative_to(folder).as_posix()] = (path.stat().st_size, digest.hexdigest())
    return prints


@pytest.fixture(scope="session", autouse=True)
def results_untouched():
    """No test writes into the committed results/ folder: every file there (path, size and
    SHA-256) is the same at the end of the session as at its start."""
    before = _fingerprint(RESULTS)
    yield
    after = _fingerprint(RESULTS)
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    if changed or added or removed:
        raise AssertionError(
            f"the test session wrote into {RESULTS}: "
            + "; ".join(f"{what}: {', '.join(paths)}" for what, paths in
                        (("changed", changed), ("added", added), ("removed", removed)) if paths))


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
