"""``fit``: stochastic variational inference for any model/guide pair, in a run directory.

One step is Pyro's SVI step written out: ``elbo.loss_and_grads`` (any estimator) puts the
gradient of the surrogate loss on every parameter in the param store, the gradient is
clipped if asked, then one ``torch.optim`` optimizer over all of them takes a step. After
each epoch: the test loss, the learning-rate schedule's step, the callbacks
(:mod:`pyro_vae.callbacks`), a line of metrics and an atomic checkpoint
(:mod:`pyro_vae.rundir` describes the files).

Resuming restores everything (parameters, optimizer, schedule, random states), so a run
interrupted after epoch k and resumed continues the same random stream and ends where the
uninterrupted run ends. One process at a time writes a run directory: a second ``fit`` on
it stops at once.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import fields, replace
from functools import partial
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from torch.optim.lr_scheduler import LRScheduler
from tqdm import tqdm

from .checks import ParamsSeen, check_labels, check_support
from .config import OPTIMIZERS, RESUMABLE, Config
from .data import Dataset, as_arguments, differences
from .distributed import World, data_parallel_step
from .estimators import describe
from .preemption import Preempted, catching
from .rundir import (
    CHECKPOINT,
    METRICS,
    RunError,
    WriteError,
    buffers_of,
    checkpoint_point,
    load_checkpoint,
    metrics_of,
    metrics_text,
    params_on,
    read_config,
    read_data,
    read_metrics,
    read_model,
    require_records,
    restore_params,
    save_checkpoint,
    write_config,
    write_data,
    write_metrics,
    write_model,
    writer_lock,
)
from .schedules import SCHEDULES
from .spec import ModelSpec
from .traces import takes_labels


def fit(
    model: Callable,
    guide: Callable,
    data: Dataset,
    config: Config,
    run_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    *,
    elbo: ELBO | None = None,
    lr_scheduler: Callable[[torch.optim.Optimizer], LRScheduler] | None = None,
    callbacks: Sequence = (),
) -> list[dict]:
    """Train ``model``/``guide`` on ``data`` by SVI and return the per-epoch metrics.

    ``model(x)`` and ``guide(x)`` are any Pyro pair with the data plate inside; a pair
    ``model(x, y)``/``guide(x, y)`` (second parameter named ``y``) gets each batch's labels
    too, and a dataset without labels is refused before anything is written. When both
    are methods of one object with a ``spec`` (a :class:`pyro_vae.VAE`, or anything made by
    :func:`pyro_vae.build_model`), the run directory records it, and ``load_run`` rebuilds
    that model. The param store is cleared first: every parameter comes from
    ``model``/``guide``. With ``resume``, the run in ``run_dir`` continues from its
    checkpoint up to ``config.epochs``. With ``run_dir=None`` it trains in memory: no
    files, no lock, nothing to resume.

    Before anything is written, the data are checked against the model: every row of both
    splits against the support of its observed site, every label against its classes
    (:mod:`pyro_vae.checks`); the run records the data it trained on (``data.json``), and a
    resumed run refuses data that have changed.

    - ``elbo``: any estimator object (a Pyro ``ELBO`` or one of :mod:`pyro_vae.estimators`)
      in place of ``config.elbo``; the run records its description.
    - ``lr_scheduler``: ``optimizer -> torch.optim.lr_scheduler`` object, stepped once per
      epoch, in place of ``config.schedule`` (a name).
    - ``callbacks``: objects with ``before_epoch``/``after_epoch`` (:mod:`pyro_vae.callbacks`).

    Launched by torchrun, every process runs ``fit`` on its share of each batch
    (:mod:`pyro_vae.distributed`); only the main process reads and writes ``run_dir``.

    Example (in memory, on 64 random binary rows of 4 pixels):

    >>> import pyro, torch
    >>> from pyro_vae import VAE, Config, Dataset, fit
    >>> pyro.set_rng_seed(0)
    >>> x = torch.rand(64, 4).round()
    >>> data = Dataset("toy", x_train=x[:48], x_test=x[48:])
    >>> vae = VAE(x_dim=4, z_dim=2, hidden=[8])
    >>> metrics = fit(vae.model, vae.guide, data, Config(epochs=2, batch_size=16), quiet=True)
    >>> [m["epoch"] for m in metrics]
    [1, 2]
    >>> metrics[-1]["test_loss"] > 0  # nats per example: -log p of binary data is positive
    True
    """
    run_dir = None if run_dir is None else Path(run_dir)
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to resume")
    if config.dataset is None:  # the data say what they are; the run records them in full
        config = replace(config, dataset=data.name)
    elif config.dataset != data.name:
        raise ValueError(f"config.dataset is {config.dataset!r}, but the data given to fit are "
                         f"{data.name!r}: the run records the data it is given, so leave "
                         "dataset unset (None) or name the data you pass")
    if elbo is not None:  # the object decides; the config says so
        config = replace(config, elbo=None, particles=elbo.num_particles,
                         vectorize=elbo.vectorize_particles, alpha=getattr(elbo, "alpha", None),
                         refine_steps=None, jit=False, compile=False)
    elif config.elbo is None:
        raise ValueError("config.elbo is None: pass the estimator object as fit(..., elbo=...)")
    if lr_scheduler is not None and config.schedule is not None:
        raise ValueError(f"a schedule by name ({config.schedule!r}) and an lr_scheduler object "
                         "were both given: pass one")
    config.check()
    elbo = elbo if elbo is not None else config.make_elbo()
    make_scheduler = lr_scheduler or SCHEDULES.get(config.schedule)
    recorded = {"estimator": describe(elbo),
                "lr_scheduler": _scheduler_name(lr_scheduler) if lr_scheduler else None}
    world = World.from_env(config.device)
    if world.restarts and run_dir is not None and not resume:  # torchrun --max-restarts
        resume = world.on_main(_restarted_here, run_dir, world)
    device = world.device(config.device)  # cuda:LOCAL_RANK for each process under torchrun
    deterministic = device.startswith("cuda") and config.deterministic
    if deterministic:  # before cuBLAS makes its workspace
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    labelled = takes_labels(model, guide)
    owner = _owner(model, guide)
    if labelled:  # a DataError naming the dataset or the label, before anything is written
        check_labels(owner, data)
    if isinstance(owner, torch.nn.Module):  # its networks go where the data go
        owner.to(device)
    data = data.to(device)
    pyro.clear_param_store()
    check_support(model, guide, data, labelled)
    try:
        with ExitStack() as held:
            if run_dir is not None:
                world.on_main(lambda: held.enter_context(writer_lock(run_dir)))
            for callback in callbacks:
                if hasattr(callback, "close"):
                    held.callback(callback.close)
            if deterministic:
                held.enter_context(_deterministic())
            requested = held.enter_context(catching(active=run_dir is not None))
            return _train(model, guide, data, config, run_dir, resume, quiet, elbo,
                          make_scheduler, callbacks, recorded, world, labelled, owner, device,
                          requested)
    except WriteError as e:  # a full disk, a read-only folder: say what is intact
        e.intact = e.intact or _intact(run_dir, e, config.epochs)
        raise


def _intact(run_dir: Path | None, e: WriteError, epochs: int) -> str:
    """What a failed write left of the run in ``run_dir``, read from the disk, and how to
    go on to ``epochs``: the checkpoint is the source of truth."""
    if run_dir is None:
        return "Nothing was saved (a run in memory)"
    try:
        point = checkpoint_point(load_checkpoint(run_dir))
    except RunError:
        return (f"No epoch of the run in {run_dir} was checkpointed, so nothing is lost: "
                f"{e.remedy} and start the run again")
    return (f"The checkpoint of {point} in {run_dir} is intact: {e.remedy} and resume "
            f"the run (pyro-vae train --resume {run_dir} --epochs {epochs}, or "
            "fit(..., resume=True))")


def _restarted_here(run_dir: Path, world: World) -> bool:
    """Whether ``run_dir`` holds a checkpoint of this torchrun launch, which torchrun has
    restarted: the group then resumes it (saying so) instead of refusing a used folder."""
    if not (run_dir / CHECKPOINT).exists() or load_checkpoint(run_dir).get("launch") != \
            world.launch:
        return False
    print(f"pyro-vae: torchrun restarted the group (restart {world.restarts}): resuming "
          f"{run_dir} from its last checkpoint", file=sys.stderr, flush=True)
    return True


def _train(model, guide, data, config, run_dir, resume, quiet, elbo, make_scheduler,
           callbacks, recorded, world, labelled, owner, device, requested) -> list[dict]:
    spec = getattr(owner, "spec", None)
    buffers = buffers_of(owner)
    writes = run_dir is not None and world.main  # the one process that writes, if any
    state = world.on_main(_open_run, run_dir, config, recorded, spec, resume, world.size,
                          data) if run_dir is not None else None

    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    with pyro.validation_enabled(True):  # model/guide mistakes surface here, clearly named
        params = _create_params(elbo, model, guide, data, labelled, device)
    declared = ParamsSeen(params)
    # Training's random stream starts at the seed, whatever declaring the parameters drew;
    # each process of a distributed run draws its own noise (seed + rank).
    pyro.set_rng_seed(config.seed + world.rank)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    # fused: the whole update in one kernel per parameter, about 4x faster on a CPU than
    # the default per-operation loop (benchmarks/README.md); torch >= 2.4 on CPUs
    eps = {} if config.eps is None else {"eps": config.eps}
    optimizer = OPTIMIZERS[config.optimizer](params.values(), lr=config.lr, fused=True, **eps)
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    if state is not None:  # resumed from its checkpoint
        restore_params(params, state["params"], run_dir / CHECKPOINT)
        restore_params(buffers, state.get("buffers", {}), run_dir / CHECKPOINT, "buffers")
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if hasattr(elbo, "load_state_dict"):  # an estimator's own clock (a temperature)
            if "estimator" not in state:
                raise RunError(f"{run_dir / CHECKPOINT} holds no state of the estimator "
                               f"{describe(elbo)}")
            elbo.load_state_dict(state["estimator"])
        torch.set_rng_state(state["rng"]["torch"][world.rank])
        generator.set_state(state["rng"]["data"])
        if "cuda" in state["rng"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"][world.rank])
        metrics = [m for m in state["metrics"] if m["epoch"] <= state["epoch"]]
        first_epoch = state["epoch"] + 1
        position = state.get("position")  # inside epoch first_epoch, or None at its start
    else:
        if hasattr(elbo, "reset"):  # an estimator's clock starts with the run
            elbo.reset()
        if writes:
            write_config(run_dir, config, recorded)
            write_model(run_dir, spec)
            write_data(run_dir, data)
        metrics, first_epoch, position = [], 1, None
    if writes:  # metrics.jsonl as the checkpoint has it (rundir: the order of writes)
        write_metrics(run_dir, metrics)
        if state is not None and state["recorded_data"] is None:  # of an earlier pyro-vae
            write_data(run_dir, data)
    if world.size > 1:
        step = data_parallel_step(elbo, model, guide, params, world)
    else:
        step = partial(elbo.loss_and_grads, model, guide)
    devices = [device] if device.startswith("cuda") else []

    show_bar = not quiet and world.main and sys.stderr.isatty()
    n_train = data.x_train.shape[0]
    steps = math.ceil(n_train / config.batch_size)
    for epoch in range(first_epoch, config.epochs + 1):
        for callback in callbacks:
            if hasattr(callback, "before_epoch"):
                with torch.random.fork_rng(devices=devices):
                    callback.before_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        # where the last step of a preempted epoch left it: its steps, loss and seconds so far
        done, total, seen, before = (0, 0.0, 0, 0.0) if position is None else (
            position["step"], position["total"], position["seen"], position["seconds"])
        at = f"epoch {epoch}, step {done} of {steps}" if done else f"epoch {epoch - 1}"
        kept = ("Nothing was written (a run in memory)." if run_dir is None else
                f"The checkpoint in {run_dir} is the last good one ({at})."
                if epoch > 1 or done else "No checkpoint was written.")
        position = None
        bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch}/{config.epochs}",
                   unit="batch", disable=not show_bar, leave=False)
        start = time.perf_counter()
        epoch_data = generator.get_state()  # the epoch's order and binarization, from here
        batches = as_arguments(data.batches("train", config.batch_size, generator,
                                          labels=labelled), labelled)
        if world.size > 1:  # a last batch smaller than the world leaves a process nothing
            batches = (args for args in batches if args[0].shape[0] >= world.size)
        for i, args in enumerate(batches, start=1):
            if i <= done:  # taken before the preemption: its batch drawn again, and passed
                continue
            x = args[0]
            loss = _finite(f"at epoch {epoch}, step {i}", kept, step, *args)
            declared.check(f"at epoch {epoch}, step {i}")
            if config.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params.values(), config.clip_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss
            seen += x.shape[0]
            bar.update()
            bar.set_postfix(loss=f"{loss / x.shape[0]:.2f}", refresh=False)
            stop = requested.signum is not None
            if world.size > 1:  # every process stops at the same step, if any was signalled
                stop = world.sum(float(stop)) > 0
            every = config.checkpoint_every
            if stop or (every is not None and i % every == 0 and i < steps):
                inside = dict(epoch=epoch, step=i, steps=steps, total=total, seen=seen,
                              seconds=before + time.perf_counter() - start)
                rng = world.gather(_rng_state())
                if writes:
                    save_checkpoint(run_dir, _checkpoint(
                        epoch - 1, params, buffers, optimizer, scheduler, epoch_data, rng,
                        metrics, elbo, world.launch, inside))
                    kept = (f"The checkpoint in {run_dir} is the last good one (epoch {epoch}, "
                            f"step {i} of {steps}).")
            if stop:
                bar.close()
                raise _preempted(requested, run_dir, config, epoch, i, steps, world)
        bar.close()
        seconds = before + time.perf_counter() - start
        if scheduler is not None:
            scheduler.step()
        test_loss = _finite(f"on the test set after epoch {epoch}", kept, _test_loss,
                            elbo, model, guide, data, config.batch_size, world, labelled)
        record = dict(epoch=epoch, train_loss=total / seen, test_loss=test_loss,
                      seconds=seconds, lr=lr)
        for callback in callbacks:
            if hasattr(callback, "after_epoch"):
                with torch.random.fork_rng(devices=devices):
                    record.update(callback.after_epoch(epoch, dict(record)) or {})
        metrics.append(record)
        rng = world.gather(_rng_state())  # every process's own stream, for an exact resume
        if writes:  # the checkpoint first: it holds this epoch's metrics too
            save_checkpoint(run_dir, _checkpoint(epoch, params, buffers, optimizer, scheduler,
                                                 generator.get_state(), rng, metrics, elbo,
                                                 world.launch))
            write_metrics(run_dir, metrics)
        if world.main and not quiet:
            print(f"epoch {epoch:3d}/{config.epochs}  train {record['train_loss']:9.3f}  "
                  f"test {test_loss:9.3f}  nats/example  {seconds:6.1f} s", flush=True)
    return metrics


@contextmanager
def _deterministic():
    """Deterministic CUDA kernels while training (``torch.use_deterministic_algorithms``;
    cuBLAS needs its workspace fixed for it, ``CUBLAS_WORKSPACE_CONFIG``), the caller's
    setting restored after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    except RuntimeError as e:
        if not isinstance(e, RunError) and "does not have a deterministic" in str(e):
            first = str(e).strip().splitlines()[0]
            raise RunError(f"{first}: this model uses a CUDA operation without a "
                           "deterministic implementation; train it with "
                           "Config(deterministic=False) (--no-deterministic), and a resumed "
                           "run is then equal to float rounding only") from e
        raise
    finally:
        torch.use_deterministic_algorithms(before)


