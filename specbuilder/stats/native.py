"""The fused statistics kernel (``_kernel.cpp``): built on first use, loaded with ctypes.

The source is plain C++ with OpenMP and no torch headers, so the system's ``g++`` builds it
once and nothing comes from PyPI (no ninja). It is built for the machine it runs on
(``-march=native``) and links the ``libgomp`` torch has already loaded, so it runs on torch's
own OpenMP threads.

Loading a shared object runs its code, so the kernel is only ever loaded from a file that no
one but this process's effective user or root could have written:

- The cache is the first usable of ``<sys.prefix>/build/specbuilder`` and
  ``~/.cache/specbuilder`` (``private_directory``): that directory and every one above it
  (symlinks resolved) are owned by this user or root; the cache is writable by neither group
  nor others; a directory above it is so writable only if sticky (like ``/tmp``). Missing
  directories are created mode 0700. A candidate that fails, or holds no usable build and is
  not writable by this user, is not used: the reason is logged and listed in ``refused()``.
- Where neither is usable (a root-owned venv and ``HOME=/nonexistent``, as for a service
  account), the kernel is built in a fresh ``tempfile.mkdtemp()`` directory (0700, an
  unpredictable name) for this process only, removed at exit. No shared or predictable path
  is ever used.
- A file is loaded only if, opened without following a symlink, it is a regular file owned by
  this user or root and writable by neither group nor others; dlopen then opens
  ``/proc/self/fd/N`` of that very descriptor, so nothing can be swapped in after the check.
  A cached file that fails it is listed in ``refused()`` and rebuilt in its place.

The cached file is named by a hash of the source, the compiler, the flags and the CPU
(``cache_name``); a parallel build (pytest -n) writes a temporary file and renames it into
place, and removes builds of older sources.

``kernel()`` returns the loaded function, or None where it cannot be had (no compiler, an
unsupported platform, no safe place to build, or ``SPECBUILDER_NATIVE=0``); ``build_error()``
then says why, and the monitor uses the pure-torch path, which computes the same numbers.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("_kernel.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fPIC", "-shared", "-std=c++17")
"""-ffp-contract=off: no fused multiply-adds, so each float op rounds as torch's does."""


class Config(ctypes.Structure):
    """The layer description the kernel reads (``struct Config`` in ``_kernel.cpp``)."""

    _fields_ = [
        ("flat", ctypes.c_int32),
        ("flat_on_y", ctypes.c_int32),
        ("flat_lo", ctypes.c_float),
        ("flat_hi", ctypes.c_float),
        ("log_bins", ctypes.c_int32),
        ("bins", ctypes.c_int32),
        ("origin", ctypes.c_float),
        ("scale", ctypes.c_float),
        ("counts", ctypes.c_void_p),
        ("moments", ctypes.c_void_p),
        ("alive", ctypes.c_void_p),
    ]


FLAT_NONE, FLAT_BELOW, FLAT_ABOVE, FLAT_INSIDE, FLAT_OUTSIDE, FLAT_MASK = range(6)
"""How the kernel tests the flat region (``enum Flat`` in ``_kernel.cpp``; see ``probe.FlatTest``)."""
_errors: list[str] = []
_refused: list[str] = []
_log = logging.getLogger(__name__)


class CacheRefused(Exception):
    """A cache directory or cached file the kernel is not loaded from; the message says which and why."""


def _why_not_private(status: os.stat_result, sticky_allowed: bool) -> str | None:
    """Why someone other than this user or root could change what ``status`` describes, or None."""
    euid = os.geteuid()
    if status.st_uid not in (euid, 0):
        return f"is owned by uid {status.st_uid}, not this user (uid {euid}) or root"
    if status.st_mode & 0o022 and not (sticky_allowed and status.st_mode & stat.S_ISVTX):
        return f"can be written by group or others (mode {status.st_mode & 0o7777:04o})"
    return None


def private_directory(path: Path) -> Path:
    """``path`` with symlinks resolved, created (mode 0700) where missing, once no one but this
    user or root can write it or a directory above it (the rules in the module docstring).
    Raises ``CacheRefused`` saying which directory fails and why, or that it cannot be created."""
    resolved = path.resolve()
    for directory in (*reversed(resolved.parents), resolved):
        try:
            try:
                status = os.lstat(directory)
            except FileNotFoundError:
                try:
                    os.mkdir(directory, 0o700)
                except FileExistsError:  # a parallel process made it first
                    pass
                status = os.lstat(directory)
        except OSError as error:
            raise CacheRefused(f"{path}: cannot create or reach {directory} ({error.strerror}); not used") from None
        problem = "is not a directory" if not stat.S_ISDIR(status.st_mode) else _why_not_private(status, directory != resolved)
        if problem:
            raise CacheRefused(f"{path}: {directory} {problem}; not used")
    return resolved


