"""Figures as PNG files, drawn with matplotlib's object-oriented API (no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure


def image_grid(
    images: torch.Tensor,
    image_shape: Sequence[int],
    path: str | Path,
    ncol: int,
    title: str | None = None,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """Tile ``images`` (N, D), values in [0, 1], into rows of ``ncol`` and save a PNG."""
    return image_panels({title or "": images}, image_shape, path, ncol, row_labels)


def image_panels(
    panels: dict[str, torch.Tensor],
    image_shape: Sequence[int],
    path: str | Path,
    ncol: int,
    row_labels: Sequence[str] | None = None,
) -> Path:
    """One titled grid of images per entry of ``panels``, stacked top to bottom, as a PNG."""
    canvases = [_tile(images, image_shape, ncol) for images in panels.values()]
    h, w = canvases[0].shape
    width = w / 28 * 0.6 + (1.2 if row_labels else 0.2)
    fig = Figure(figsize=(width, sum(c.shape[0] / 28 * 0.6 + 0.45 for c in canvases)))
    axes = fig.subplots(len(canvases), 1, squeeze=False)[:, 0]
    for ax, (title, _), canvas in zip(axes, panels.items(), canvases, strict=True):
        ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        rows = (canvas.shape[0] - _PAD) // (image_shape[0] + _PAD)
        if row_labels:
            centres = [_PAD + r * (image_shape[0] + _PAD) + image_shape[0] / 2 for r in range(rows)]
            ax.set_yticks(centres, labels=row_labels[:rows])
            ax.tick_params(left=False)
        else:
            ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if title:
            ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


_PAD = 1  # pixels of white between tiled images


def _tile(images: torch.Tensor, image_shape: Sequence[int], ncol: int) -> torch.Tensor:
    """One grey canvas with ``images`` (N, D) in rows of ``ncol``, values clamped to [0, 1]."""
    if image_shape is None or len(image_shape) != 2:
        raise ValueError(f"cannot draw images of shape {image_shape}: the data are not images")
    h, w = image_shape
    n = images.shape[0]
    nrow = -(-n // ncol)
    canvas = torch.ones(nrow * (h + _PAD) + _PAD, ncol * (w + _PAD) + _PAD)
    pictures = images.detach().float().cpu().clamp(0, 1).reshape(n, h, w)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, ncol)
        top, left = _PAD + r * (h + _PAD), _PAD + c * (w + _PAD)
        canvas[top : top + h, left : left + w] = picture
    return canvas


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def kl_bars(kl: torch.Tensor, path: str | Path) -> Path:
    """Bars of the KL per latent dimension, largest first: which units carry information."""
    values = kl.detach().cpu().sort(descending=True)
    fig = Figure(figsize=(max(4.0, 0.12 * len(kl) + 1.5), 3.0))
    ax = fig.add_subplot()
    ax.bar(range(len(kl)), values.values.numpy(), color="tab:blue")
    ax.set_xticks(range(len(kl)), labels=[str(i) for i in values.indices.tolist()],
                  fontsize=6 if len(kl) > 20 else 9, rotation=90 if len(kl) > 20 else 0)
    ax.set_xlabel("latent dimension (sorted)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL(q(z_u|x) || N(0, 1)) per dimension, total {kl.sum().item():.2f} nats")
    fig.tight_layout()
    return _save(fig, path)
