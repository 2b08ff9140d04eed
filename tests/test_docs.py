"""docs/extending.md, section 5, runs as written: a model in the user's own file trains with
fit, then opens with pyro-vae evaluate, plot and sample given its factory, and only so."""

import re
import shlex
import shutil

import pytest
from scripts import ROOT

from pyro_vae.cli import main

DOC = ROOT / "docs" / "extending.md"
FILE = ROOT / "docs" / "examples" / "my_vae.py"


def _section_five() -> str:
    text = DOC.read_text()
    end = text.index("## The rules a model of yours follows")
    return text[text.index("## 5. Your own model in your own file"):end]


def test_the_walk_through_shows_the_real_file():
    model_code = re.search(r"```python\n(class .*?)```", _section_five(), re.S).group(1)
    assert model_code in FILE.read_text()


@pytest.mark.usefixtures("mnist_binary")
def test_a_model_in_your_own_file_trains_evaluates_plots_and_samples(tmp_path, monkeypatch,
                                                                      capsys):
    section = _section_five()
    training = re.search(r"```python\n(from pyro_vae.*?)```", section, re.S).group(1)
    commands = re.search(r"```sh\n(.*?)```", section, re.S).group(1).strip().splitlines()
    (tmp_path / "docs" / "examples").mkdir(parents=True)
    shutil.copy(FILE, tmp_path / "docs" / "examples")
    monkeypatch.chdir(tmp_path)

    exec(compile(training, str(DOC), "exec"), {})
    assert (tmp_path / "runs" / "my-vae" / "checkpoint.pt").is_file()
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "pyro-vae"
        assert main(argv[1:]) == 0, command
    out = capsys.readouterr().out
    assert "IS-100 log-likelihood" in out and "1000 examples" in out
    assert "skipped KL per dimension: the model's prior is not N(0, I)" in out
    figures = tmp_path / "runs" / "my-vae" / "figures"
    for png in ("latent_manifold.png", "samples.png", "reconstructions.png"):
        assert (figures / png).read_bytes().startswith(b"\x89PNG")

    # Without the factory it says what to pass; with another one it refuses by name.
    assert main(["evaluate", "runs/my-vae"]) == 1
    assert "pass --model docs/examples/my_vae.py:make_vae" in capsys.readouterr().err
    shutil.copy(FILE, tmp_path / "other.py")
    assert main(["plot", "runs/my-vae", "--model", "other.py:make_vae"]) == 1
    err = capsys.readouterr().err
    assert "built by docs/examples/my_vae.py:make_vae, not by other.py:make_vae" in err
