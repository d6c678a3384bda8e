"""Servers in subprocesses on a free port, as users run them; stopped with SIGTERM.

The demo, the gRPC benchmarks and the tests need real servers in their own processes:
``serve_subprocess`` starts ``python -m specbuilder serve --host 127.0.0.1 --port 0``
(``listening_process`` any command that prints the same first line), reads the port from its
``listening on HOST:PORT`` line, and on leaving sends SIGTERM (the graceful stop) and checks that
it exited 0, unless the caller signalled it itself (``ServerProcess.send_signal``: a kill, or a
stop whose exit the caller checks). Stderr goes to a file, not a pipe: a pipe nobody reads would
stall a server that logs a lot, and the file is there to quote when something fails.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

START_SECONDS = 60.0
"""The longest a server may take to print its ``listening on`` line (it imports torch first)."""
STOP_SECONDS = 30.0
"""The longest a graceful stop may take before the server is killed."""
LISTENING = re.compile(r"listening on (\S+):(\d+)")


class ServerProcessError(RuntimeError):
    """The server subprocess did not start, or did not stop cleanly; the message quotes its stderr."""


@dataclass
class ServerProcess:
    """A running ``specbuilder serve`` subprocess and where it listens."""

    process: subprocess.Popen[str]
    host: str
    port: int
    log: Path
    """The server's stderr."""
    banner: str
    """Its ``listening on ...`` line, which says what protects it."""
    signalled: bool = field(default=False, init=False)
    """The caller sent it a signal (``send_signal``): how it exits is the caller's to check."""

    @property
    def address(self) -> str:
        """``host:port`` for a client."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory_kib(self) -> dict[str, int]:
        """The server's ``VmRSS`` and ``VmHWM`` (peak resident memory) from ``/proc/<pid>/status``, in KiB."""
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
        return fields

    def stderr_tail(self, chars: int = 2000) -> str:
        """The end of what the server wrote to stderr."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def send_signal(self, number: int) -> None:
        """Send signal ``number`` now, without waiting (SIGTERM: the graceful stop; SIGKILL: a crash);
        the exit code, which ``stop`` waits for and returns, is then the caller's to check."""
        self.signalled = True
        self.process.send_signal(number)

    def stop(self) -> int:
        """SIGTERM, wait for the graceful stop (kill after ``STOP_SECONDS``); the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The server's first stdout line, or "" if it exits or stays silent for ``timeout`` seconds."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else ""


@contextmanager
def listening_process(command: list[str], *, log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Iterator[ServerProcess]:
    """Run ``command`` (a server that prints ``listening on HOST:PORT`` first) until the block ends.

    ``env`` adds environment variables (``OMP_NUM_THREADS``); stderr goes to ``log``. The server
    gets SIGTERM when the block ends; ``ServerProcessError`` if it does not start, or does not
    exit 0 after a block that ended normally and sent it no signal of its own.
    """
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd, env={**os.environ, **(env or {})})
    line = _first_line(process, START_SECONDS)
    found = LISTENING.search(line)
    server = ServerProcess(process, found.group(1) if found else "", int(found.group(2)) if found else 0, log, line)
    if not found:
        server.stop()
        raise ServerProcessError(f"the server did not start (stdout {line!r}); its stderr:\n{server.stderr_tail()}")
    try:
        yield server
    except BaseException:
        server.stop()
        raise
    code = server.stop()
    if code != 0 and not server.signalled:
        raise ServerProcessError(f"the server exited with status {code}; its stderr:\n{server.stderr_tail()}")


@contextmanager
def serve_subprocess(store: Path | str, *flags: str, env: Mapping[str, str] | None = None,
                     log: Path | None = None) -> Iterator[ServerProcess]:
    """``specbuilder serve`` over ``store`` (a directory, or a URL) on 127.0.0.1 and a free port, with
    extra ``flags`` (``--shared-memory``, ``--device cpu``); its stderr goes to ``log``, by default
    ``<store>.server.log`` beside a directory (a URL, given as a string, has no such place: give ``log``)."""
    if log is None:
        if not isinstance(store, Path):
            raise ValueError(f"serve_subprocess: the store {store!r} has no folder beside it for the server's log; give log")
        log = store.parent / f"{store.name}.server.log"
    command = [sys.executable, "-m", "specbuilder", "serve", "--host", "127.0.0.1", "--port", "0", "--store", str(store), *flags]
    with listening_process(command, log=log, env=env) as server:
        yield server


__all__ = ["ServerProcess", "ServerProcessError", "listening_process", "serve_subprocess"]
