"""Writes the two small datasets of the "your own data" commands in docs/guide/data.md
(committed, so the commands run as written; run this again to remake them, seed 0):

- ``docs/examples/shapes/``: 150 colour PNGs of 24 x 32 pixels (height x width) in three
  class folders, ``circle``, ``square`` and ``cross``: one shape of a random colour, size
  and place on a dark grey background;
- ``docs/examples/vectors.csv``: 1,000 vectors of 10 numbers with a header row, a noisy
  linear image of 2-D Gaussian codes (x = W z + 0.1 noise).

    .venv/bin/python docs/examples/make_examples.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
HEIGHT, WIDTH, PER_CLASS = 24, 32, 50


def shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 20, np.uint8)
    colour = rng.integers(80, 256, size=3)
    r = int(rng.integers(4, 9))
    cy, cx = int(rng.integers(r, HEIGHT - r)), int(rng.integers(r, WIDTH - r))
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    if kind == "circle":
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif kind == "square":
        inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
    else:  # a cross, two bars of width 3
        inside = ((abs(yy - cy) <= 1) & (abs(xx - cx) <= r)) | \
                 ((abs(xx - cx) <= 1) & (abs(yy - cy) <= r))
    image[inside] = colour
    return image


def main() -> None:
    rng = np.random.default_rng(0)
    for kind in ("circle", "square", "cross"):
        folder = HERE / "shapes" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(PER_CLASS):
            Image.fromarray(shape(kind, rng)).save(folder / f"{i:03d}.png", optimize=True)
    z = rng.normal(size=(1000, 2))
    x = z @ rng.normal(size=(2, 10)) + 0.1 * rng.normal(size=(1000, 10))
    lines = [",".join(f"x{i}" for i in range(10))]
    lines += [",".join(f"{v:.4f}" for v in row) for row in x]
    (HERE / "vectors.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
