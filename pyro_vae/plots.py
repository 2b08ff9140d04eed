"""Figures as PNG files, drawn with matplotlib's object-oriented API (no display needed).

Each function takes tensors (or metrics) and writes one PNG; :func:`plot_run` writes every
figure that applies to a run directory into its ``figures/`` folder.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .evaluate import (
    decoded_means,
    labels_for,
    latent_dims,
    latent_site,
    posterior_means,
    prior_means,
    reconstruction_means,
    semi_supervised,
)
from .rundir import FIGURES, atomic_write, load_run, read_metrics
from .traces import sample_sites

DPI = 100


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
    _, h, _ = _chw(image_shape)
    inches = 0.6 / 28 if h <= 28 else 1.2 / h  # per pixel: a 28-pixel image 0.6 in high
    width = canvases[0].shape[1] * inches + (1.2 if row_labels else 0.2)
    width = max(width, 0.075 * max(map(len, panels)))  # room for the longest title
    fig = Figure(figsize=(width, sum(c.shape[0] * inches + 0.45 for c in canvases)))
    axes = fig.subplots(len(canvases), 1, squeeze=False)[:, 0]
    for ax, (title, _), canvas in zip(axes, panels.items(), canvases, strict=True):
        ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        rows = (canvas.shape[0] - _PAD) // (h + _PAD)
        if row_labels:
            centres = [_PAD + r * (h + _PAD) + h / 2 for r in range(rows)]
            ax.set_yticks(centres, labels=row_labels[:rows])
            ax.tick_params(left=False)
        else:
            ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if title:
            ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


_PAD = 1  # pixels of white between tiled images


def _tile(images: torch.Tensor, image_shape: Sequence[int], ncol: int) -> torch.Tensor:
    """One canvas with ``images`` (N, D) in rows of ``ncol``, values clamped to [0, 1]:
    (height, width) for grey images, (height, width, 3) for colour; ``image_shape`` is
    (channels, height, width), or (height, width) for grey."""
    channels, h, w = _chw(image_shape)
    n = images.shape[0]
    nrow = -(-n // ncol)
    canvas = torch.ones(nrow * (h + _PAD) + _PAD, ncol * (w + _PAD) + _PAD, channels)
    pictures = images.detach().float().cpu().clamp(0, 1).reshape(n, channels, h, w)
    for i, picture in enumerate(pictures):
        r, c = divmod(i, ncol)
        top, left = _PAD + r * (h + _PAD), _PAD + c * (w + _PAD)
        canvas[top : top + h, left : left + w] = picture.permute(1, 2, 0)
    return canvas[..., 0] if channels == 1 else canvas


def _chw(image_shape: Sequence[int] | None) -> tuple[int, int, int]:
    if image_shape is not None and len(image_shape) == 2:
        return (1, *image_shape)
    if image_shape is None or len(image_shape) != 3 or image_shape[0] not in (1, 3):
        raise ValueError(f"cannot draw images of shape {image_shape}: the data are not "
                         "grey or colour images (channels, height, width)")
    return tuple(image_shape)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """The PNG drawn in memory, then written atomically (never half a figure on disk)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return atomic_write(path, buffer.getvalue())


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
    return save_figure(fig, path)


def run_title(spec, config) -> str:
    """The one-line title of a run's figures: its model's factory and how it trained."""
    return f"{spec.short_name if spec else 'own model'}: {config.summary()}"


