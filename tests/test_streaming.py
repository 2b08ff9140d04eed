"""Streamed data (pyro_vae.streaming): a memory-mapped .npy array and a folder read a batch at a
time give the batches, the record and the trained run of the same data held in memory."""

import json
import sys

import numpy as np
import pytest
import torch
from runs import timeless
from test_data import _colour_folder, _png

from pyro_vae import data as data_module
from pyro_vae.cli import main
from pyro_vae.data import DataError, load_dataset
from pyro_vae.rundir import METRICS
from pyro_vae.streaming import NpyFile, Rows


def _images(path, n=200, seed=0):
    rng = np.random.default_rng(seed)
    np.save(path, rng.integers(0, 256, (n, 8, 8), dtype=np.uint8))
    return path


def _epoch(d, seed=3, batch=32):
    """One epoch of training batches of ``d``, drawn from one seeded generator."""
    return list(d.batches("train", batch, torch.Generator().manual_seed(seed)))


def test_a_streamed_npy_array_gives_the_batches_and_record_of_the_array_in_memory(tmp_path):
    path = _images(tmp_path / "x.npy")
    streamed, held = load_dataset(str(path), stream=True), load_dataset(str(path), stream=False)
    assert isinstance(streamed.x_train, Rows) and isinstance(held.x_train, torch.Tensor)
    assert streamed.x_train.shape == held.x_train.shape == (180, 64)  # the last 10% held out
    assert streamed.image_shape == held.image_shape == (1, 8, 8)
    a, b = _epoch(streamed), _epoch(held)
    assert len(a) == len(b) == 6 and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(torch.equal(u, v) for u, v in zip(streamed.eval_batches("test", 7),
                                                held.eval_batches("test", 7), strict=True))
    raw = np.load(path)
    assert torch.equal(held.x_test, torch.from_numpy(raw[180:].reshape(20, -1)).float() / 255)
    # the same data: a run on one opens on the other; the source says which was asked for
    record_a, record_b = streamed.record(), held.record()
    assert record_a["fingerprint"] == record_b["fingerprint"]
    assert (record_a["source"]["stream"], record_b["source"]["stream"]) == (True, False)
    assert "row 185 of" in streamed.row("test", 5)


def _resident_kb(path) -> int:
    """The kB of ``path``'s memory mappings resident in this process (/proc/self/smaps)."""
    kb, inside = 0, False
    for line in open("/proc/self/smaps"):
        first = line.split()[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and first == "Rss:":
            kb += int(line.split()[1])
    return kb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_npy_file_reads_its_rows_without_keeping_them_resident(tmp_path):
    path = tmp_path / "big.npy"
    raw = np.random.default_rng(1).integers(0, 256, (4096, 32, 32), dtype=np.uint8)  # 4 MB
    np.save(path, raw)
    rows, plain = NpyFile(path), np.load(path, mmap_mode="r")
    order = np.random.default_rng(2).permutation(len(raw))
    for batch in np.array_split(order, 16):
        assert np.array_equal(rows[batch], raw[batch])
    assert _resident_kb(path) == 0  # read through the page cache, not mapped in
    for batch in np.array_split(order, 16):
        plain[batch]  # a memory map keeps what it read resident
    assert _resident_kb(path) >= raw.nbytes // 1024
    assert np.array_equal(rows[100:200][np.arange(5)], raw[100:105])  # consecutive: one read
    assert np.array_equal(rows[100:200][[99, 0]], raw[[199, 100]])
    with pytest.raises(IndexError):
        rows[100:200][[100]]  # row 200 of the file is not in rows 100..199
    np.save(tmp_path / "f.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="holds float32; a streamed array holds uint8"):
        NpyFile(tmp_path / "f.npy")
    np.save(tmp_path / "fortran.npy", np.asfortranarray(raw[:8]))
    with pytest.raises(ValueError, match="Fortran order"):
        NpyFile(tmp_path / "fortran.npy")
    with open(path, "r+b") as f:  # truncated while open: its header still says 4096 rows
        f.truncate(path.stat().st_size - 1000)
    with pytest.raises(OSError, match="ended before row 4095: truncated"):
        rows[[4095]]


def test_streaming_is_chosen_above_the_stated_size_and_refused_where_it_cannot_be(tmp_path,
                                                                                  monkeypatch):
    path = _images(tmp_path / "x.npy")
    assert isinstance(load_dataset(str(path)).x_train, torch.Tensor)  # 46 KB as floats
    monkeypatch.setattr(data_module, "STREAM_ABOVE", 180 * 64 * 4 - 1)
    auto = load_dataset(str(path))
    assert isinstance(auto.x_train, Rows) and "stream" not in auto.source
    np.save(tmp_path / "x_test.npy", np.zeros((5, 8, 8), np.uint8))  # its own test split
    own = load_dataset(str(path))
    assert own.x_train.shape[0] == 200 and own.x_test.shape[0] == 5
    np.save(tmp_path / "f.npy", np.zeros((50, 4), np.float32))
    with pytest.raises(DataError, match="f.npy holds float32, and streamed arrays are uint8"):
        load_dataset(str(tmp_path / "f.npy"), stream=True)
    with pytest.raises(DataError, match="stream is for a .npy file or a folder"):
        load_dataset("mnist", stream=True)
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="bad.npy cannot be read as a .npy file"):
        load_dataset(str(tmp_path / "bad.npy"))
    np.save(tmp_path / "one.npy", np.zeros((10,), np.uint8))
    with pytest.raises(DataError, match=r"one.npy has shape \(10,\)"):
        load_dataset(str(tmp_path / "one.npy"))


def test_a_streamed_folder_decoded_by_workers_gives_the_batches_of_the_folder_in_memory(tmp_path):
    root = _colour_folder(tmp_path / "imgs", per_class=30)
    streamed, held = load_dataset(str(root), stream=True), load_dataset(str(root), stream=False)
    assert streamed.x_train.workers > 0  # read ahead by DataLoader processes
    assert streamed.image_shape == held.image_shape == (3, 6, 8)
    assert torch.equal(streamed.y_train, held.y_train)
    a, b = _epoch(streamed, batch=10), _epoch(held, batch=10)
    assert len(a) == 6 and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert streamed.record()["fingerprint"] == held.record()["fingerprint"]
    # a folder's faults are found from the headers, before any training
    _png(root / "blue" / "zz.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(DataError, match="mix grey and colour: .*zz.png is grey"):
        load_dataset(str(root), stream=True)


def test_a_run_on_streamed_data_trains_as_the_same_run_in_memory(tmp_path, capsys):
    path = _images(tmp_path / "x.npy", n=300)
    metrics = []
    for flag in ("--stream", "--no-stream"):
        run = tmp_path / flag.strip("-")
        assert main(["train", "--dataset", str(path), flag, "--epochs", "2", "--batch-size",
                     "50", "--hidden", "16", "--z-dim", "2", "--quiet", "--out", str(run)]) == 0
        metrics.append([timeless(json.loads(line))
                        for line in (run / METRICS).read_text().splitlines()])
        assert json.loads((run / "data.json").read_text())["source"]["stream"] == (
            flag == "--stream")
    assert len(metrics[0]) == 2 and metrics[0] == metrics[1]
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "stream"), "--epochs", "3",
                 "--no-stream"]) == 1
    assert "keeps its data: drop --stream" in capsys.readouterr().err
