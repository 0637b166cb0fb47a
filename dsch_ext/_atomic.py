"""Atomic file replacement, shared by everything that saves (index files, checkpoints).

``atomic_write(path, write)`` calls ``write(f)`` on a temporary file in the target's directory,
flushes and fsyncs it, gives it the mode of the file it replaces (a new file: 0666 less the
umask, as ``open`` would), renames it over ``path`` and fsyncs the directory. A crash, a full disk,
a file-size limit or a kill before the rename leaves the previous file untouched (a stray
``.<name>.tmp-*`` file may remain after a kill).
"""
import os
import stat
import tempfile
from typing import BinaryIO, Callable, Union


def _target_mode(path: str) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _interrupt_behind(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None


def atomic_write(path: Union[str, os.PathLike], write: Callable[[BinaryIO], None]) -> None:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a file to write")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    mode = _target_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        interrupt = _interrupt_behind(exc)
        if interrupt is not None and interrupt is not exc:
            # A writer cleaning up after Ctrl-C (torch.save's zip writer does) can raise its own
            # error from inside the interrupt; what happened is the interrupt.
            raise interrupt from None
        if isinstance(exc, OSError) and exc.errno is not None:  # name the target, not the temporary file
            raise OSError(exc.errno, exc.strerror, path) from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