def _owner(model: Callable, guide: Callable):
    """The object whose methods ``model`` and ``guide`` both are (a VAE), or None: its
    ``spec`` says how to rebuild it, its buffers go into the checkpoint."""
    owner = getattr(model, "__self__", None)
    return owner if owner is not None and getattr(guide, "__self__", None) is owner else None


def _scheduler_name(make: Callable) -> str:
    return getattr(make, "__qualname__", type(make).__qualname__)


def _open_run(run_dir: Path, config: Config, recorded: dict, spec: ModelSpec | None,
              resume: bool, processes: int, data: Dataset) -> dict | None:
    """Check that ``run_dir`` can take a new run, or return the state to resume it from:
    None where no epoch was checkpointed (it starts at epoch 1)."""
    if not resume:
        if (run_dir / CHECKPOINT).exists():
            raise RunError(f"{run_dir} already holds a run; resume it (--resume {run_dir}) or "
                           "pick another output folder")
        return None
    require_records(run_dir)
    saved, saved_recorded = read_config(run_dir)
    _check_same_run(saved, saved_recorded, config, recorded, run_dir)
    saved_data = read_data(run_dir)
    changed = differences(saved_data, data) if saved_data is not None else []
    if changed:
        raise RunError(f"cannot resume {run_dir} on other data: {'; '.join(changed)}")
    saved_spec = read_model(run_dir)
    same = (saved_spec is None) == (spec is None) and (spec is None or (  # two spellings
        saved_spec.short_name, saved_spec.arguments) == (spec.short_name, spec.arguments))
    if not same:
        raise RunError(f"cannot resume {run_dir} with another model: it holds "
                       f"{saved_spec or 'a model without a spec'}, given {spec or 'one without'}")
    if spec is not None and None not in (saved_spec.source, spec.source) \
            and saved_spec.source != spec.source:  # the caller built it: said, not refused
        print(f"warning: resuming {run_dir} with {spec.factory} built from an edited file "
              f"(digest {saved_spec.source} then, {spec.source} now)", file=sys.stderr)
    if not (run_dir / CHECKPOINT).exists():
        print(f"{run_dir} has no checkpoint (no epoch had finished): the run starts at "
              "epoch 1", file=sys.stderr)
        return None
    state = load_checkpoint(run_dir)
    trained_by = len(state["rng"]["torch"])
    if trained_by != processes:
        raise RunError(f"{run_dir} was trained by {trained_by} process(es); resume it with as "
                       f"many (not {processes}): each continues its own random stream")
    if (config.schedule or recorded["lr_scheduler"]) and "scheduler" not in state:
        raise RunError(f"{run_dir / CHECKPOINT} holds no learning-rate schedule state")
    state["metrics"] = _resumed_metrics(run_dir, state)
    state["recorded_data"] = saved_data  # None for a run of an earlier pyro-vae
    return state


