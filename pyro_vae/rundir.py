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
                    state, random states, epoch; written atomically; read with
                    ``torch.load(weights_only=True)``: data, never code
``figures/``        PNGs
``.lock``           the one-writer lock (``fcntl.flock``), held while a process trains
=================== =======================================================================

Loading a run (:func:`load_run`) never runs code because the directory names it: only the
built-in VAE is rebuilt unasked; any other model needs its factory from the caller.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

import pyro
import pyro.poutine as poutine
import torch

from .config import Config
from .data import DataError, Dataset, as_arguments, differences, load_dataset, load_recorded
from .spec import ModelSpec, rebuild
from .traces import takes_labels

CONFIG, MODEL, DATA, METRICS = "config.json", "model.json", "data.json", "metrics.jsonl"
CHECKPOINT, FIGURES, LOCK = "checkpoint.pt", "figures", ".lock"
RECORDED = ("estimator", "lr_scheduler")  # descriptions beside the config, not settings


class RunError(RuntimeError):
    """A run directory, checkpoint or training run that cannot go on; the message says why."""


# --------------------------------------------------------------------------- one writer


@contextmanager
def writer_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock, or raise :class:`RunError` at once if another process holds
    it. The operating system drops the lock of a process that dies, killed or not, so a
    crashed run never blocks the next resume."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunError(f"another process is writing {run_dir} (it holds {run_dir / LOCK}): "
                       "wait for it to finish, or pick another output folder") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


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
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as e:
        raise RunError(f"{path} is corrupt: {e}") from e


def write_metrics(run_dir: Path, metrics: list[dict]) -> None:
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(m) + "\n" for m in metrics))


def append_metrics(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


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


def save_checkpoint(run_dir: Path, state: dict) -> None:
    atomic_write(run_dir / CHECKPOINT, lambda f: torch.save(state, f))


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
            return data if data is not None else load_dataset(
                source["name"], image_size=source["image_size"])
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
