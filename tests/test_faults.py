"""Faults a long run meets on a shared disk: a full disk, a read-only or forbidden folder, an
I/O error, a torn write, a kill in the middle of a checkpoint. After each, the process says
in one line what failed and what is intact, every file of the run is whole (its old
version or its new one, no temporary left), and following the advice of that line ends
where the uninterrupted run ends, parameter for parameter.

The sweep makes each write operation of a short ``pyro-vae train`` (and of ``evaluate``
and ``plot``) fail in turn (:mod:`faults`). The default run takes a sample of them, one of
each kind at each file; ``pytest -m sweep tests/test_faults.py`` takes every one.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from faults import FAULTS, Disk
from runs import run_state, same, timeless, tiny_npz

from pyro_vae.cli import main
from pyro_vae.rundir import CHECKPOINT, METRICS, load_checkpoint, metrics_of

PNG_END = b"IEND\xaeB`\x82"
RECORDS = ("config.json", "model.json", "data.json")


@pytest.fixture(scope="module")
def disk_npz(tmp_path_factory):
    return tiny_npz(tmp_path_factory.mktemp("data"))


def _train(npz, run, epochs=2):
    return ["train", "--dataset", str(npz), "--z-dim", "2", "--hidden", "8", "--batch-size",
            "32", "--epochs", str(epochs), "--tensorboard", "--quiet", "--out", str(run)]


@pytest.fixture(scope="module")
def reference(disk_npz, tmp_path_factory):
    """Uninterrupted runs of one and two epochs, and every write operation of the second."""
    root = tmp_path_factory.mktemp("reference")
    one, two = root / "one", root / "two"
    assert main(_train(disk_npz, one, epochs=1)) == 0
    with Disk(two) as disk:
        assert main(_train(disk_npz, two)) == 0
    return {"states": {1: run_state(one), 2: run_state(two)}, "run": two,
            "operations": disk.operations}


def _whole(run, reference) -> list[str]:
    """Every file of ``run`` that is not a whole version of itself (none expected): a
    temporary left, a record that is not the reference's, a checkpoint or metrics that do
    not match the reference at their epoch, metrics ahead of the checkpoint, a cut PNG."""
    bad = [f"{p.relative_to(run)} (a temporary)" for p in run.rglob(".*.tmp")]
    for name in RECORDS:
        if (run / name).exists() and (run / name).read_text() != \
                (reference["run"] / name).read_text():
            bad.append(name)
    checkpointed = 0
    if (run / CHECKPOINT).exists():
        try:
            state = load_checkpoint(run)
            checkpointed = state["epoch"]
            held = [timeless(m) for m in metrics_of(state)]
            if not same((checkpointed, state["params"], held),
                         reference["states"][checkpointed]):
                bad.append(f"{CHECKPOINT} (not the reference's epoch {checkpointed})")
        except Exception as e:  # noqa: BLE001 - any failure to read it is a torn file
            bad.append(f"{CHECKPOINT} ({e})")
    if (run / METRICS).exists():
        try:
            lines = [timeless(json.loads(line))
                     for line in (run / METRICS).read_text().splitlines()]
            if lines != reference["states"][2][2][: len(lines)] or len(lines) > checkpointed:
                bad.append(f"{METRICS} ({len(lines)} epochs, checkpoint {checkpointed})")
        except ValueError as e:
            bad.append(f"{METRICS} ({e})")
    for png in run.rglob("*.png"):
        if not png.read_bytes().endswith(PNG_END):
            bad.append(f"{png.relative_to(run)} (cut)")
    for events in (run / "tensorboard").glob("events.*"):
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        if len(list(EventFileLoader(str(events)).Load())) != 5:  # version + 4 scalars
            bad.append(f"{events.relative_to(run)} (cut)")
    return bad


def _advice(err: str) -> str:
    """The last line of an error, which says how to go on."""
    return err.strip().splitlines()[-1]


def _follow(advice: str, npz, run) -> int:
    """Do what the error said: draw the figure, resume the run, or start it again."""
    if "pyro-vae plot" in advice:
        return main(["plot", str(run)])
    resume = re.search(r"\(pyro-vae (train --resume \S+ --epochs \d+),", advice)
    if resume:
        return main([*resume.group(1).split(), "--quiet"])
    assert "start the run again" in advice, advice
    return main(_train(npz, run))


def _sample(operations) -> list[int]:
    """One fault of each kind at each file (numbered from 1), first and last included."""
    seen, picked = set(), []
    for n, (kind, path) in enumerate(operations, start=1):
        name = Path(path).name.strip(".").removesuffix(".tmp")
        key = (kind, name if not name.startswith("events") else "events")
        if key not in seen:
            seen.add(key)
            picked.append(n)
    return sorted({*picked[::3], 1, len(operations)})


def _sweep(which, reference, npz, tmp_path, capsys) -> dict:
    """Fail each operation in ``which`` in turn; the figures of the note."""
    figures = {"faults": 0, "clear messages": 0, "torn files": 0, "cannot resume": 0}
    problems = []
    for n in which:
        run = tmp_path / f"fault-{n}"
        code = FAULTS[n % len(FAULTS)]
        with Disk(run, fail_at=n, code=code) as disk:
            rc = main(_train(npz, run))
        err = capsys.readouterr().err
        figures["faults"] += 1
        where = f"fault {n} ({errno.errorcode[code]} at {disk.failed})"
        line = _advice(err)
        if rc == 1 and "Traceback" not in err and line.startswith("pyro-vae: error: cannot "
                                                                  "write ") \
                and errno.errorcode[code] in line:
            figures["clear messages"] += 1
        else:
            problems.append(f"{where}: rc {rc}, {err[-300:]!r}")
        torn = _whole(run, reference)
        figures["torn files"] += len(torn)
        problems += [f"{where}: {t}" for t in torn]
        if _follow(line, npz, run) != 0 or not same(run_state(run), reference["states"][2]):
            figures["cannot resume"] += 1
            problems.append(f"{where}: following {line!r} did not end as the reference "
                            f"did: {capsys.readouterr().err[-300:]!r}")
        capsys.readouterr()
        shutil.rmtree(run)
    print(figures)
    assert not problems, "\n".join(problems)
    return figures


def test_a_fault_at_a_sample_of_the_writes_of_a_run(reference, disk_npz, tmp_path, capsys):
    which = _sample(reference["operations"])
    assert len(which) >= 10
    _sweep(which, reference, disk_npz, tmp_path, capsys)


@pytest.mark.sweep
def test_a_fault_at_every_write_of_a_run(reference, disk_npz, tmp_path, capsys):
    operations = reference["operations"]
    with capsys.disabled():
        print(f"\n{len(operations)} write operations in a run of two epochs, at "
              f"{len({p for _, p in operations})} paths")
    figures = _sweep(range(1, len(operations) + 1), reference, disk_npz, tmp_path, capsys)
    with capsys.disabled():
        print(f"train: {figures}")


def _faults_in(command, reference, tmp_path, capsys, sample=True):
    """Fail each write of ``command`` (evaluate, plot) in turn on a copy of the reference
    run whose outputs exist (an old version of each): the run is untouched, each output is
    its old or new version, and the same command again succeeds."""
    base = tmp_path / "base"
    shutil.copytree(reference["run"], base)
    first, again = {"evaluate": (["--is-samples", "4"], ["--is-samples", "8"]),
                    "plot": (["--seed", "0"], ["--seed", "1"])}[command]
    assert main([command, str(base), *first]) == 0
    before = {p.relative_to(base): p.read_bytes() for p in base.rglob("*") if p.is_file()}
    counted = tmp_path / "counted"
    shutil.copytree(base, counted)
    with Disk(counted) as disk:
        assert main([command, str(counted), *again]) == 0
    after = {p.relative_to(counted): p.read_bytes() for p in counted.rglob("*") if p.is_file()}
    outputs = {p for p in after if before.get(p) != after[p]}
    n_ops = len(disk.operations)
    which = _sample(disk.operations)[:4] if sample else range(1, n_ops + 1)
    problems = []
    for n in which:
        run = tmp_path / f"{command}-{n}"
        shutil.copytree(base, run)
        code = FAULTS[n % len(FAULTS)]
        with Disk(run, fail_at=n, code=code):
            rc = main([command, str(run), *again])
        err = capsys.readouterr().err
        line = _advice(err)
        if rc != 1 or "Traceback" in err or errno.errorcode[code] not in line \
                or "The run itself is unchanged" not in line:
            problems.append(f"{command} fault {n}: rc {rc}, {err[-300:]!r}")
        for p in run.rglob("*"):
            if p.is_file():
                rel, content = p.relative_to(run), _content(p.read_bytes(), p)
                versions = [_content(v, p) for v in (before.get(rel), after.get(rel))
                            if v is not None]
                if content not in versions:
                    problems.append(f"{command} fault {n}: {rel} is neither old nor new")
        if main([command, str(run), *again]) != 0:
            problems.append(f"{command} fault {n}: the same command again failed")
        capsys.readouterr()
        shutil.rmtree(run)
    assert not problems, "\n".join(problems)
    return {"operations": n_ops, "faults": len(which), "outputs": len(outputs)}


def _content(data: bytes, path: Path):
    """What a file says: a JSON file without the seconds its command took."""
    if path.suffix != ".json":
        return data
    try:
        return {k: v for k, v in json.loads(data).items() if not k.endswith("seconds")}
    except ValueError:
        return data


@pytest.mark.parametrize("command", ["evaluate", "plot"])
def test_a_fault_at_a_sample_of_the_writes_of_evaluate_and_plot(command, reference, tmp_path,
                                                               capsys):
    figures = _faults_in(command, reference, tmp_path, capsys)
    assert figures["faults"] >= 3 and figures["outputs"] >= 1


@pytest.mark.sweep
@pytest.mark.parametrize("command", ["evaluate", "plot"])
def test_a_fault_at_every_write_of_evaluate_and_plot(command, reference, tmp_path, capsys):
    figures = _faults_in(command, reference, tmp_path, capsys, sample=False)
    with capsys.disabled():
        print(f"\n{command}: {figures}")


# --------------------------------------------------------------------------- the three cases


def _checkpoint_write(operations, epoch) -> int:
    """The number of the ``write`` of the checkpoint of ``epoch``."""
    writes = [n for n, (kind, path) in enumerate(operations, start=1)
              if kind == "write" and path.endswith(".checkpoint.pt.tmp")]
    return writes[epoch - 1]


def test_a_full_disk_in_a_checkpoint_write_is_said_and_the_run_resumes(
        reference, disk_npz, tmp_path, capsys):
    run = tmp_path / "run"
    with Disk(run, fail_at=_checkpoint_write(reference["operations"], 2), code=errno.ENOSPC):
        assert main(_train(disk_npz, run)) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"pyro-vae: error: cannot write {run / CHECKPOINT}: No space left on device (ENOSPC). "
        f"The checkpoint of epoch 1 in {run} is intact: free space on its disk and resume the "
        f"run (pyro-vae train --resume {run} --epochs 2, or fit(..., resume=True))")
    assert "Traceback" not in err
    assert not list(run.rglob(".*.tmp"))  # the half-written temporary is gone
    assert len((run / METRICS).read_text().splitlines()) == 1  # no epoch the checkpoint lacks
    assert load_checkpoint(run)["epoch"] == 1
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert same(run_state(run), reference["states"][2])


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_epoch_1(
        reference, disk_npz, tmp_path, capsys):
    run = tmp_path / "run"
    with Disk(run, fail_at=_checkpoint_write(reference["operations"], 1), code=errno.EIO):
        assert main(_train(disk_npz, run)) == 1
    assert "No epoch of the run in" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "has no checkpoint (no epoch had finished): the run starts at epoch 1" in \
        capsys.readouterr().err
    assert same(run_state(run), reference["states"][2])

    # Without its records too, it is said to start again: nothing is lost.
    bare = tmp_path / "bare"
    with Disk(bare, fail_at=4, code=errno.ENOSPC):  # the write of config.json
        assert main(_train(disk_npz, bare)) == 1
    assert main(["train", "--resume", str(bare), "--quiet"]) == 1
    assert "no epoch of a run was trained in it, so nothing is lost; start the run again" in \
        capsys.readouterr().err


def test_a_torn_last_metrics_line_is_dropped_and_a_corrupt_one_is_refused_by_number(
        reference, disk_npz, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference["run"], run)
    whole = (run / METRICS).read_text()
    (run / METRICS).write_text(whole + '{"epoch": 3, "train_lo')  # an append cut short
    assert main(["evaluate", str(run), "--is-samples", "4"]) == 0  # it reads no metrics
    assert main(["plot", str(run)]) == 0
    assert "dropped its torn last line '{\"epoch\": 3, \"train_lo'" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    assert "dropped its torn last line" in capsys.readouterr().err
    assert [json.loads(line)["epoch"] for line in (run / METRICS).read_text().splitlines()] \
        == [1, 2, 3]

    lines = (run / METRICS).read_text().splitlines()
    (run / METRICS).write_text("\n".join([lines[0], lines[1][:20], lines[2]]) + "\n")
    for command in (["plot", str(run)], ["train", "--resume", str(run), "--quiet"]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert f"{run / METRICS} is corrupt at line 2" in err and "delete the file" in err
    (run / METRICS).unlink()  # as the message says: the checkpoint holds every epoch
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert "restored epochs [1, 2, 3]" in capsys.readouterr().err
    assert [json.loads(line)["epoch"] for line in (run / METRICS).read_text().splitlines()] \
        == [1, 2, 3]


def test_every_rename_is_made_durable_and_the_checkpoint_is_written_before_the_metrics(
        reference):
    operations = reference["operations"]
    for n, (kind, path) in enumerate(operations):
        if kind == "open":  # a file is written under a temporary name, never in place
            assert Path(path).name.startswith(".") and (path.endswith(".tmp")
                                                        or path.endswith(".lock")), path
        if kind == "replace":  # its data fsynced before, its folder fsynced after
            tmp = str(Path(path).with_name(f".{Path(path).name}.tmp"))
            assert operations[n - 1] == ("fsync", tmp), operations[n - 1]
            assert operations[n + 1] == ("fsync", str(Path(path).parent)), operations[n + 1]
    renamed = [Path(path).name for kind, path in operations if kind == "replace"]
    epochs = [i for i, name in enumerate(renamed) if name == CHECKPOINT]
    assert len(epochs) == 2
    for i in epochs:  # each checkpoint, then the metrics it holds
        assert renamed[i + 1] == METRICS


def test_a_run_killed_inside_its_checkpoint_write_resumes_exactly(reference, disk_npz,
                                                                   tmp_path, capsys):
    run = tmp_path / "run"
    fail_at = _checkpoint_write(reference["operations"], 2)
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from faults import Disk\nfrom pyro_vae.cli import main\n"
              f"with Disk({str(run)!r}, fail_at={fail_at}, kill=True):\n"
              f"    main({_train(disk_npz, run)!r})\n")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    torn = run / ".checkpoint.pt.tmp"
    assert torn.exists() and 0 < torn.stat().st_size  # half a checkpoint, left by the kill
    assert load_checkpoint(run)["epoch"] == 1  # the one before it is whole
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert f"removed {torn}, left by an interrupted write" in capsys.readouterr().err
    assert not torn.exists()
    assert same(run_state(run), reference["states"][2])


# --------------------------------------------------------------------------- a real full disk


@contextlib.contextmanager
def _tmpfs(folder: Path, size_kb: int):
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_real_full_disk_stops_a_run_cleanly_and_it_resumes_once_space_is_freed(
        reference, disk_npz, tmp_path, capsys):
    checkpoint_size = (reference["run"] / CHECKPOINT).stat().st_size
    with _tmpfs(tmp_path / "disk", 1024) as disk:
        run = disk / "run"
        assert main(_train(disk_npz, run, epochs=1)) == 0
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler = disk / "filler"
        with open(filler, "wb") as f:  # leaves room for less than a second checkpoint
            f.write(b"\0" * (free - checkpoint_size // 2))
        assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 1
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith(f"pyro-vae: error: cannot write {run}/") and "(ENOSPC)" in line
        assert f"The checkpoint of epoch 1 in {run} is intact: free space" in line
        assert not list(run.rglob(".*.tmp"))
        assert load_checkpoint(run)["epoch"] == 1
        filler.unlink()
        assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
        assert same(run_state(run), reference["states"][2])


def test_write_errors_name_the_cause_and_the_remedy(tmp_path):
    from pyro_vae.rundir import WriteError, atomic_write

    folder = tmp_path / "ro"
    folder.mkdir()
    for code, remedy in [(errno.EROFS, f"make {folder} writable"),
                         (errno.EACCES, f"give this user write permission on {folder}"),
                         (errno.EIO, "check the disk")]:
        with Disk(folder, fail_at=1, code=code), pytest.raises(WriteError) as raised:
            atomic_write(folder / "x.json", b"{}")
        assert str(raised.value).startswith(f"cannot write {folder / 'x.json'}: "
                                            f"{os.strerror(code)} ({errno.errorcode[code]})")
        assert remedy in raised.value.remedy
        assert list(folder.iterdir()) == []
