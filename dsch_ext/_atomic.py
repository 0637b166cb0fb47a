"""Atomic file replacement, shared by everything that saves (index files, checkpoints).

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in the target's directory,
flushes and fsyncs it, renames it over ``path`` and fsyncs the directory. A crash, a full disk,
a file-size limit or a kill before the rename leaves the previous file untouched (a stray
``.<name>.tmp-*`` file may remain after a kill).
"""
import os
import tempfile
from typing import BinaryIO, Callable, Union


def atomic_write(path: Union[str, os.PathLike], write: Callable[[BinaryIO], None]) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
