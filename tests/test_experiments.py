"""Every experiment runs end to end in its --quick mode and writes what it promises."""

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """An experiment script as a module, for the constants it defines."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_quick(name: str, tmp_path: Path) -> Path:
    """Run ``experiments/<name>.py --quick`` into a fresh folder; return that folder."""
    out = tmp_path / name
    script = ROOT / "experiments" / f"{name}.py"
    r = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.usefixtures("mnist_binary")  # the data is fetched and verified before the run
def test_likelihood_study_quick(tmp_path):
    out = _run_quick("likelihoods", tmp_path)
    LIKELIHOODS = _load("likelihoods").LIKELIHOODS  # noqa: N806
    readme = (out / "README.md").read_text()
    for name in LIKELIHOODS:
        assert f"| {name} | 1 |" in readme  # a row per likelihood in the comparison table
        trained = (out / "runs" / name / "checkpoint.pt").is_file()
        assert trained or f"| {name} | stopped |" in readme
    assert "| 148.437 | 148.437 |" in readme and "| 27.051 | 747.499 |" in readme
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["likelihood"] for row in rows} <= set(LIKELIHOODS)
    assert len({row["likelihood"] for row in rows}) >= 5  # the ill-posed gaussian may stop
    for png in ("reconstructions.png", "samples.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")


@pytest.mark.usefixtures("mnist_binary")
def test_latent2d_study_quick(tmp_path):
    out = _run_quick("latent2d", tmp_path)
    readme = (out / "README.md").read_text()
    assert "| 152.1370 |" in readme and "| 151.3254 |" in readme  # the reference beside ours
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(row["run"], row["epoch"]) for row in rows} == {
        (run, epoch) for run in ("sgd", "adam") for epoch in ("1", "2")}
    assert all(100 < float(row["test_loss"]) < 400 for row in rows)
    figures = ["reconstructions", "samples", "latent_manifold", "latent_embedding"]
    for png in ["learning_curves.png"] + [f"{r}-{f}.png" for r in ("sgd", "adam") for f in figures]:
        assert (out / png).read_bytes().startswith(b"\x89PNG")
        assert f"]({png})" in readme  # every figure is embedded