def _resumed_metrics(run_dir: Path, state: dict) -> list[dict]:
    """The metrics up to the checkpoint's epoch, from the checkpoint (metrics.jsonl for one
    written before checkpoints held them); a line says what differs in metrics.jsonl,
    which is rewritten from them."""
    on_disk = read_metrics(run_dir)  # a torn last line dropped, a corrupt one refused
    held = metrics_of(state)
    kept = held if held is not None else [m for m in on_disk if m["epoch"] <= state["epoch"]]
    if metrics_text(kept) != metrics_text(on_disk):
        beyond = [m["epoch"] for m in on_disk if m["epoch"] > state["epoch"]]
        restored = [m["epoch"] for m in kept if m not in on_disk]
        print(f"{run_dir / METRICS}: rewritten as the checkpoint of epoch {state['epoch']} "
              "has it" + (f"; dropped epochs {beyond}, which no checkpoint holds"
                          if beyond else "")
              + (f"; restored epochs {restored}" if restored else ""), file=sys.stderr)
    return kept


def _check_same_run(saved: Config, saved_recorded: dict, config: Config, recorded: dict,
                    run_dir: Path) -> None:
    changed = [f.name for f in fields(Config)
               if f.name not in RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)]
    changed += [key for key in recorded if key != "estimator" or config.elbo is None
                if saved_recorded.get(key) != recorded[key]]
    if changed:
        raise RunError(
            f"cannot resume {run_dir} with different settings {changed}; a resumed run may "
            f"change only {', '.join(RESUMABLE)}"
        )


