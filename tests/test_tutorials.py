"""The tutorials in docs/tutorials/: each script runs top to bottom at its quick size, and
each committed notebook holds exactly its script's cells, executed, with their figures.

A tutorial is a jupytext percent script (``docs/tutorials/<name>.py``) and the notebook that
``make tutorials`` executes from it at full size (``<name>.ipynb``, rendered by the docs).
"""

import math
import runpy
from pathlib import Path

import jupytext
import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")  # before pyplot: the scripts' plt.show() draws nothing here
import matplotlib.pyplot as plt  # noqa: E402

TUTORIALS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("*.py"))
NAMES = [s.stem for s in SCRIPTS]


def finite(*values) -> bool:
    return all(math.isfinite(v) for v in values)


# What each tutorial must have found at its quick size, read from the names it defines.
CHECKS = {
    "first_vae": {
        "one finite epoch": lambda n: len(n["metrics"]) == 1
        and finite(n["metrics"][-1]["test_loss"]),
        "IS-K at or above the ELBO": lambda n: n["ll"] >= n["test_elbo"] - 1,
        "a 2-D code per test image": lambda n: tuple(n["z_test"].shape) == (500, 2),
        "the embedding drawn": lambda n: (n["FIGURES"] / "latent_embedding.png").is_file(),
    },
    "own_model": {
        "the CLI opened the run": lambda n: n["evaluate_status"] == 0 and n["plot_status"] == 0,
        "IS-K at or above the ELBO": lambda n: n["evaluation"]["examples"] == 100
        and n["evaluation"]["log_likelihood"] >= n["evaluation"]["elbo"] - 1,
        "the broken rule named": lambda n: "pyro.plate" in n["plate_error"],
        "the manifold drawn": lambda n: (n["FIGURES"] / "latent_manifold.png").is_file(),
    },
    "estimators": {
        "finite bounds": lambda n: all(finite(n["summary"][e][k][0]) for e in n["summary"]
                                       for k in ("bound", "elbo", "log_likelihood")),
        "IS-K at or above each ELBO": lambda n: all(r["log_likelihood"] >= r["elbo"] - 1
                                                   for r in n["runs"].values()),
        "a verdict per comparison": lambda n: len(n["verdicts"]) == 3
        and set(n["verdicts"].values()) <= {"tie", "differs"},
        "a finite SNR per point": lambda n: len(n["snr"]) == 4
        and all(0 < v < math.inf for v in n["snr"].values()),
    },
    "how_good": {
        "IS-K rises with K": lambda n: n["is_mean"][n["IS_KS"][-1]] > n["is_mean"][n["IS_KS"][0]],
        "AIS at or above the ELBO": lambda n: n["ais_mean"][n["AIS_STEPS"][-1]]
        >= n["elbo_value"] - 1,
        "BDMC brackets from both sides": lambda n: all(finite(v) and v > -1
                                                       for v in n["bdmc_gap"].values()),
        "refining q per image does not lower its bound": lambda n: n["gaps"]["amortization"] > -1,
    },
    "labels": {
        "finite conditional bounds": lambda n: finite(n["cvae_elbo"], n["cvae_ll"], n["base_elbo"])
        and max(n["cvae_elbo"], n["cvae_ll"], n["base_elbo"]) < 0,
        "an M2 error rate": lambda n: 0 <= n["m2_error"] <= 100 and finite(n["m2_bound"]),
        "every estimator on the paper's code": lambda n: set(n["paper_code"])
        == {"graph", "vimco-5", "gumbel"}
        and all(finite(r["elbo"], r["is_k"]) for r in n["paper_code"].values()),
        "the exact bound tops each one-group ELBO": lambda n: set(n["one_group"])
        == {"enum", "graph", "vimco-5", "gumbel"}
        and all(r["exact"] >= r["elbo"] - 1e-3 and r["is_gap"] < 0.5
                for r in n["one_group"].values()),
    },
}


def test_there_are_the_five_tutorials_the_docs_list():
    index = (TUTORIALS.parent / "index.md").read_text()
    assert NAMES == sorted(["first_vae", "own_model", "estimators", "how_good", "labels"])
    for name in NAMES:
        assert f"tutorials/{name}\n" in index


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=NAMES)
def test_a_tutorial_runs_at_its_quick_size(script, tmp_path, monkeypatch, mnist_binary):
    """In a temporary folder: what it writes goes to runs/tutorials/<name>/ there, and
    nothing of the checkout's (its results/ and runs/ folders) changes."""
    monkeypatch.setenv("PYRO_VAE_QUICK", "1")
    monkeypatch.chdir(tmp_path)
    before = _snapshot()
    try:
        names = runpy.run_path(str(script), run_name="__main__")
    finally:
        plt.close("all")
    assert names["QUICK"] is True
    for what, holds in CHECKS[script.stem].items():
        assert holds(names), f"{script.name}: {what}"
    assert any((tmp_path / "runs" / "tutorials" / script.stem).rglob("*.png"))
    assert _snapshot() == before


def _snapshot() -> dict:
    root = TUTORIALS.parents[1]
    return {str(p): p.stat().st_mtime_ns for folder in ("results", "runs")
            for p in (root / folder).rglob("*") if p.is_file()}


@pytest.mark.parametrize("script", SCRIPTS, ids=NAMES)
def test_a_tutorials_notebook_is_its_script_executed(script):
    """The notebook's cells are the script's, every code cell ran without an error, and its
    figures are in it: a script edited since `make tutorials` fails here."""
    notebook = script.with_suffix(".ipynb")
    assert notebook.is_file(), f"{notebook.name} missing: run make tutorials"
    expected = jupytext.read(script)
    committed = nbformat.read(notebook, as_version=4)
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert cells(committed) == cells(expected), f"{notebook.name} is stale: run make tutorials"
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
