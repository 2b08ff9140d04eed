r"""Data larger than memory: the rows of a split read per batch, from a memory-mapped array or
from image files, instead of one float tensor.

A :class:`Rows` stands where a :class:`~pyro_vae.data.Dataset` holds a split's float tensor
of shape (N, D). It keeps the images as stored, 8 bits a pixel, and turns the rows of each
batch into floats in [0, 1] as they are read,

.. math:: x_{nd} = u_{nd} / 255, \qquad u_{nd} \in \{0, \dots, 255\},

the same float32 division the in-memory path applies to the whole split at load time. The
batches' rows come from the same permutation (:meth:`Dataset.batch_rows`, one generator)
and a binarization draws from the same generator after it, so a run on streamed data steps
through bit-for-bit the batches of the same run in memory, and resumes exactly like it.

Two kinds of storage:

- a ``.npy`` array of uint8 (:class:`NpyFile`): each batch's rows are read from the file
  (through the kernel's page cache, never into the process's resident memory), nothing is
  decoded;
- a folder of PNG/JPEG files: each batch's files are decoded by Pillow, in
  ``torch.utils.data.DataLoader`` workers (:data:`FOLDER_WORKERS`) that run ahead of the
  training step.

Resident memory is then the model and one batch, not four bytes a pixel of every image.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

FOLDER_WORKERS = 2  # DataLoader processes decoding a streamed folder's images
_CHUNK = 8192  # rows read at a time where a whole split is read (its fingerprint, .float())


class Rows:
    """An (N, D) split read on demand: ``rows[i]`` for a tensor of row indices is a float32
    tensor of those rows in [0, 1] on :attr:`device`; ``rows[a:b]`` is the view of rows a to b;
    :meth:`batches` reads a list of index tensors ahead (DataLoader workers, for files).

    ``source`` is anything that ``source[numpy index array]`` turns into a uint8 array of
    shape (len(index), ...) and that slices into the same kind: a memory-mapped numpy array,
    or :class:`ImageFiles`."""

    def __init__(self, source, device: str | torch.device = "cpu", workers: int = 0,
                 width: int | None = None):
        self.source, self.workers = source, workers
        self.device = torch.device(device)
        if width is None:  # the values a row holds: read from the first row
            width = int(np.prod(np.asarray(source[np.arange(1)]).shape[1:]))
        self.shape = torch.Size((len(source), width))

    dtype = torch.float32

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> Rows | torch.Tensor:
        if isinstance(key, slice):
            if key.step not in (None, 1):
                raise ValueError(f"streamed rows are sliced contiguously, not with step {key.step}")
            return Rows(self.source[key], self.device, self.workers, self.shape[1])
        return self._scale(self._read(key)).to(self.device)

    def to(self, device: str | torch.device) -> Rows:
        return Rows(self.source, device, self.workers, self.shape[1])

    def float(self) -> torch.Tensor:
        """All the rows, in memory (for a split small enough to hold: a test split)."""
        return self[torch.arange(len(self))]

    def batches(self, rows: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """``self[r]`` for each ``r`` of ``rows``, in order; read by worker processes that run
        ahead of the consumer where :attr:`workers` > 0."""
        if self.workers == 0:
            yield from (self[r] for r in rows)
            return
        loader = torch.utils.data.DataLoader(
            _Gathers(self, rows), batch_size=None, num_workers=self.workers,
            prefetch_factor=4, multiprocessing_context="fork")
        yield from (self._scale(u8).to(self.device) for u8 in loader)

    def fingerprint(self) -> str:
        """:func:`pyro_vae.data.fingerprint` of the float tensor these rows stand for, read a
        chunk at a time: the same digest as the in-memory split's."""
        h = hashlib.blake2b(f"{self.dtype} {tuple(self.shape)}".encode(), digest_size=16)
        for start in range(0, len(self), _CHUNK):
            chunk = self._scale(self._read(np.arange(start, min(start + _CHUNK, len(self)))))
            h.update(memoryview(chunk.numpy()).cast("B"))
        return h.hexdigest()

    def _read(self, index) -> torch.Tensor:
        index = np.asarray(torch.as_tensor(index).cpu(), dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.source[index])).reshape(len(index), -1)

    @staticmethod
    def _scale(u8: torch.Tensor) -> torch.Tensor:
        return u8.float().div_(255)  # as data.load_dataset scales a split held in memory


