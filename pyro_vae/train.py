"""``fit``: stochastic variational inference for any model/guide pair, in a run directory.

One step is Pyro's SVI step written out: ``elbo.loss_and_grads`` (any estimator) puts the
gradient of the surrogate loss on every parameter in the param store, then one
``torch.optim`` optimizer over all of them takes a step.

A run directory holds:

- ``config.json``: the :class:`Config` of the run;
- ``metrics.jsonl``: one JSON object per epoch: ``epoch``, ``train_loss`` (the estimator's
  negative bound averaged over the epoch's batches while training), ``test_loss`` (the same
  estimator on the test split, one fixed binarization), ``seconds`` (training time of the
  epoch); losses in nats per example;
- ``checkpoint.pt``: parameters, optimizer state, RNG states and epoch, written atomically
  after every epoch and read with ``torch.load(weights_only=True)``;
- ``figures/``: ``learning_curves.png``, written at the end of training, and the figures of
  ``pyro-vae plot`` (:func:`pyro_vae.plots.plot_run`).

Resuming restores all of it, so a run interrupted after epoch k and resumed continues the
same random stream and ends where the uninterrupted run ends.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import BinaryIO

import pyro
import pyro.poutine as poutine
import torch
from tqdm.auto import tqdm

from .data import Dataset, load_dataset
from .distributed import World, data_parallel_step
from .estimators import make_elbo
from .likelihoods import get_likelihood
from .model import VAE

CONFIG, METRICS, CHECKPOINT, FIGURES = "config.json", "metrics.jsonl", "checkpoint.pt", "figures"
OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
RESUMABLE = ("epochs", "jit")  # settings a resumed run may change (jit: same numbers)


class RunError(RuntimeError):
    """A run directory, checkpoint or training run that cannot go on; the message says why."""


@dataclass
class Config:
    """Everything that defines a run: data, model, estimator, optimizer."""

    dataset: str = "mnist-binary"
    likelihood: str = "bernoulli"
    sigma: float | None = None  # the fixed scale of 'gaussian-fixed'
    min_scale: float | None = None  # the scale floor of 'gaussian'
    z_dim: int = 50
    hidden: list[int] = field(default_factory=lambda: [400])  # decoder uses them reversed
    activation: str = "relu"
    elbo: str = "meanfield"
    particles: int = 1
    vectorize: bool = True  # vectorize particles (a no-op for one particle)
    alpha: float | None = None  # the order of 'renyi'
    # Compile the loss with Pyro's JIT: for static models only, see estimators.Compiled.
    # Off by default for any model/guide pair; `pyro-vae train` turns it on for its VAE.
    jit: bool = False
    optimizer: str = "adam"
    # The step follows the gradient of the batch's *summed* negative bound, as Pyro's SVI
    # does: with SGD the effective step grows with the batch size; Adam does not care.
    lr: float = 1e-3
    batch_size: int = 128
    epochs: int = 10
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting that cannot work."""
        for name in ("z_dim", "particles", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden sizes must be at least 1, got {self.hidden}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose from: {', '.join(OPTIMIZERS)}"
            )
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available")
        self.make_elbo()
        self.make_likelihood()

    def make_elbo(self):
        return make_elbo(self.elbo, self.particles, self.vectorize, self.jit, self.alpha)

    def make_likelihood(self):
        options = {"sigma": self.sigma, "min_scale": self.min_scale}
        given = {name: value for name, value in options.items() if value is not None}
        return get_likelihood(self.likelihood, **given)

    def summary(self) -> str:
        """One line for figure titles."""
        return (f"{self.dataset}, {self.likelihood}, {self.elbo}, z_dim {self.z_dim}, "
                f"{self.optimizer} lr {self.lr:g}, batch {self.batch_size}")

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {', '.join(sorted(known))}")
        return cls(**d)


def build_vae(config: Config, data: Dataset) -> VAE:
    """The VAE that ``config`` describes, sized for ``data``, on ``config.device``."""
    vae = VAE(
        x_dim=data.x_dim,
        z_dim=config.z_dim,
        hidden=config.hidden,
        activation=config.activation,
        likelihood=config.make_likelihood(),
    )
    return vae.to(config.device)


