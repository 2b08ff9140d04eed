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

import io
import numbers
import time
from pathlib import Path

from .rundir import atomic_write


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

    Each epoch's scalars are one events file, ``events.out.tfevents.EPOCH.pyro-vae``
    (zero-padded, so TensorBoard reads them in order), written whole and atomically like
    every file of a run (:func:`pyro_vae.rundir.atomic_write`): a full disk never leaves
    half an event, and a resumed epoch replaces its file instead of logging twice.

    Needs the ``tensorboard`` package (``pip install "pyro-vae[tensorboard]"``).
    """

    def __init__(self, log_dir: str | Path):
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.summary.writer.record_writer import RecordWriter
            from torch.utils.tensorboard.summary import scalar
        except ImportError as e:
            raise ValueError("--tensorboard needs the tensorboard package: "
                             'pip install "pyro-vae[tensorboard]"') from e
        self.log_dir = Path(log_dir)
        self._event, self._records, self._scalar = Event, RecordWriter, scalar

    def after_epoch(self, epoch: int, record: dict) -> None:
        buffer, now = io.BytesIO(), time.time()
        events = self._records(buffer)  # TensorBoard's record framing (length, CRCs)
        events.write(self._event(wall_time=now, file_version="brain.Event:2")
                     .SerializeToString())
        for name, value in record.items():
            if name != "epoch" and isinstance(value, numbers.Real):
                events.write(self._event(wall_time=now, step=epoch,
                                         summary=self._scalar(name, value))
                             .SerializeToString())
        atomic_write(self.log_dir / f"events.out.tfevents.{epoch:09d}.pyro-vae",
                     buffer.getvalue())