def learning_curves(
    runs: dict[str, Sequence[dict]], path: str | Path, title: str | None = None
) -> Path:
    """Train (solid) and test (dashed) loss of each run against the epoch (left) and against
    the cumulative training seconds (right). ``runs`` maps a label to a run's metrics, the
    per-epoch dicts of ``metrics.jsonl``. 1000 x 420 pixels."""
    fig = Figure(figsize=(10, 4.2))
    by_epoch, by_time = fig.subplots(1, 2, sharey=True)
    colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"] * 4)
    for label, metrics in runs.items():
        colour = next(colours)
        epochs = [m["epoch"] for m in metrics]
        seconds = torch.tensor([m["seconds"] for m in metrics]).cumsum(0).tolist()
        for ax, t in ((by_epoch, epochs), (by_time, seconds)):
            name = f"{label} " if label else ""
            ax.plot(t, [m["train_loss"] for m in metrics], "-o", ms=3, color=colour,
                    label=f"{name}train")
            ax.plot(t, [m["test_loss"] for m in metrics], "--s", ms=3, color=colour,
                    label=f"{name}test")
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("training time (s, cumulative)")
    by_epoch.set_ylabel("negative ELBO (nats per example)")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def reconstructions(
    x: torch.Tensor, x_hat: torch.Tensor, image_shape: Sequence[int], path: str | Path,
    title: str = "data and reconstructions (decoder mean at E_q[z])",
) -> Path:
    """A row of data over the row of its reconstructions."""
    return image_grid(torch.cat([x, x_hat]), image_shape, path, ncol=x.shape[0],
                      row_labels=["data", "reconstruction"], title=title)


def samples(
    images: torch.Tensor, image_shape: Sequence[int], path: str | Path,
    title: str = "decoder means of z ~ N(0, I)",
) -> Path:
    """Decoder means of prior draws in rows of 8 (an 8 x 8 grid for 64 draws)."""
    return image_grid(images, image_shape, path, ncol=8, title=title)