class _Gathers(torch.utils.data.Dataset):
    """The uint8 rows of batch ``i`` of ``rows``, as a DataLoader worker reads them."""

    def __init__(self, split: Rows, rows: Sequence[torch.Tensor]):
        self.split, self.rows = split, [torch.as_tensor(r).cpu() for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.split._read(self.rows[i])


class ImageFiles:
    """Image files read on demand: ``files[index]`` decodes those files (in order) into one
    uint8 array of shape (len(index), channels, height, width), each as
    :func:`pyro_vae.data.load_image_folder` decodes it."""

    def __init__(self, files: Sequence[Path], image_size: tuple[int, int] | None):
        self.files, self.image_size = list(files), image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index) -> ImageFiles | np.ndarray:
        from .data import _read_image

        if isinstance(index, slice):
            return ImageFiles(self.files[index], self.image_size)
        return np.stack([_read_image(self.files[i], self.image_size)[0].transpose(2, 0, 1)
                         for i in np.asarray(index).reshape(-1)])


class NpyFile:
    """The rows of a ``.npy`` file's uint8 array, read from the file on demand: ``rows[index]``
    reads those rows (a numpy index array) into one array, ``rows[a:b]`` is rows a to b.

    Each row is one ``os.pread`` of its bytes at ``offset + i * row_bytes`` (a run of
    consecutive rows, one read), so the rows come through the kernel's page cache and never
    count in this process's resident memory. A memory map would be simpler and no faster:
    the pages it touches stay resident (the kernel maps the cached pages around each one it
    faults in), so an epoch of random rows leaves the whole array in the process's resident
    set, and handing them back after each batch (``madvise``) made every row a page fault,
    four times the reads' cost (1.4 against 0.35 ms for 256 rows of 784 bytes)."""

    def __init__(self, path: str | Path):
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # shape, dtype, offset
        if header.dtype != np.uint8:
            raise ValueError(f"{path} holds {header.dtype}; a streamed array holds uint8")
        if not header.flags.c_contiguous:
            raise ValueError(f"{path} is stored in Fortran order; a streamed array is read "
                             "row by row: save numpy.ascontiguousarray(x)")
        self.file = open(path, "rb")  # noqa: SIM115 - open while rows are read; closed with it
        self.shape, self.start = header.shape, 0
        self.row_bytes = int(np.prod(header.shape[1:]))
        self.offset = header.offset

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> NpyFile | np.ndarray:
        if isinstance(index, slice):
            start, stop, _ = index.indices(len(self))
            view = object.__new__(NpyFile)
            view.__dict__.update(self.__dict__)
            view.start, view.shape = self.start + start, (max(0, stop - start), *self.shape[1:])
            return view
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) and ((index < 0) | (index >= len(self))).any():
            raise IndexError(f"rows {index.min()}..{index.max()} of {len(self)}")
        fd, size = self.file.fileno(), self.row_bytes
        at = self.offset + (self.start + index) * size
        if len(index) > 1 and (np.diff(index) == 1).all():  # consecutive: one read
            data = bytearray(os.pread(fd, size * len(index), int(at[0])))
        else:
            data = bytearray().join([os.pread(fd, size, a) for a in at.tolist()])
        if len(data) != size * len(index):
            raise OSError(f"{self.file.name} ended before row {index.max()}: truncated?")
        return np.frombuffer(data, np.uint8).reshape(len(index), *self.shape[1:])
