"""The run directory: what a run holds on disk, who may write it, and how to rebuild it.

=================== =======================================================================
``config.json``     the :class:`~pyro_vae.config.Config` (how it trains), plus a description
                    of the estimator (and of a learning-rate scheduler given as an object)
``data.json``       what data it trained on (:meth:`~pyro_vae.data.Dataset.record`): how
                    to load them again (name or path, loader options, the subset taken),
                    rows per split, binarization, and a fingerprint of every tensor
``model.json``      what model it holds: a :class:`~pyro_vae.spec.ModelSpec` (the factory's
                    name and JSON arguments), or ``null`` for a model/guide pair that did not
                    say how it was built
``metrics.jsonl``   one JSON object per epoch: ``epoch``, ``train_loss``, ``test_loss``,
                    ``seconds``, ``lr``, and whatever columns the callbacks add
``checkpoint.pt``   parameters, the model object's buffers (fixed random permutations and
                    masks of autoregressive flows, for example), optimizer and scheduler
                    state, random states, epoch, and the ``position`` inside the next
                    epoch where it was written there (a signal, ``checkpoint_every``:
                    :mod:`pyro_vae.preemption`), else None; written atomically; read
                    with ``torch.load(weights_only=True)``: data, never code
``figures/``        PNGs
``.lock``           the one-writer lock (``fcntl.flock``), held while a process trains
=================== =======================================================================

Loading a run (:func:`load_run`) never runs code because the directory names it: only the
built-in VAE is rebuilt unasked; any other model needs its factory from the caller.

The order of writes
-------------------

Every file but ``.lock`` is written by :func:`atomic_write`: the bytes go to a temporary
``.NAME.tmp`` beside it, which is fsynced, renamed over ``NAME`` (``os.replace``), and the
folder is fsynced, so that the rename itself survives a power loss. A reader, a crash or a
full disk leaves the old version or the new one, never half of one; a write that fails
removes its temporary, and the next writer removes one that a killed process left.

The checkpoint is the source of truth. ``fit`` writes ``config.json``, ``model.json`` and
``data.json`` before the first epoch; after each epoch it writes ``checkpoint.pt``, which
holds every epoch's metrics up to its own, and only then ``metrics.jsonl``, rewritten whole
from them. So ``metrics.jsonl`` never holds an epoch that no checkpoint holds; a crash
between the two writes leaves it one epoch short, and a resume rewrites it from the
checkpoint (saying what it changed). A torn last line (no newline, not JSON: a crash in
the middle of an append by another program, or by an older pyro-vae, which appended) is
dropped, with one line saying so; a corrupt line anywhere else is refused by its number.

A file that cannot be written (a full disk, a read-only or forbidden folder, an I/O
error) raises :class:`WriteError`, which names the file and the cause; the caller adds
what is intact and how to go on ("the checkpoint of epoch 3 is intact: free space and
resume with ...").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch

from .config import Config
from .data import DataError, Dataset, as_arguments, differences, load_recorded, load_source
from .spec import ModelSpec, rebuild
from .traces import takes_labels

CONFIG, MODEL, DATA, METRICS = "config.json", "model.json", "data.json", "metrics.jsonl"
CHECKPOINT, FIGURES, LOCK = "checkpoint.pt", "figures", ".lock"
RECORDED = ("estimator", "lr_scheduler")  # descriptions beside the config, not settings


class RunError(RuntimeError):
    """A run directory, checkpoint or training run that cannot go on; the message says why."""


class WriteError(RunError):
    """A file that could not be written: ``path``, and the operating system's ``error``
    (``ENOSPC``, ``EROFS``, ``EACCES``, ``EIO``, ...). ``intact`` is what the caller knows
    to be intact and how to go on; it ends the message."""

    def __init__(self, path: Path, error: OSError, intact: str = ""):
        super().__init__(path, error)
        self.path, self.error, self.intact = Path(path), error, intact

    @property
    def cause(self) -> str:
        code = self.error.errno
        name = errno.errorcode.get(code, "") if code is not None else ""
        reason = self.error.strerror or str(self.error) or type(self.error).__name__
        return f"{reason} ({name})" if name else reason

    @property
    def remedy(self) -> str:
        """What to do before trying again, by the cause."""
        return {
            errno.ENOSPC: "free space on its disk", errno.EDQUOT: "free space in your quota",
            errno.EROFS: f"make {self.path.parent} writable (its file system is read-only)",
            errno.EACCES: f"give this user write permission on {self.path.parent}",
            errno.EPERM: f"give this user write permission on {self.path.parent}",
        }.get(self.error.errno, "check the disk")

    def __str__(self) -> str:
        said = f"cannot write {self.path}: {self.cause}"
        return f"{said}. {self.intact}" if self.intact else said


# --------------------------------------------------------------------------- one writer


@contextmanager
def writer_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock, or raise :class:`RunError` at once if another process holds
    it. The operating system drops the lock of a process that dies, killed or not, so a
    crashed run never blocks the next resume."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(run_dir, e) from e
    try:
        handle = open(run_dir / LOCK, "a")  # noqa: SIM115 - held for the whole run
    except OSError as e:
        raise WriteError(run_dir / LOCK, e) from e
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunError(f"another process is writing {run_dir} (it holds {run_dir / LOCK}): "
                       "wait for it to finish, or pick another output folder") from None
    try:
        _remove_temporaries(run_dir)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _remove_temporaries(run_dir: Path) -> None:
    """Remove the temporaries (``.NAME.tmp``) that a killed writer left: whoever holds the
    lock is the only writer, so no write is in progress. Said, one line each."""
    for tmp in sorted(run_dir.rglob(".*.tmp")):  # figures/ and tensorboard/ too
        try:
            tmp.unlink()
        except OSError:
            continue  # a read-only folder: the write that follows says so
        print(f"removed {tmp}, left by an interrupted write", file=sys.stderr)


# --------------------------------------------------------------------------- files


def write_config(run_dir: Path, config: Config, recorded: dict) -> None:
    atomic_write_text(run_dir / CONFIG, json.dumps({**asdict(config), **recorded}, indent=2)
                      + "\n")


def read_config(run_dir: Path) -> tuple[Config, dict]:
    """The run's :class:`Config` and the descriptions recorded beside it (:data:`RECORDED`)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    try:
        d = json.loads(path.read_text())
        # image_size: a data setting of the config before data.json held it (old runs)
        recorded = {key: d.pop(key, None) for key in (*RECORDED, "image_size")}
        return Config.from_dict(d), recorded
    except (ValueError, TypeError, AttributeError) as e:
        raise RunError(f"{path} is corrupt: {e}") from e


