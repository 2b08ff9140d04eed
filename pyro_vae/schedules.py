r"""Learning-rate schedules by name, as ``torch.optim.lr_scheduler`` objects stepped once
per epoch (their state is in the checkpoint, so a resumed run continues the schedule).

``iwae``: the schedule of Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
Autoencoders", section 5: stage :math:`i = 0, 1, \dots, 7` lasts :math:`3^i` epochs at
learning rate :math:`\text{lr} \cdot 10^{-i/7}` (3280 epochs in all; after them the last
stage's rate stays). With ``lr = 1e-3`` that is the paper's 1e-3 down to 1e-4.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

IWAE_STAGES = 8


def iwae_stage(epoch: int) -> int:
    """The stage i (0-based) that 1-based ``epoch`` falls in: stage i ends at epoch
    (3^(i+1) - 1) / 2, so epochs 1 | 2-4 | 5-13 | 14-40 | ... ; 7 from epoch 1094 on."""
    i = 0
    while i < IWAE_STAGES - 1 and epoch > (3 ** (i + 1) - 1) // 2:
        i += 1
    return i


def iwae_epochs(stages: int) -> int:
    """Epochs in the first ``stages`` stages: 1, 4, 13, 40, ..., 3280."""
    return (3**stages - 1) // 2


def iwae(optimizer: torch.optim.Optimizer) -> LRScheduler:
    # LambdaLR calls the factor with the number of epochs done; epoch n + 1 trains at it.
    return LambdaLR(optimizer, lambda done: 10 ** (-iwae_stage(done + 1) / 7))


SCHEDULES: dict[str, Callable[[torch.optim.Optimizer], LRScheduler]] = {"iwae": iwae}