def fit(
    model: Callable,
    guide: Callable,
    data: Dataset,
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
) -> list[dict]:
    """Train ``model``/``guide`` on ``data`` by SVI and return the per-epoch metrics.

    ``model(x)`` and ``guide(x)`` are any Pyro pair with the data plate inside. The param
    store is cleared first: every parameter comes from ``model``/``guide``. With ``resume``,
    the run in ``run_dir`` continues from its checkpoint up to ``config.epochs``.

    Launched by torchrun, every process runs ``fit`` on its share of each batch
    (:mod:`pyro_vae.distributed`); only the main process reads and writes ``run_dir``.
    """
    run_dir = Path(run_dir)
    config.check()
    world = World.from_env(config.device)
    world.check(config.elbo, config.jit)
    elbo = config.make_elbo()
    state = world.on_main(_open_run, run_dir, config, resume, world.size)
    data = data.to(config.device)

    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    with pyro.validation_enabled(True):  # model/guide mistakes surface here, clearly named
        params = _create_params(elbo, model, guide, data)
    # Training's random stream starts at the seed, whatever declaring the parameters drew;
    # each process of a distributed run draws its own noise (seed + rank).
    pyro.set_rng_seed(config.seed + world.rank)
    generator = torch.Generator(device=config.device).manual_seed(config.seed)
    # fused: the whole update in one kernel per parameter, about 4x faster on a CPU than
    # the default per-operation loop (benchmarks/README.md)
    optimizer = OPTIMIZERS[config.optimizer](params.values(), lr=config.lr, fused=True)
    if resume:
        _restore_params(params, state["params"], run_dir / CHECKPOINT)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"][world.rank])
        generator.set_state(state["rng"]["data"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"][world.rank])
        metrics = [m for m in state["metrics"] if m["epoch"] <= state["epoch"]]
        first_epoch = state["epoch"] + 1
    else:
        if world.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / CONFIG, json.dumps(asdict(config), indent=2) + "\n")
        metrics, first_epoch = [], 1
    if world.main:  # drop epochs logged after the checkpoint (an interrupted write)
        atomic_write_text(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))
    if world.size > 1:
        step = data_parallel_step(elbo, model, guide, params, world)
    else:
        step = partial(elbo.loss_and_grads, model, guide)

    show_bar = not quiet and world.main and sys.stderr.isatty()
    n_train = data.x_train.shape[0]
    steps = math.ceil(n_train / config.batch_size)
    for epoch in range(first_epoch, config.epochs + 1):
        kept = (f"The checkpoint in {run_dir} is the last good one (epoch {epoch - 1})."
                if epoch > 1 else "No checkpoint was written.")
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch",
                   disable=not show_bar, leave=False)
        start, total, seen = time.perf_counter(), 0.0, 0
        batches = data.batches("train", config.batch_size, generator)
        if world.size > 1:  # a last batch smaller than the world leaves a process nothing
            batches = (x for x in batches if x.shape[0] >= world.size)
        for i, x in enumerate(batches, start=1):
            loss = _finite(f"at epoch {epoch}, step {i}", kept, step, x)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss
            seen += x.shape[0]
            bar.update()
            bar.set_postfix(loss=f"{loss / x.shape[0]:.2f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        test_loss = _finite(f"on the test set after epoch {epoch}", kept, _test_loss,
                            elbo, model, guide, data, config.batch_size, world)
        record = dict(epoch=epoch, train_loss=total / seen, test_loss=test_loss, seconds=seconds)
        metrics.append(record)
        rng = world.gather(_rng_state())  # every process's own stream, for an exact resume
        if world.main:
            with open(run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            _save_checkpoint(run_dir, epoch, params, optimizer, generator, rng)
            if not quiet:
                print(f"epoch {epoch:3d}/{config.epochs}  train {record['train_loss']:9.3f}  "
                      f"test {test_loss:9.3f}  nats/example  {seconds:6.1f} s", flush=True)
    if metrics and world.main:
        from .plots import learning_curves  # plots reads run directories through this module

        learning_curves({"": metrics}, run_dir / FIGURES / "learning_curves.png",
                        title=config.summary())
    return metrics


def _open_run(run_dir: Path, config: Config, resume: bool, processes: int) -> dict | None:
    """Check that ``run_dir`` can take a new run, or return the state to resume it from."""
    if not resume:
        if (run_dir / CHECKPOINT).exists():
            raise RunError(f"{run_dir} already holds a run; resume it (--resume {run_dir}) or "
                           "pick another output folder")
        return None
    _check_same_run(read_config(run_dir), config, run_dir)
    state = load_checkpoint(run_dir)
    trained_by = len(state["rng"]["torch"])
    if trained_by != processes:
        raise RunError(f"{run_dir} was trained by {trained_by} process(es); resume it with as "
                       f"many (not {processes}): each continues its own random stream")
    state["metrics"] = read_metrics(run_dir)
    return state


@torch.no_grad()
def _test_loss(elbo, model, guide, data: Dataset, batch_size: int, world: World) -> float:
    """The estimator's negative bound per test example (one fixed binarization), each
    process taking its share of every batch."""
    shards = [world.shard(x) for x in data.eval_batches("test", batch_size)]
    local = sum(elbo.loss(model, guide, x) for x in shards if x.shape[0])
    return world.sum(local) / data.x_test.shape[0]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_run(run_dir: str | Path, device: str | None = None) -> tuple[Config, VAE, Dataset]:
    """Rebuild a CLI-trained run: its config, its VAE with the checkpoint's parameters, and
    its dataset, all on ``device`` (default: the run's own)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    state = load_checkpoint(run_dir)
    if device is not None:
        config.device = device
    data = load_dataset(config.dataset).to(config.device)
    vae = build_vae(config, data)
    pyro.clear_param_store()
    _restore_params(_create_params(config.make_elbo(), vae.model, vae.guide, data), state["params"],
                    run_dir / CHECKPOINT)
    return config, vae, data


# --------------------------------------------------------------------------- run directory


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    try:
        return Config.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise RunError(f"{path} is corrupt: {e}") from e


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as e:
        raise RunError(f"{path} is corrupt: {e}") from e


def load_checkpoint(run_dir: Path) -> dict:
    """The checkpoint of ``run_dir``, read as data only (``weights_only=True``)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise RunError(f"{run_dir} has no {CHECKPOINT}: it is not a run directory, or no "
                       "epoch has finished yet")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip, pickle and I/O errors alike
        raise RunError(f"{path} is corrupt or truncated and cannot be read ({e})") from e
    keys = set(state) if isinstance(state, dict) else set()
    missing = {"epoch", "params", "optimizer", "rng"} - keys
    if missing:
        raise RunError(f"{path} is not a pyro-vae checkpoint (missing {sorted(missing)})")
    if not isinstance(state["rng"], dict) or {"torch", "data"} - set(state["rng"]):
        raise RunError(f"{path} is not a pyro-vae checkpoint (its random states are missing)")
    if torch.is_tensor(state["rng"]["torch"]):  # one state per run, before processes
        state["rng"] = {key: [value] if key != "data" else value
                        for key, value in state["rng"].items()}
    return state


def _save_checkpoint(run_dir, epoch, params, optimizer, generator, rng: list[dict]) -> None:
    """``rng``: each process's random state, in rank order (one entry in one process)."""
    state = {
        "epoch": epoch,
        "params": {name: p.detach() for name, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": [r["torch"] for r in rng], "data": generator.get_state()},
    }
    if "cuda" in rng[0]:
        state["rng"]["cuda"] = [r["cuda"] for r in rng]
    atomic_write(run_dir / CHECKPOINT, lambda f: torch.save(state, f))


def _finite(where: str, kept: str, compute: Callable[..., float], *args) -> float:
    """``compute(*args)``, or a RunError naming ``where`` if it is NaN/inf or Pyro's
    validation finds a NaN/inf distribution parameter on the way (a ValueError)."""
    try:
        value = compute(*args)
    except ValueError as e:
        first_line = str(e).strip().split("\n")[0]
        raise RunError(f"invalid values {where} ({first_line}): training stopped. {kept}") from e
    if not math.isfinite(value):
        raise RunError(f"the loss is {value} {where}: training stopped. {kept}")
    return value


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through a temporary file and ``os.replace``: a reader, or a crash,
    sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _check_same_run(saved: Config, config: Config, run_dir: Path) -> None:
    changed = [f.name for f in fields(Config)
               if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        raise RunError(
            f"cannot resume {run_dir} with different settings {changed}; a resumed run may "
            f"change only {', '.join(RESUMABLE)}"
        )


def _create_params(
    elbo, model: Callable, guide: Callable, data: Dataset
) -> dict[str, torch.Tensor]:
    """Evaluate ``elbo`` once on a batch, so that guide and model declare their parameters
    and the estimator makes its one-off guesses (Pyro's plate nesting, which runs model and
    guide); return the param store's unconstrained tensors by name, sorted (a stable
    optimizer order)."""
    x = next(data.eval_batches("train", 8))
    with poutine.block():
        elbo.loss(model, guide, x)
    return dict(sorted(pyro.get_param_store().named_parameters()))


def _restore_params(params: dict[str, torch.Tensor], saved: dict, path: Path) -> None:
    if set(params) != set(saved):
        raise RunError(
            f"{path} does not fit this model: parameters missing from it "
            f"{sorted(set(params) - set(saved))}, "
            f"unexpected in it {sorted(set(saved) - set(params))}"
        )
    for name, p in params.items():
        if p.shape != saved[name].shape:
            raise RunError(f"{path}: parameter {name} has shape {tuple(saved[name].shape)}, "
                           f"the model's has {tuple(p.shape)}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