@torch.no_grad()
def _test_loss(elbo, model, guide, data: Dataset, batch_size: int, world: World,
               labelled: bool = False) -> float:
    """The estimator's negative bound per test example (one fixed binarization), each
    process taking its share of every batch."""
    batches = as_arguments(data.eval_batches("test", batch_size, labels=labelled), labelled)
    shards = [tuple(world.shard(a) for a in args) for args in batches]
    local = sum(elbo.loss(model, guide, *args) for args in shards if args[0].shape[0])
    return world.sum(local) / data.x_test.shape[0]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _checkpoint(epoch, params, buffers, optimizer, scheduler, data_rng: torch.Tensor,
                rng: list[dict], metrics: list[dict], elbo, launch: str | None,
                position: dict | None = None) -> dict:
    """The state after ``epoch`` finished epochs, and ``position``'s steps of the next one
    where it is given (``step``, ``steps``, and the epoch's ``total`` loss, ``seen``
    examples and ``seconds`` so far); ``data_rng``: the data generator's state at the start
    of the epoch to run next, which draws its order and binarization again; ``rng``: each
    process's random state now, in rank order (one entry in one process); ``metrics``:
    every finished epoch's record, as ``metrics.jsonl`` holds them; the estimator's own
    state where it has one (``state_dict``: a temperature's clock); ``launch``: torchrun's
    run id, by which a restarted group knows its own checkpoint (None without torchrun)."""
    state = {
        "epoch": epoch,
        "position": position,
        "launch": launch,
        "metrics": metrics_text(metrics),
        "params": {name: p.detach() for name, p in params.items()},
        "buffers": {name: b.detach() for name, b in buffers.items()},
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": [r["torch"] for r in rng], "data": data_rng},
    }
    if scheduler is not None:
        state["scheduler"] = scheduler.state_dict()
    if hasattr(elbo, "state_dict"):
        state["estimator"] = elbo.state_dict()
    if "cuda" in rng[0]:
        state["rng"]["cuda"] = [r["cuda"] for r in rng]
    return state


