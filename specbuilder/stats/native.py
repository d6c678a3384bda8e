"""The fused statistics kernel (``_kernel.cpp``): built on first use, loaded with ctypes.

The source is plain C++ with OpenMP and no torch headers, so the system's ``g++`` builds it
once in 5-10 s and nothing comes from PyPI (no ninja). The shared object is cached under the
virtual environment (``<sys.prefix>/build/specbuilder``, else ``~/.cache/specbuilder``), keyed
by a hash of the source, the flags and the CPU (it is built for the machine it runs on); a
parallel build (pytest -n) writes a temporary file and renames it into place. It links the
``libgomp`` torch has already loaded, so it runs on torch's own OpenMP threads.

``kernel()`` returns the loaded function, or None where it cannot be built (no compiler, an
unsupported platform, or ``SPECBUILDER_NATIVE=0``); ``build_error()`` then says why, and the
monitor uses the pure-torch path, which computes the same numbers.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
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


def _cache_dir() -> Path:
    for candidate in (Path(sys.prefix) / "build" / "specbuilder", Path.home() / ".cache" / "specbuilder"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    return Path(tempfile.gettempdir()) / "specbuilder"


def _cpu_id() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return platform.machine() + flags


def compiler() -> str | None:
    """The C++ compiler the kernel is built with: ``$CXX``, else ``g++`` or ``c++`` on the PATH."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _build() -> Path:
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (g++ or $CXX)")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((cxx, *FLAGS, _cpu_id())).encode()).hexdigest()[:16]
    target = _cache_dir() / f"stats_kernel_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", temporary], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{cxx} failed: {result.stderr.strip()[-2000:]}")
        os.replace(temporary, target)
        for stale in target.parent.glob("stats_kernel_*.so"):  # builds of older sources
            if stale != target:
                stale.unlink(missing_ok=True)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


@functools.cache
def kernel() -> ctypes._CFuncPtr | None:
    """``sb_update(config*, y*, src*, N, C, S, threads)``, or None where it cannot be had."""
    if os.environ.get("SPECBUILDER_NATIVE", "1") == "0":
        _errors.append("disabled by SPECBUILDER_NATIVE=0")
        return None
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        _errors.append(f"not built on {sys.platform}/{platform.machine()}")
        return None
    try:
        import torch  # noqa: F401  # its libgomp is loaded first, so the kernel shares torch's OpenMP threads

        library = ctypes.CDLL(str(_build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
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
