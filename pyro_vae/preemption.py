"""Preemption: a signal that asks a run to stop, honoured after the step in flight.

Clusters preempt a job with a signal and a grace period before the kill: SLURM sends
``SIGTERM`` (or ``SIGUSR1`` with ``--signal``), as do Kubernetes and torchrun. While
:func:`pyro_vae.fit` trains into a run directory it catches both: the step in flight
finishes, a checkpoint that holds the position inside the epoch is written (the step, the
epoch's data order and every random state), the run directory's lock is released, and the
process exits with code ``128 + signal`` (143 for ``SIGTERM``), as a process killed by the
signal would, after a line that names the resume command. Resuming continues at the next
step, bit for bit as the uninterrupted run.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Training stopped on a signal after writing its checkpoint; the exit code is
    ``128 + signal``. A ``SystemExit``, so that a script calling ``fit`` exits with that
    code as it unwinds (closing what it holds on the way)."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum, self.message = signum, message


class Requested:
    """The first of :data:`SIGNALS` received while catching, or None."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self, signum: int, frame) -> None:  # the handler
        self.signum = self.signum or signum

    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def catching(active: bool = True):
    """Catch :data:`SIGNALS` in a :class:`Requested` while inside, the handlers before
    restored after. Only the main thread can handle signals: elsewhere (or with ``active``
    false) the signals keep their own handlers and the request stays None."""
    requested = Requested()
    if not active or threading.current_thread() is not threading.main_thread():
        yield requested
        return
    before = {s: signal.signal(s, requested) for s in SIGNALS}
    try:
        yield requested
    finally:
        for s, handler in before.items():  # None: a handler set outside Python
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
