"""``Config``: how a run trains (data, estimator, optimizer, schedule), never what it trains.

The model is described apart, by the factory that built it and its arguments
(:class:`pyro_vae.spec.ModelSpec`): one record per concern, so a training setting can never
be read back as a model setting.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .estimators import make_elbo
from .schedules import SCHEDULES

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
# what a resumed run may change: the same numbers
RESUMABLE = ("epochs", "jit", "compile", "deterministic", "checkpoint_every")
# Model settings of the first format, when config.json held both (before model.json).
_OLD_MODEL_KEYS = ("likelihood", "sigma", "min_scale", "z_dim", "hidden", "activation")


@dataclass
class Config:
    """Everything about how a run trains: data, estimator, optimizer, schedule, seed."""

    # The name the data were loaded by (load_dataset's). None: the name of the data given
    # to fit, which the run records in full (data.json); a name that disagrees is refused.
    dataset: str | None = None
    # The estimator by name (pyro_vae.estimators.ESTIMATORS); None when fit was given an
    # estimator object (its description is then recorded beside the config).
    elbo: str | None = "meanfield"
    particles: int = 1
    vectorize: bool = True  # vectorize particles (a no-op for one particle)
    alpha: float | None = None  # the order of 'renyi'
    refine_steps: int | None = None  # K of 'semi-amortized' (None: its default, 5)
    # Step with the estimator's captured graph (pyro_vae.engine): the same draws and numbers
    # as Pyro's eager step, checked on each batch shape's first batch; an estimator or model
    # that cannot be captured says why and steps eagerly. For static models: a Python
    # number that changes between steps (an annealing factor) is frozen at its first value.
    jit: bool = True
    # Run the captured step through torch.compile (inductor): seconds to compile per batch
    # shape, then the fastest step (benchmarks/README.md); needs jit.
    compile: bool = False
    optimizer: str = "adam"
    # The step follows the gradient of the batch's *summed* negative bound, as Pyro's SVI
    # does: with SGD the effective step grows with the batch size; Adam does not care.
    lr: float = 1e-3
    # Adam's epsilon, added to the root of the second-moment estimate (None: torch's 1e-8);
    # the importance-weighted autoencoder paper trains with 1e-4.
    eps: float | None = None
    schedule: str | None = None  # a learning-rate schedule by name (schedules.SCHEDULES)
    clip_norm: float | None = None  # clip the gradient's global 2-norm to this before a step
    batch_size: int = 128
    epochs: int = 10
    # Also checkpoint inside each epoch, after every this many steps (None: at its end
    # only); a run resumed from one continues at the next step, bit for bit. A signal
    # (SIGTERM, SIGUSR1) checkpoints after the step in flight either way (preemption).
    checkpoint_every: int | None = None
    seed: int = 0
    device: str = "cpu"
    # On CUDA, train with torch.use_deterministic_algorithms (deterministic convolutions
    # and cuBLAS), so that a resumed run ends bit for bit where an uninterrupted one does.
    # False: torch's fastest kernels, and a resumed run equal to float rounding only.
    deterministic: bool = True

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        for name in ("particles", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 step, got "
                             f"{self.checkpoint_every}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.eps is not None and (self.optimizer != "adam" or not self.eps > 0):
            raise ValueError(f"eps is Adam's and must be positive, got eps={self.eps} with "
                             f"optimizer {self.optimizer!r}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose from: {', '.join(OPTIMIZERS)}"
            )
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from: "
                             f"{', '.join(SCHEDULES)} (or none)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available")
        if self.elbo is not None:
            self.make_elbo()

    def make_elbo(self):
        if self.elbo is None:
            raise ValueError("this run's estimator was given to fit as an object (elbo=...), "
                             "not by name: pass the same estimator again")
        return make_elbo(self.elbo, self.particles, self.vectorize, self.jit, self.alpha,
                         self.refine_steps, self.compile)

    def summary(self) -> str:
        """One line for figure titles."""
        return (f"{self.dataset or 'own data'}, {self.elbo or 'own estimator'}, "
                f"{self.optimizer} lr {self.lr:g}{', ' + self.schedule if self.schedule else ''}, "
                f"batch {self.batch_size}")

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in fields(cls)}
        old = sorted(set(d) & set(_OLD_MODEL_KEYS))
        if old:
            raise ValueError(
                f"it mixes model settings {old} into the training config: it was written by "
                "pyro-vae 0.1, whose run directories do not say which model they hold, so it "
                "cannot be rebuilt safely; train it again")
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {', '.join(sorted(known))}")
        return cls(**d)