def latent_manifold(
    decode: Callable[[torch.Tensor], torch.Tensor], image_shape: Sequence[int],
    path: str | Path, n: int = 20, extent: float = 4.0,
) -> Path:
    """Decoder means on an ``n`` x ``n`` grid of a 2-D latent plane over
    [-extent, extent]^2: z_1 grows to the right, z_2 upwards. 700 x 700 pixels."""
    z1 = torch.linspace(-extent, extent, n)
    z2 = torch.linspace(extent, -extent, n)  # top row first
    rows, cols = torch.meshgrid(z2, z1, indexing="ij")
    z = torch.stack([cols, rows], dim=-1).reshape(-1, 2)  # (z_1, z_2), row by row
    with torch.no_grad():
        canvas = _tile(decode(z), image_shape, ncol=n)
    fig = Figure(figsize=(7, 7))
    ax = fig.add_subplot()
    half = extent * (1 + 1 / (n - 1))  # the grid points sit at the centres of the tiles
    ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest",
              extent=(-half, half, -half, half))
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(f"decoder means on a {n} x {n} grid over [-{extent:g}, {extent:g}]$^2$",
                 fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


def latent_embedding(
    z: torch.Tensor, labels: torch.Tensor | None, path: str | Path,
    title: str = "posterior means E_q[z | x] of the test set",
) -> Path:
    """A scatter of latent codes ``z`` (N, d) coloured by ``labels``, legend outside the
    axes. For d > 2, the first two principal components of ``z``. 800 x 650 pixels."""
    z = z.detach().float().cpu()
    if z.shape[1] == 2:
        xy, axis_names = z, ["$z_1$", "$z_2$"]
    else:
        centred = z - z.mean(0)
        _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
        share = (singular**2 / (singular**2).sum() * 100).tolist()
        xy = centred @ vt[:2].T
        axis_names = [f"principal component {i + 1} ({share[i]:.0f}% of variance)"
                      for i in range(2)]
        title += f" ({z.shape[1]}-D, projected)"
    fig = Figure(figsize=(8, 6.5))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.5, color="tab:blue", rasterized=True)
    else:
        labels = labels.cpu()
        colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                   "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
        for i, label in enumerate(labels.unique().tolist()):
            chosen = labels == label
            ax.scatter(xy[chosen, 0], xy[chosen, 1], s=2, alpha=0.5, label=str(label),
                       color=colours[i % len(colours)], rasterized=True)
        ax.legend(title="label", loc="center left", bbox_to_anchor=(1.01, 0.5),
                  markerscale=5, frameon=False)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_run(
    run_dir: str | Path, seed: int = 0, factory=None, device: str | None = None,
    edited: bool = False,
) -> tuple[list[Path], list[str]]:
    """Every figure that applies to a run directory, written into ``RUN_DIR/figures/``:
    learning curves; reconstructions and samples for image data; the latent manifold for a
    model with one latent site of 2 dimensions (whatever its name); the embedding of the
    test set's posterior means (coloured by label where the labels are known). Returns the
    files written and, for each figure that does not apply to this model or data, one line
    saying why.

    Works for any model ``load_run`` can rebuild (``factory`` as there): the pictures come
    from the model's and guide's traces (:func:`pyro_vae.evaluate.prior_means` and its
    kin), not from methods of the built-in VAE."""
    run_dir = Path(run_dir)
    figures = run_dir / FIGURES
    config, built, data = load_run(run_dir, factory, device, edited=edited)
    model, guide = built.model, built.guide
    written, skipped = [], []
    metrics = read_metrics(run_dir)
    if metrics:
        written.append(learning_curves({"": metrics}, figures / "learning_curves.png",
                                       title=run_title(built.spec, config)))
    x = torch.cat(list(data.eval_batches("test", 1000)))  # one fixed binarization
    y = labels_for(model, guide, data)  # None for a model of x alone
    if y is not None and semi_supervised(built):  # pictures of unlabelled images
        y = torch.full_like(y, -1)
    rows = (lambda n: None) if y is None else (lambda n: y[:n])
    latents = latent_dims(model, x, y=y)
    images = data.image_shape is not None
    if not images:
        skipped.append("reconstructions.png, samples.png, latent_manifold.png: the data are "
                       f"vectors of {data.x_dim} numbers, not images")
    else:
        written.append(reconstructions(x[:12], reconstruction_means(model, guide, x[:12],
                                                                    y=rows(12)),
                                       data.image_shape, figures / "reconstructions.png"))
        pyro.set_rng_seed(seed)
        written.append(samples(prior_means(model, x, 64, y=rows(64)), data.image_shape,
                               figures / "samples.png",
                               title="decoder means of 64 draws z ~ p(z)"))
        classes = one_categorical(model, x, y=y)
        if classes is not None:  # the manifold of a single categorical code: its classes
            name, c = classes
            means = decoded_means(model, torch.eye(c), x, site=name, y=rows(c))
            written.append(image_grid(means, data.image_shape, figures / "classes.png",
                                      ncol=c, title=f"decoder means of each of the {c} "
                                      f"classes of {name!r}"))
        elif list(latents.values()) == [2] and _continuous(model, x, y):
            written.append(latent_manifold(lambda z: decoded_means(model, z, x, y=y),
                                           data.image_shape, figures / "latent_manifold.png"))
        else:
            skipped.append("latent_manifold.png: it needs one continuous latent site of 2 "
                           "dimensions; "
                           f"this model has {_describe(latents)}")
    try:
        z = posterior_means(guide, x, y=y)
    except ValueError as e:
        skipped.append(f"latent_embedding.png: no posterior mean of one latent site ({e})")
    else:
        written.append(latent_embedding(z, data.y_test, figures / "latent_embedding.png"))
    return written, skipped


def one_categorical(model, x: torch.Tensor, y=None) -> tuple[str, int] | None:
    """``(site, C)`` where the model's one latent site is a single one-hot code of C classes
    (its prior a ``OneHotCategorical``, no ``to_event``), else None."""
    with torch.no_grad():
        trace = poutine.trace(model).get_trace(*((x[:1],) if y is None else (x[:1], y[:1])))
    latent = [(name, site) for name, site in sample_sites(trace) if not site["is_observed"]]
    if len(latent) != 1 or not isinstance(latent[0][1]["fn"], dist.OneHotCategorical):
        return None
    return latent[0][0], latent[0][1]["fn"].event_shape[-1]


def _continuous(model, x, y) -> bool:
    try:
        latent_site(model, x, y)
    except ValueError:
        return False
    return True


def _describe(latents: dict[str, int]) -> str:
    return ", ".join(f"site {name!r} of {d} dimensions" for name, d in latents.items()) or \
        "no latent site"
