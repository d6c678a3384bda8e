"""Real servers for the store's backends, started by the test suite itself, and the backends opened on them.

``Postgres``: a PostgreSQL server (the ``pgserver`` package ships its binaries) in a directory of
the test session; each test gets a schema of its own, so tests stay independent under xdist.
``S3Server``: moto's standalone S3 server in its own process on a free loopback port; each test
gets a bucket of its own. ``backend_urls`` names a fresh store of one of ``BACKENDS`` on them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:  # the store imports torch, which some tests check a process has not imported
    from specbuilder.store import ModelStore

BACKENDS = ("directory", "postgresql+s3", "postgresql+dir")
"""A directory store; the index in PostgreSQL with weights in a bucket, or in a (shared) directory."""
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """One PostgreSQL server in ``root`` (a Unix socket there, no TCP), stoppable and restartable."""

    def __init__(self, root: Path) -> None:
        import pgserver

        self.root = root
        self._server = pgserver.get_server(root, cleanup_mode="stop")
        self.base_url = self._server.get_uri()

    def url(self, schema: str | None = None) -> str:
        """The server's URL, with a fresh schema (or ``schema``)."""
        schema = schema or f"t_{uuid.uuid4().hex[:12]}"
        return self.base_url.replace("?", f"?schema={quote(schema)}&")

    def pg_ctl(self, *args: str) -> None:
        """Run the server's own ``pg_ctl`` on its data directory, as the user pgserver runs it as."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", *args], pgdata=self._server.pgdata, user=self._server.system_user, timeout=60)

    def running(self) -> bool:
        """Whether the server is up (``pg_ctl status``)."""
        try:
            self.pg_ctl("status")
        except subprocess.CalledProcessError:
            return False
        return True

    def stop(self) -> None:
        """Stop it; a failed ``pg_ctl stop`` of a server that did stop (seen on a loaded box) is no failure."""
        try:
            self.pg_ctl("-m", "fast", "stop")
        except subprocess.CalledProcessError:
            if self.running():
                raise

    def start(self) -> None:
        """Start it again with the options it last ran with (pg_ctl keeps them in postmaster.opts)."""
        self.pg_ctl("restart")

    def close(self) -> None:
        self._server.cleanup()


class S3Server:
    """moto's S3 server in a process of its own, on 127.0.0.1; ``env`` points boto3 at it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**AWS, "AWS_ENDPOINT_URL": self.endpoint}
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"moto's S3 server did not start on port {self.port}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Kill the server (its buckets go with it: moto keeps them in memory)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def bucket(self, name: str | None = None) -> str:
        """A fresh bucket's ``s3://`` URL; ``name`` makes that bucket (again, after a restart emptied the server)."""
        import boto3

        name = name or f"t-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint, **{k.lower(): v for k, v in AWS.items() if k != "AWS_DEFAULT_REGION"},
                     region_name=AWS["AWS_DEFAULT_REGION"]).create_bucket(Bucket=name)
        return f"s3://{name}/models"


@contextmanager
def aws_env(s3: S3Server) -> Iterator[None]:
    """The standard AWS variables pointing at ``s3`` for the ``with`` block (processes started in it inherit them)."""
    saved = {key: os.environ.get(key) for key in s3.env}
    os.environ.update(s3.env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def backend_urls(backend: str, tmp_path: Path, postgres: Postgres | None, s3: S3Server | None) -> tuple[str, str | None]:
    """``(store, weights)`` URLs of a fresh store of ``backend`` (a directory of its own under ``tmp_path``)."""
    place = tmp_path / f"store-{uuid.uuid4().hex[:8]}"
    if backend == "directory":
        return str(place), None
    assert postgres is not None
    if backend == "postgresql+s3":
        assert s3 is not None
        return postgres.url(), s3.bucket()
    return postgres.url(), str(place / "shared-weights")


def stored_weights(store: ModelStore) -> set[str]:
    """The ids whose weights the store's files or objects hold; a temporary file by its own name (none should stay)."""
    objects = getattr(store, "_objects", None)
    names = [key for key, _ in objects.ages()] if objects is not None else [p.name for p in (store.path / "weights").iterdir()]
    return {name if name.startswith(".") else name.split(".")[0] for name in names}
