"""README.md's Python example runs as written and does what its comments say."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


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


def test_readme_shows_the_real_model_and_guide():
    model_py = (README.parent / "pyro_vae" / "model.py").read_text()
    block = re.search(r"```python\n(def model\(.*?)```", README.read_text(), re.S).group(1)
    indented = "".join("    " + line if line.strip() else line for line in block.splitlines(True))
    assert indented in model_py
