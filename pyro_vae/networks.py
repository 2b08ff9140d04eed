"""Multilayer perceptrons for the guide (encoder) and the model (decoder).

Both accept any number of leading batch dimensions, as vectorized particles need.
"""

from __future__ import annotations

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


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]``, the activation between them."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; choose from: {', '.join(ACTIVATIONS)}"
        )
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i > 0:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    r"""``x -> (loc, scale)`` of :math:`q(z \mid x) = \mathcal{N}(loc, \mathrm{diag}(scale^2))`.

    The network's last layer emits the mean and the log-variance;
    ``scale = exp(log_variance / 2)``.
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