def write_model(run_dir: Path, spec: ModelSpec | None) -> None:
    text = json.dumps(spec.to_dict() if spec else None, indent=2)
    atomic_write_text(run_dir / MODEL, text + "\n")


def read_model(run_dir: Path) -> ModelSpec | None:
    path = Path(run_dir) / MODEL
    if not path.is_file():
        raise RunError(f"{run_dir} has no {MODEL}: it does not say which model it holds, so "
                       "it cannot be rebuilt (run directories of pyro-vae 0.1 lack it)")
    try:
        d = json.loads(path.read_text())
        return None if d is None else ModelSpec.from_dict(d)
    except ValueError as e:
        raise RunError(f"{path} is corrupt: {e}") from e


def write_data(run_dir: Path, data: Dataset) -> None:
    atomic_write_text(run_dir / DATA, json.dumps(data.record(), indent=2) + "\n")


def read_data(run_dir: Path) -> dict | None:
    """What the run recorded of its data; None for a run written before runs recorded it."""
    path = Path(run_dir) / DATA
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict) or "fingerprint" not in recorded:
            raise ValueError("it is not a record of data")
        return recorded
    except ValueError as e:
        raise RunError(f"{path} is corrupt: {e}") from e


def read_metrics(run_dir: Path) -> list[dict]:
    """The per-epoch records of ``metrics.jsonl`` (``[]`` where there is none). A torn last
    line (no newline, not JSON) is dropped with one line saying so; a corrupt line
    elsewhere raises :class:`RunError` naming it."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.split("\n")  # the last item is what follows the last newline ("" if whole)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "epoch" not in record:
                raise ValueError("not a record of an epoch")
        except ValueError as e:
            if number == len(lines):  # the unterminated last line: an append cut short
                print(f"{path}: dropped its torn last line {_shorten(line)!r} (a write cut "
                      f"short); the {len(records)} whole lines before it are kept",
                      file=sys.stderr)
                break
            raise RunError(f"{path} is corrupt at line {number} ({e}): only a torn last "
                           "line is dropped. The checkpoint holds every epoch's metrics: "
                           "delete the file and resume the run to write it again") from e
        records.append(record)
    return records


def _shorten(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def metrics_text(metrics: list[dict]) -> str:
    """``metrics.jsonl`` as it is written: one JSON object per line."""
    return "".join(json.dumps(m) + "\n" for m in metrics)


def write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    atomic_write_text(run_dir / METRICS, metrics_text(metrics))


def checkpoint_point(state: dict) -> str:
    """Where a checkpoint stands: "epoch 3", or "epoch 4, step 50 of 469" for one written
    inside an epoch (a preempted run, or ``checkpoint_every``)."""
    inside = state.get("position")
    return f"epoch {state['epoch']}" if inside is None else (
        f"epoch {inside['epoch']}, step {inside['step']} of {inside['steps']}")


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
    if not isinstance(state.get("metrics", ""), str):
        raise RunError(f"{path} is not a pyro-vae checkpoint (its metrics are not text)")
    if not isinstance(state["rng"], dict) or {"torch", "data"} - set(state["rng"]):
        raise RunError(f"{path} is not a pyro-vae checkpoint (its random states are missing)")
    if torch.is_tensor(state["rng"]["torch"]):  # one state per run, before processes
        state["rng"] = {key: [value] if key != "data" else value
                        for key, value in state["rng"].items()}
    return state


def require_records(run_dir: Path) -> None:
    """For a run directory without a checkpoint (no epoch finished): that it records what
    it trains (config, model and data), so that a resume can start it at epoch 1; else a
    :class:`RunError` saying that nothing is lost and to start it again."""
    run_dir = Path(run_dir)
    missing = [name for name in (CONFIG, MODEL, DATA) if not (run_dir / name).is_file()]
    if missing and not (run_dir / CHECKPOINT).exists():
        raise RunError(f"{run_dir} has no {CHECKPOINT} and no {', '.join(missing)}: no epoch "
                       "of a run was trained in it, so nothing is lost; start the run again "
                       "with the command that made it")


def metrics_of(state: dict) -> list[dict] | None:
    """The per-epoch records a checkpoint holds (None for one written before checkpoints
    held them)."""
    text = state.get("metrics")
    return None if text is None else [json.loads(line) for line in text.splitlines()]


def save_checkpoint(run_dir: Path, state: dict) -> None:
    atomic_save(run_dir / CHECKPOINT, state)


def atomic_save(path: str | Path, state: dict) -> Path:
    """``torch.save(state)`` to ``path`` by :func:`atomic_write`. Serialized in memory first:
    torch's zip writer turns a failed write into a RuntimeError without its cause; our own
    write keeps the OSError (ENOSPC, EIO, ...)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, buffer.getvalue())


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` (its folder made if missing) through a temporary file, an
    fsync, ``os.replace`` and an fsync of the folder: a reader, a crash or a power loss sees
    the old file or the new one, never half of one. On failure the temporary is removed
    and a :class:`WriteError` names ``path`` and the cause."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise WriteError(path, e) from e
        raise
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: fsync the folder itself (POSIX)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, text.encode())


# --------------------------------------------------------------------------- rebuilding


def load_run(
    run_dir: str | Path, factory: str | Callable | None = None, device: str | None = None,
    data: Dataset | None = None, edited: bool = False,
) -> tuple[Config, object, Dataset]:
    """Rebuild a run: its config, its model (the object with ``model`` and ``guide``) with
    the checkpoint's parameters, and its dataset, all on ``device`` (default: the run's own;
    the CPU, with a line saying so, for a run trained on CUDA where there is none).

    The model is the one ``model.json`` records, rebuilt by its factory: the built-in VAE
    by itself, any other only from the ``factory`` the caller gives (a name such as
    ``"my_model.py:make"``, or the callable), which must be the one recorded, from a source
    file as it was (``edited=True`` rebuilds it from an edited one).

    The data are the ones ``data.json`` records, loaded again by their name and checked
    against their fingerprint, or ``data`` (a :class:`Dataset`), which must match it too:
    a run is never evaluated on other data than it trained on.
    """
    run_dir = Path(run_dir)
    config, described = read_config(run_dir)
    spec = read_model(run_dir)
    state = load_checkpoint(run_dir)
    if state.get("position") is not None:
        print(f"{run_dir}: its checkpoint was written inside an epoch "
              f"({checkpoint_point(state)}), so its parameters are that step's; resume the "
              "run to finish the epoch", file=sys.stderr)
    recorded = read_data(run_dir) or old_data_record(config, described)
    if spec is None:
        raise RunError(
            f"{run_dir} does not record how its model was built: it was trained from "
            "model/guide functions that carry no spec. Build the model with "
            "pyro_vae.build_model(factory, **arguments) so that a run can rebuild it; this "
            "one can still be evaluated in Python from the same model and guide")
    try:
        built = rebuild(spec, factory, edited)
    except ValueError as e:
        raise RunError(f"cannot rebuild the model of {run_dir}: {e}") from e
    if device is None and config.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"{run_dir} was trained on {config.device}; CUDA is not available here, so it "
              "opens on the CPU", file=sys.stderr)
        device = "cpu"
    config.device = device or config.device
    data = _run_data(run_dir, config, recorded, data).to(config.device)
    built = built.to(config.device) if hasattr(built, "to") else built
    pyro.clear_param_store()
    labelled = takes_labels(built.model, built.guide)
    args = next(as_arguments(data.eval_batches("train", 8, labels=labelled), labelled))
    params = declare_params(built.model, built.guide, *args)
    restore_params(params, state["params"], run_dir / CHECKPOINT)
    restore_params(buffers_of(built), state.get("buffers", {}), run_dir / CHECKPOINT,
                   what="buffers")
    return config, built, data


def old_data_record(config: Config, described: dict) -> dict:
    """For a run written before runs recorded their data: its config's dataset name (and
    image size), as a record without fingerprints, so the data load unchecked."""
    return {"name": config.dataset, "fingerprint": {}, "unchecked": True,
            "source": {"name": config.dataset, "image_size": described.get("image_size")}}


def _run_data(run_dir: Path, config: Config, recorded: dict,
              data: Dataset | None) -> Dataset:
    """The data the run trained on, or a :class:`RunError` naming what differs."""
    try:
        if recorded.get("unchecked"):  # a run of an earlier pyro-vae: its config's name
            print(f"{run_dir} does not record its data (written before runs did): opening it "
                  f"on {config.dataset!r}, the name its config gives, unchecked",
                  file=sys.stderr)
            source = recorded["source"]
            return data if data is not None else load_source(source)
        if data is None:
            return load_recorded(recorded)
    except DataError as e:
        raise RunError(f"cannot open {run_dir} on its data: {e}") from e
    changed = differences(recorded, data)
    if changed:
        raise RunError(f"{run_dir} trained on other data than the ones given: "
                       f"{'; '.join(changed)}")
    return data


def buffers_of(owner) -> dict[str, torch.Tensor]:
    """The buffers of the module whose ``model``/``guide`` are trained: tensors that are no
    parameters, yet define the model (an autoregressive flow's random permutation and
    masks). The param store never sees them, so the checkpoint keeps them apart."""
    return dict(owner.named_buffers()) if isinstance(owner, torch.nn.Module) else {}


def declare_params(model: Callable, guide: Callable, *args: torch.Tensor) -> dict:
    """Run ``guide`` and ``model`` once on ``args`` (``x``, or ``x, y``) so that they
    declare their parameters; the param store's unconstrained tensors by name, sorted (a
    stable optimizer order)."""
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args)
        poutine.replay(model, trace=guide_trace)(*args)
    return params_on(args[0].device)


def params_on(device: str | torch.device) -> dict[str, torch.Tensor]:
    """The param store's unconstrained tensors by name, sorted (a stable optimizer order),
    each on ``device``: a plain ``pyro.param`` made elsewhere (a model's ``torch.zeros``
    on the CPU) is moved there; an ``nn.Parameter`` moves only with its module, so one
    elsewhere is refused by name."""
    store, target = pyro.get_param_store(), torch.device(device)
    for name, p in list(store.named_parameters()):
        if p.device.type == target.type and (target.index is None or p.device == target):
            continue
        if isinstance(p, torch.nn.Parameter):
            raise RunError(f"parameter {name!r} is on {p.device}, the run's device is {device}: "
                           "move its module there (the modules of the object whose methods "
                           "model and guide are move by themselves)")
        store[name] = store[name].detach().to(target)
    return dict(sorted(store.named_parameters()))


def restore_params(params: dict[str, torch.Tensor], saved: dict, path: Path,
                   what: str = "parameters") -> None:
    """Copy ``saved`` into ``params``, refusing, by name, any tensor that is missing,
    unexpected or of another shape: a checkpoint fits its model exactly or not at all."""
    if set(params) != set(saved):
        raise RunError(
            f"{path} does not fit this model: {what} missing from it "
            f"{sorted(set(params) - set(saved))}, "
            f"unexpected in it {sorted(set(saved) - set(params))}"
        )
    for name, p in params.items():
        if p.shape != saved[name].shape:
            raise RunError(f"{path}: {what[:-1]} {name} has shape "
                           f"{tuple(saved[name].shape)}, the model's has {tuple(p.shape)}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
