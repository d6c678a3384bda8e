"""The files of a model store: weights written so they exist only complete, and flock locks.

A weights file is written under a temporary name in its final directory and fsynced
(``write_temp``), then renamed into place and the directory fsynced (``publish``): a crash
leaves either nothing, a temporary file (``.<id>.safetensors.<random>.tmp``), or a complete file. Locks are
``flock(2)`` locks, which the kernel drops when their holder dies, even by SIGKILL; that is
how a store tells a live owner of a run from a dead one without trusting process ids.

Everything a store creates is its user's alone: directories 0700, the index and lock files
0600 (safetensors writes weights 0600), so other local users can neither read specs and
training records nor take a store's locks. ``owned_dir``/``owned_file`` refuse what another
user owns and narrow what an older specbuilder created wider.
Linux and other POSIX systems only.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from specbuilder.store.records import StoreError

WEIGHTS_SUFFIX = ".safetensors"
TEMP_NAME = re.compile(r"\..+\.safetensors\.[0-9a-f]{8}\.tmp|\.tmp[A-Za-z0-9]{6}")
"""Our temporary names, and the ones safetensors' own atomic ``save_file`` writes before its rename."""
DIR_MODE = 0o700
FILE_MODE = 0o600


def _user(uid: int) -> str:
    """``name (uid N)``, or ``uid N`` for a uid with no account."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_owner(path: Path) -> os.stat_result:
    """``path``'s status if this process's effective user owns it (symlinks followed), else ``StoreError``.

    Root is no exception: a root process that opened a store another user can write would trust
    files that user can plant, and would leave files there that user can no longer open.
    """
    status = path.stat()
    if status.st_uid != os.geteuid():
        raise StoreError(
            f"{path} belongs to {_user(status.st_uid)}, not to this process's user, {_user(os.geteuid())}: a model store is "
            "only opened by the user who owns it, as its owner can read and replace what it holds; use a store directory "
            "of your own (--store DIR or $SPECBUILDER_STORE), or run as its owner"
        )
    return status


def _narrow(path: Path, status: os.stat_result, mode: int) -> None:
    """Take off ``path`` the permissions beyond ``mode`` (an older specbuilder created it wider)."""
    if stat.S_IMODE(status.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(status.st_mode) & mode)


def owned_dir(path: Path, narrow: bool = True) -> None:
    """Make sure ``path`` is a directory of this user's: created 0700 (parents as usual), or checked.

    An existing one is narrowed to 0700 when ``narrow`` (the store's own subdirectories); else
    (a store's root, whose mode is its user's choice) it is only refused when every user may
    write to it, as any of them could then replace the index or the weights.
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    status = check_owner(path)
    if narrow:
        _narrow(path, status, DIR_MODE)
    elif status.st_mode & stat.S_IWOTH:
        raise StoreError(
            f"{path} can be written by every user (mode {stat.S_IMODE(status.st_mode):o}), so any of them could replace the "
            f"store's index or weights; use a directory only you can write to (chmod o-w {path})"
        )


def owned_file(path: Path, create: bool = False) -> None:
    """Make sure ``path``, if it exists (created empty and 0600 when ``create``), is this user's only.

    Creating the index before SQLite does gives it 0600 (SQLite would make it 0644), and SQLite
    gives its -wal and -shm files the index's mode.
    """
    if create:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    elif not path.exists():
        return
    _narrow(path, check_owner(path), FILE_MODE)


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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def hold(path: Path) -> int:
    """Create ``path`` and hold an exclusive flock on it until the returned descriptor is closed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
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