def _open_checked(path: Path) -> int:
    """A read-only descriptor of ``path`` once it is checked, through that descriptor, to be a
    regular file owned by this user or root and writable by neither group nor others. Raises
    ``CacheRefused`` where it fails the check, ``OSError`` where it cannot be opened."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CacheRefused(f"{path} is a symbolic link; not loaded") from None
        raise
    status = os.fstat(descriptor)
    problem = "is not a regular file" if not stat.S_ISREG(status.st_mode) else _why_not_private(status, sticky_allowed=False)
    if problem:
        os.close(descriptor)
        raise CacheRefused(f"{path} {problem}; not loaded")
    return descriptor


def _load_checked(path: Path) -> ctypes.CDLL:
    """Load ``path`` through ``/proc/self/fd`` of the descriptor ``_open_checked`` checked. The
    descriptor stays open for the life of the process: dlopen knows a library by the name it was
    opened with, so that name must never stand for another file."""
    import torch  # noqa: F401  # its libgomp is loaded first, so the kernel shares torch's OpenMP threads

    descriptor = _open_checked(path)
    try:
        return ctypes.CDLL(f"/proc/self/fd/{descriptor}")
    except OSError:
        os.close(descriptor)
        raise


def _refuse(refusal: CacheRefused) -> None:
    _refused.append(str(refusal))
    _log.warning("statistics kernel: %s", refusal)


def _cpu_id() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return platform.machine() + flags


def compiler() -> str | None:
    """The C++ compiler the kernel is built with: ``$CXX``, else ``g++`` or ``c++`` on the PATH."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def cache_name(cxx: str) -> str:
    """The cached kernel's file name: a hash of the source, the compiler ``cxx``, the flags and the CPU."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((cxx, *FLAGS, _cpu_id())).encode()).hexdigest()[:16]
    return f"stats_kernel_{key}.so"


def _compile(cxx: str, target: Path) -> None:
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", temporary], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {result.stderr.strip()[-2000:]}")
        os.chmod(temporary, 0o755)  # whatever the umask: a group-writable build would fail its own check
        os.replace(temporary, target)
        for stale in target.parent.glob("stats_kernel_*.so"):  # builds of older sources
            if stale != target:
                stale.unlink(missing_ok=True)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def load(directory: Path, cxx: str) -> ctypes.CDLL:
    """The kernel library from ``directory``: its build for this source, ``cxx`` and CPU if that
    passes the file check and loads, else a new build written there with ``cxx`` (a cached file
    that fails the check is listed in ``refused()`` first). Raises ``CacheRefused`` where
    ``private_directory`` refuses ``directory``, or it needs a build and this user cannot write
    it; ``RuntimeError`` where the compiler fails."""
    directory = private_directory(directory)
    target = directory / cache_name(cxx)
    try:
        return _load_checked(target)
    except OSError:  # none there, unreadable to this user, or not a loadable library: build anew
        pass
    except CacheRefused as refusal:
        _refuse(refusal)
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
        raise CacheRefused(f"{directory} holds no usable kernel and this user cannot write it; not used")
    _compile(cxx, target)
    return _load_checked(target)


def _private_scratch() -> Path:
    """A fresh directory from ``tempfile.mkdtemp`` (0700, an unpredictable name), removed at exit."""
    scratch = tempfile.mkdtemp(prefix="specbuilder-kernel-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return Path(scratch)


def _load_anywhere_safe(cxx: str) -> ctypes.CDLL:
    for candidate in (Path(sys.prefix) / "build" / "specbuilder", Path.home() / ".cache" / "specbuilder"):
        try:
            return load(candidate, cxx)
        except CacheRefused as refusal:
            _refuse(refusal)
    return load(_private_scratch(), cxx)


@functools.cache
def kernel() -> ctypes._CFuncPtr | None:
    """``sb_update(config*, y*, src*, N, C, S, threads)``, or None where it cannot be had."""
    if os.environ.get("SPECBUILDER_NATIVE", "1") == "0":
        _errors.append("disabled by SPECBUILDER_NATIVE=0")
        return None
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        _errors.append(f"not built on {sys.platform}/{platform.machine()}")
        return None
    cxx = compiler()
    if cxx is None:
        _errors.append("no C++ compiler found (g++ or $CXX)")
        return None
    try:
        library = _load_anywhere_safe(cxx)
    except (OSError, RuntimeError, subprocess.SubprocessError, CacheRefused) as error:
        _errors.append(str(error))
        return None
    function = library.sb_update
    function.argtypes = [
        ctypes.POINTER(Config), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
    ]
    function.restype = ctypes.c_int
    return function


def build_error() -> str | None:
    """Why ``kernel()`` is None, or None if it loaded (or was not tried yet)."""
    return _errors[-1] if _errors else None


def refused() -> list[str]:
    """Each cache directory or cached file ``kernel()`` or ``load`` would not use, with why (also logged as a warning)."""
    return list(_refused)
