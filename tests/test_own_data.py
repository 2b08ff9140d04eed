"""Your own data through the command line: a folder of colour PNGs in class sub-folders
trains with the convolutional networks and plots in colour; a CSV of 10-dimensional vectors
trains with a Gaussian likelihood and evaluates; bad data exits non-zero naming the file and
the problem, before anything is trained."""

import json

import numpy as np
import pytest
from PIL import Image

from pyro_vae.cli import main


def _colour_classes(root, per_class=20):
    """Three classes of 12 x 16 colour images: a square of the class's colour that moves."""
    rng = np.random.default_rng(0)
    colours = {"cyan": (0, 255, 255), "magenta": (255, 0, 255), "yellow": (255, 255, 0)}
    for name, colour in colours.items():
        for i in range(per_class):
            a = (rng.random((12, 16, 3)) * 40).astype(np.uint8)
            top, left = rng.integers(0, 6), rng.integers(0, 8)
            a[top : top + 6, left : left + 8] = colour
            folder = root / name / ("more" if i % 4 == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(folder / f"{i:03d}.png")
    return root


def test_colour_png_folder_trains_with_conv_and_plots_in_colour(tmp_path, capsys):
    images = _colour_classes(tmp_path / "images")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(images), "--network", "conv",
                 "--likelihood", "continuous-bernoulli", "--image-size", "8", "12",
                 "--z-dim", "4", "--hidden", "32", "--batch-size", "16", "--epochs", "2",
                 "--out", str(run), "--quiet"]) == 0
    spec = json.loads((run / "model.json").read_text())["arguments"]
    assert spec["network"] == "conv" and spec["image_shape"] == [3, 8, 12]
    assert json.loads((run / "data.json").read_text())["source"]["image_size"] == [8, 12]
    assert main(["evaluate", str(run), "--is-samples", "20"]) == 0
    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "latent_embedding.png" in printed and "samples.png" in printed
    picture = np.asarray(Image.open(run / "figures" / "reconstructions.png").convert("RGB"))
    red, green, blue = (picture[..., c].astype(int) for c in range(3))
    # the data row holds saturated cyan, magenta and yellow pixels: colour, not grey
    assert (np.abs(red - green) > 150).any() and (np.abs(green - blue) > 150).any()


def test_csv_of_vectors_trains_evaluates_and_skips_image_figures(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2)) @ rng.normal(size=(2, 10)) + 0.1 * rng.normal(size=(300, 10))
    path = tmp_path / "vectors.csv"
    path.write_text("\n".join(",".join(f"{v:.5f}" for v in row) for row in x) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(path), "--likelihood", "gaussian-shared",
                 "--z-dim", "2", "--hidden", "32", "--epochs", "3", "--out", str(run),
                 "--quiet"]) == 0
    assert main(["evaluate", str(run), "--is-samples", "50"]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["examples"] == 30 and np.isfinite(result["log_likelihood"])
    assert result["log_likelihood"] >= result["elbo"] - 1.0
    assert main(["plot", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "learning_curves.png" in printed and "latent_embedding.png" in printed
    assert "skipped reconstructions.png, samples.png, latent_manifold.png: the data are " \
           "vectors of 10 numbers, not images" in printed
    assert main(["sample", str(run)]) == 1
    assert "sample draws images" in capsys.readouterr().err


def _corrupt_png(tmp_path):
    root = _colour_classes(tmp_path / "corrupt", per_class=3)
    bad = root / "cyan" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    return root, [str(bad), "cannot be read as an image"]


def _empty_folder(tmp_path):
    (tmp_path / "nothing" / "cats").mkdir(parents=True)
    return tmp_path / "nothing", [str(tmp_path / "nothing"), "no images in it"]


def _text_cell(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text("1.0,2.0,3.0\n4.0,five,6.0\n7.0,8.0,9.0\n")
    return path, [str(path), "line 2, column 2: 'five' is not a number"]


def _bernoulli_on_vectors(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(f"{i},{-i},{2 * i}" for i in range(20)) + "\n")
    return path, ["likelihood 'bernoulli' needs data in [0, 1]", "gaussian-shared"]


@pytest.mark.parametrize("make", [_corrupt_png, _empty_folder, _text_cell,
                                  _bernoulli_on_vectors])
def test_bad_data_exits_non_zero_naming_the_file_and_problem(tmp_path, capsys, make):
    dataset, expected = make(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(dataset), "--epochs", "1", "--out", str(run),
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert all(text in err for text in expected), err
    assert "Trace Shapes" not in err  # Pyro's trace dump is not for users
    assert not (run / "config.json").exists() and not (run / "checkpoint.pt").exists()


def test_the_readme_examples_are_what_their_maker_says():
    from scripts import ROOT

    from pyro_vae import load_dataset

    shapes = load_dataset(str(ROOT / "docs" / "examples" / "shapes"))
    assert shapes.image_shape == (3, 24, 32)
    assert len(shapes.x_train) + len(shapes.x_test) == 150 and len(shapes.x_test) == 15
    assert sorted(set(shapes.y_train.tolist())) == [0, 1, 2]  # circle, cross, square
    vectors = load_dataset(str(ROOT / "docs" / "examples" / "vectors.csv"))
    assert vectors.x_dim == 10 and len(vectors.x_train) + len(vectors.x_test) == 1000
