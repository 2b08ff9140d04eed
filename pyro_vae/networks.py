"""The guide's encoder and the model's decoder: multilayer perceptrons over flattened
examples (``Encoder``, ``Decoder``) and convolutional networks over images
(``ConvEncoder``, ``ConvDecoder``).

All accept any number of leading batch dimensions, as vectorized particles need; the
convolutional ones take and give flat rows too (an image of shape (C, H, W) as C*H*W
numbers), so every likelihood and estimator sees the same shapes whichever network is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky-relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def activation_class(name: str) -> type[nn.Module]:
    """The activation module registered as ``name``; a ``ValueError`` listing the choices
    for an unknown one."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]``, the activation between them."""
    act = activation_class(activation)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i > 0:
            layers.append(act())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def concat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate inputs along the last dimension, broadcasting the dimensions in front: a
    label's one-hot code ``(batch, 10)`` (or an enumerated one, ``(10, 1, 10)``) beside
    ``x (particles, batch, 784)``, as conditional encoders and decoders take them."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], dim=-1)


class Encoder(nn.Module):
    r"""``x -> (loc, scale)`` of :math:`q(z \mid x) = \mathcal{N}(loc, \mathrm{diag}(scale^2))`.

    The network's last layer emits the mean and the log-variance;
    ``scale = exp(log_variance / 2)``.

    Example:

    >>> import torch
    >>> from pyro_vae import Encoder
    >>> loc, scale = Encoder(x_dim=4, hidden=[8], z_dim=2)(torch.zeros(3, 4))
    >>> loc.shape, bool((scale > 0).all())
    (torch.Size([3, 2]), True)
    """

    def __init__(self, x_dim: int, hidden: Sequence[int], z_dim: int, activation: str = "relu"):
        super().__init__()
        self.net = mlp([x_dim, *hidden, 2 * z_dim], activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_variance = self.net(x).chunk(2, dim=-1)
        return loc, (0.5 * log_variance).exp()


class Decoder(nn.Module):
    """``z -> `` the likelihood's parameters, ``out_dim`` numbers per example."""

    def __init__(self, z_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"):
        super().__init__()
        self.net = mlp([z_dim, *hidden, out_dim], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Baseline(nn.Module):
    r"""``x -> b(x)``, one number per example: the learned baseline that score-function
    estimators subtract from a discrete draw's learning signal (Mnih & Gregor, 2014, "Neural
    Variational Inference and Learning in Belief Networks", sec. 2.3: an input-dependent
    baseline; its output bias learns the signal's average, the constant baseline). Pyro's
    ``TraceGraph_ELBO`` trains it to the signal by squared error (``infer={"baseline":
    {"nn_baseline": ..., "nn_baseline_input": x}}``)."""

    def __init__(self, x_dim: int, hidden: int = 100, activation: str = "tanh"):
        super().__init__()
        self.net = mlp([x_dim, hidden, 1], activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


# A conv stage: kernel 4, stride 2, padding 1 halves the height and width (rounding down).
_KERNEL, _STRIDE, _PADDING = 4, 2, 1


class ConvEncoder(nn.Module):
    r"""``x -> (loc, scale)`` for images of shape ``image_shape`` (channels, height, width):
    two stride-2 convolutions (32 and 64 channels, each halving the image), then the MLP
    ``hidden`` to the mean and log-variance of :math:`q(z \mid x)`, as in
    :class:`Encoder`."""

    def __init__(self, image_shape: Sequence[int], hidden: Sequence[int], z_dim: int,
                 activation: str = "relu", channels: Sequence[int] = (32, 64)):
        super().__init__()
        self.image_shape = tuple(image_shape)
        act = activation_class(activation)
        layers: list[nn.Module] = []
        for c_in, c_out in zip((image_shape[0], *channels[:-1]), channels, strict=True):
            layers += [nn.Conv2d(c_in, c_out, _KERNEL, _STRIDE, _PADDING), act()]
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, *image_shape)).shape[-1]
        self.net = mlp([flat, *hidden, 2 * z_dim], activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        front = x.shape[:-1]
        h = self.conv(x.reshape(-1, *self.image_shape))
        loc, log_variance = self.net(h).reshape(*front, -1).chunk(2, dim=-1)
        return loc, (0.5 * log_variance).exp()


class ConvDecoder(nn.Module):
    """``z -> `` the likelihood's parameters for images of shape ``image_shape``: the MLP
    ``hidden`` to 64 maps of a quarter of the image's height and width (rounded up), two
    stride-2 transposed convolutions back to full size (cropped to it), ``params_per_dim``
    maps per channel; returned flat as ``params_per_dim * C*H*W`` numbers, each parameter's
    C*H*W together (the layout :mod:`pyro_vae.likelihoods` reads)."""

    def __init__(self, z_dim: int, hidden: Sequence[int], image_shape: Sequence[int],
                 params_per_dim: int = 1, activation: str = "relu",
                 channels: Sequence[int] = (64, 32)):
        super().__init__()
        self.image_shape, self.params_per_dim = tuple(image_shape), params_per_dim
        c, h, w = image_shape
        scale = _STRIDE ** len(channels)
        self.start = (channels[0], -(-h // scale), -(-w // scale))
        act = activation_class(activation)
        self.net = mlp([z_dim, *hidden, math.prod(self.start)], activation)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, (*channels[1:], params_per_dim * c), strict=True):
            layers += [act(), nn.ConvTranspose2d(c_in, c_out, _KERNEL, _STRIDE, _PADDING)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        front = z.shape[:-1]
        maps = self.deconv(self.net(z).reshape(-1, *self.start))
        c, h, w = self.image_shape
        maps = maps[..., :h, :w]  # (n, params_per_dim * c, h, w): parameter-major
        return maps.reshape(*front, self.params_per_dim * c * h * w)


NETWORKS = ("mlp", "conv")
