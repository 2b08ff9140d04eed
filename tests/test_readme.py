"""README.md's examples run as written and print what it says they print."""

import json
import re
import shlex
from pathlib import Path

import torch

from pyro_vae.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys, mnist_binary):
    example = re.search(r"## In Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["images"].shape == (16, 784)
    assert torch.all((namespace["images"] >= 0) & (namespace["images"] <= 1))
    assert [m["epoch"] for m in namespace["metrics"]] == [1, 2]
    assert namespace["metrics"][-1]["test_loss"] < 130  # two epochs of full MNIST
    assert "test negative ELBO:" in capsys.readouterr().out
    assert (tmp_path / "runs/readme-example/checkpoint.pt").is_file()


def test_readme_command_line_example_runs_and_prints_its_numbers(tmp_path, monkeypatch,
                                                                mnist_binary):
    """The three commands, as written, in this process; the ELBO and IS-100 numbers the README
    quotes are the ones they give (to within the run-to-run spread of float sums on another
    CPU), and the two figures it shows are among those written."""
    text = README.read_text()
    block = re.search(r"## On the command line\n\n```sh\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    for line in block.replace("\\\n", " ").strip().splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == "pyro-vae"
        assert main(argv[1:]) == 0, line
    evaluation = json.loads((tmp_path / "runs/first/evaluation.json").read_text())
    elbo, ll = (float(v) for v in re.search(
        r"an ELBO of (-[\d.]+) and an IS-100 log-likelihood of (-[\d.]+) ± ",
        " ".join(text.split())).groups())
    assert abs(evaluation["elbo"] - elbo) < 3.0  # other CPUs round float sums otherwise
    assert abs(evaluation["log_likelihood"] - ll) < 3.0
    for shown in re.findall(r'<img src="docs/_static/cli-(\w+)\.png"', text):
        assert (tmp_path / f"runs/first/figures/latent_{shown}.png").is_file()
        assert (ROOT / f"docs/_static/cli-{shown}.png").is_file()


def test_the_guide_shows_the_real_model_and_guide():
    model_py = (ROOT / "pyro_vae" / "model.py").read_text()
    page = (ROOT / "docs" / "guide" / "python.md").read_text()
    block = re.search(r"```python\n(def model\(.*?)```", page, re.S).group(1)
    indented = "".join("    " + line if line.strip() else line for line in block.splitlines(True))
    assert indented in model_py


def test_every_link_of_the_readme_and_the_guide_points_at_a_file_that_exists():
    pages = [README, *sorted((ROOT / "docs").glob("**/*.md"))]
    for page in pages:
        if "_build" in page.parts:
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: {target}"