def _preempted(requested, run_dir: Path, config, epoch: int, step: int, steps: int,
               world: World) -> Preempted:
    """The exit of a run stopped by a signal after ``step`` of ``epoch``, its checkpoint
    written; the main process says so, and how to resume."""
    signum = requested.signum or signal.SIGTERM  # another process was signalled
    message = (f"pyro-vae: {signal.Signals(signum).name}: stopped after step {step} of "
               f"{steps} of epoch {epoch}/{config.epochs}, checkpoint written to {run_dir}; "
               f"resume with pyro-vae train --resume {run_dir} --epochs {config.epochs} (or "
               "the same fit(..., resume=True))")
    if world.main:
        print(message, file=sys.stderr, flush=True)
    return Preempted(signum, message)


def _finite(where: str, kept: str, compute: Callable[..., float], *args) -> float:
    """``compute(*args)``, or a RunError naming ``where`` if it is NaN/inf or Pyro's
    validation finds a NaN/inf distribution parameter on the way (a ValueError)."""
    try:
        value = compute(*args)
    except ValueError as e:
        if "found invalid values" not in str(e):  # not a NaN: the model's own error, as it is
            raise
        first_line = str(e).strip().split("\n")[0]
        raise RunError(f"invalid values {where} ({first_line}): training stopped. {kept}") from e
    if not math.isfinite(value):
        raise RunError(f"the loss is {value} {where}: training stopped. {kept}")
    return value


def _create_params(
    elbo, model: Callable, guide: Callable, data: Dataset, labelled: bool = False,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """Evaluate ``elbo`` once on a batch, so that guide and model declare their parameters
    and the estimator makes its one-off guesses (Pyro's plate nesting, which runs model and
    guide); return the param store's unconstrained tensors by name, sorted (a stable
    optimizer order), each on ``device``: a plain ``pyro.param`` made on another device is
    moved there (a module's parameters move with their module)."""
    args = next(as_arguments(data.eval_batches("train", 8, labels=labelled), labelled))
    with poutine.block():
        try:
            elbo.loss(model, guide, *args)
        except NotImplementedError as e:  # Pyro's TraceMeanField_ELBO on a discrete guide
            if "reparameterized" not in str(e):
                raise
            raise ValueError(f"{describe(elbo)} needs a guide whose every site can be "
                             "reparameterized, and this guide draws a discrete latent: train "
                             "it with 'trace', 'graph', 'vimco', 'gumbel', 'gumbel-st' or "
                             "'enum'") from None
    return params_on(device)
