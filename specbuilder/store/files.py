"""The files of a model store: weights written so they exist only complete, and flock locks.

A weights file is written under a temporary name in its final directory and fsynced
(``write_temp``), then renamed into place and the directory fsynced (``publish``): a crash
leaves either nothing, a temporary file (``.<id>.safetensors.<random>.tmp``), or a complete file. Locks are
``flock(2)`` locks, which the kernel drops when their holder dies, even by SIGKILL; that is
how a store tells a live owner of a run from a dead one without trusting process ids.
Linux and other POSIX systems only.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

WEIGHTS_SUFFIX = ".safetensors"
TEMP_NAME = re.compile(r"\..+\.safetensors\.[0-9a-f]{8}\.tmp|\.tmp[A-Za-z0-9]{6}")
"""Our temporary names, and the ones safetensors' own atomic ``save_file`` writes before its rename."""


def fsync_path(path: Path, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path``, recognisable as one by ``is_temp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def is_temp(path: Path) -> bool:
    """Whether ``path`` is a temporary file left by ``write_temp`` (or by safetensors inside it)."""
    return TEMP_NAME.fullmatch(path.name) is not None


def write_temp(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write ``tensors`` as safetensors to a fresh temporary file beside ``path``, on disk; return it.

    On failure the temporary file is removed and the error raised.
    """
    temp = temp_path(path)
    try:
        save_file(dict(tensors), temp, metadata=dict(metadata))
        fsync_path(temp)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def publish(temp: Path, path: Path) -> None:
    """Rename a written temporary file to ``path`` and make the rename durable."""
    os.replace(temp, path)
    fsync_path(path.parent, directory=True)


@contextmanager
def locked(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing) for the ``with`` block; blocks until granted.

    Each call opens the file afresh, so two holders in one process (two threads, two stores)
    exclude each other just as two processes do.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hold(path: Path) -> int:
    """Create ``path`` and hold an exclusive flock on it until the returned descriptor is closed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_held(path: Path) -> bool:
    """Whether some live open file holds an flock on ``path`` (False when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
