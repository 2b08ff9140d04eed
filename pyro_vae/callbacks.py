"""Per-epoch hooks of :func:`pyro_vae.fit`: change a setting before an epoch, add metric
columns after it.

A callback is any object with either method (both optional)::

    before_epoch(epoch)            -> None         # e.g. set a KL weight for this epoch
    after_epoch(epoch, record)     -> dict | None  # extra columns for metrics.jsonl

``fit`` calls them on every process, each inside a forked random state, so that what a
callback draws never moves the training's random stream: a run with a callback that
evaluates a likelihood resumes exactly. A setting changed in ``before_epoch`` should be a
function of the epoch alone; a resumed run then sets it again as the uninterrupted run did.
"""

from __future__ import annotations

import numbers
from pathlib import Path


class Callback:
    """Does nothing; subclass and override what you need."""

    def before_epoch(self, epoch: int) -> None:
        pass

    def after_epoch(self, epoch: int, record: dict) -> dict | None:
        return None

    def close(self) -> None:
        """Called once when training ends (normally or not)."""


class TensorBoard(Callback):
    """Every number of each epoch's record (and the other callbacks' columns, given before
    this one) as a TensorBoard scalar at step ``epoch``: ``tensorboard --logdir RUN_DIR``.

    Needs the ``tensorboard`` package (``pip install "pyro-vae[tensorboard]"``).
    """

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch raises this when tensorboard is not installed
            raise ValueError("--tensorboard needs the tensorboard package: "
                             'pip install "pyro-vae[tensorboard]"') from e
        self.log_dir, self._open, self.writer = str(log_dir), SummaryWriter, None

    def after_epoch(self, epoch: int, record: dict) -> None:
        if self.writer is None:  # opened at the first epoch: a refused run writes nothing
            self.writer = self._open(log_dir=self.log_dir)
        for name, value in record.items():
            if name != "epoch" and isinstance(value, numbers.Real):
                self.writer.add_scalar(name, value, global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
