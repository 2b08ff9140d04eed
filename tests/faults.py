"""A faulty disk for the tests: this process's file layer, patched.

:class:`Disk` counts every write operation under one folder, in the order they happen:
opening a file to write it, each ``write`` to it, ``fsync``, ``os.replace``/``os.rename``
and ``mkdir`` (of a folder that does not exist yet). The ``fail_at``-th operation fails as
a disk does: it raises ``OSError(code)`` (``ENOSPC``, ``EIO``, ``EROFS``, ``EACCES``), and a
failing ``write`` first writes half of its bytes, a torn write. With ``kill=True`` the
process kills itself there instead (``SIGKILL``: no ``finally``, no cleanup).

Everything pyro-vae writes goes through Python's ``open``, ``os`` and the file objects they
return, so nothing it writes escapes the count; writes elsewhere (caches) are not counted.
This is the method of SQLite's test suite: inject a fault at every write, in turn.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import signal
from pathlib import Path

FAULTS = (errno.ENOSPC, errno.EIO, errno.EROFS, errno.EACCES)


class Disk:
    def __init__(self, root: str | Path, fail_at: int | None = None,
                 code: int = errno.ENOSPC, kill: bool = False):
        self.root = str(Path(root).resolve())
        self.fail_at, self.code, self.kill = fail_at, code, kill
        self.operations: list[tuple[str, str]] = []  # (kind, path), in order
        self.failed: tuple[str, str] | None = None

    # -------------------------------------------------------------- counting, failing

    def _under(self, path) -> bool:
        try:
            return str(Path(os.fsdecode(path)).resolve()).startswith(self.root)
        except (TypeError, ValueError):
            return False  # a file descriptor, or no path at all

    def _fails(self, kind: str, path) -> bool:
        """Count one operation; whether it is the one to fail."""
        self.operations.append((kind, str(path)))
        if len(self.operations) != self.fail_at:
            return False
        self.failed = (kind, str(path))
        return True

    def _fail(self, path, partial=None):
        if partial is not None:  # a torn write: half of the bytes reach the file first
            partial()
        if self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(self.code, os.strerror(self.code), str(path))

    # -------------------------------------------------------------- the patched layer

    def __enter__(self) -> Disk:
        self._saved = (builtins.open, io.open, os.replace, os.rename, os.fsync, os.mkdir)
        real_open, _, real_replace, real_rename, real_fsync, real_mkdir = self._saved
        disk = self

        def open_(file, mode="r", *args, **kwargs):
            writes = any(c in mode for c in "wax+")
            if writes and disk._under(file) and disk._fails("open", file):
                disk._fail(file)
            handle = real_open(file, mode, *args, **kwargs)
            return _Counted(handle, disk, file) if writes and disk._under(file) else handle

        def replace(src, dst, *args, **kwargs):
            if disk._under(dst) and disk._fails("replace", dst):
                disk._fail(dst)
            return real_replace(src, dst, *args, **kwargs)

        def rename(src, dst, *args, **kwargs):
            if disk._under(dst) and disk._fails("rename", dst):
                disk._fail(dst)
            return real_rename(src, dst, *args, **kwargs)

        def fsync(fd):
            path = os.readlink(f"/proc/self/fd/{fd if isinstance(fd, int) else fd.fileno()}")
            if disk._under(path) and disk._fails("fsync", path):
                disk._fail(path)
            return real_fsync(fd)

        def mkdir(path, *args, **kwargs):
            if disk._under(path) and not os.path.isdir(path) and disk._fails("mkdir", path):
                disk._fail(path)
            return real_mkdir(path, *args, **kwargs)

        builtins.open = io.open = open_
        os.replace, os.rename, os.fsync, os.mkdir = replace, rename, fsync, mkdir
        return self

    def __exit__(self, *exc) -> None:
        (builtins.open, io.open, os.replace, os.rename, os.fsync, os.mkdir) = self._saved


class _Counted:
    """A file opened for writing whose every ``write`` is one counted operation."""

    def __init__(self, handle, disk: Disk, path):
        self._handle, self._disk, self._path = handle, disk, path

    def write(self, data):
        if self._disk._fails("write", self._path):
            def torn():
                self._handle.write(data[: len(data) // 2])
                self._handle.flush()
            self._disk._fail(self._path, partial=torn)
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __iter__(self):
        return iter(self._handle)

    def __getattr__(self, name):
        return getattr(self._handle, name)
