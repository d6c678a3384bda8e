"""Shared pytest set-up: ``cuda`` tests skip without a CUDA device, ``slow`` tests without ``--runslow``.

Fixtures every test module may ask for: ``server`` (an in-process server over a fresh store, one
per module) and ``stub`` (a ``ModelServiceStub`` to it), ``certificate`` (a self-signed TLS pair), ``pki`` (certificates for mutual TLS),
``one_thread``, ``other_user`` (a throwaway OS user, root only), and the stores below; helpers to import are in ``server_helpers.py``.

torch is imported only when a collected test is marked ``cuda``, so test files that check
"this package imports no torch" still see a clean interpreter.

Store tests run against every backend through ``open_store`` (a PostgreSQL server and an S3
server, ``tests/stores.py``, are started once per session, only when a test needs them).

The reliability suite (``tests/reliability``) runs short in every run; ``--soak`` makes it
long (more examples, more clients, more time), and ``--reliability-report DIR`` keeps what each
of its tests tried and saw, for ``python tests/reliability/report.py DIR`` to tabulate.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings

from certificates import Pki, self_signed
from stores import BACKENDS, Postgres, S3Server, aws_env, backend_urls

if TYPE_CHECKING:  # imported where used: the store and the server import torch
    from specbuilder.store import ModelStore
    from specbuilder_wire.v1.service_pb2_grpc import ModelServiceStub
    from specbuilder_server import RunningServer

settings.register_profile("short", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("soak", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")
    parser.addoption("--soak", action="store_true", default=False, help="run the reliability suite long (soak mode)")
    parser.addoption("--reliability-report", metavar="DIR", default=None, help="write the reliability suite's tallies here")


def pytest_configure(config: pytest.Config) -> None:
    settings.load_profile("soak" if config.getoption("--soak") else "short")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if cuda_items:
        import torch

        if not torch.cuda.is_available():
            skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
            for item in cuda_items:
                item.add_marker(skip_cuda)
    if not config.getoption("--runslow"):
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip_slow)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is faster and steadier on a shared machine (use with ``usefixtures``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with default settings over a fresh store, shared by a test module."""
    from server_helpers import serving

    with serving(tmp_path_factory.mktemp("store")) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[ModelServiceStub]:
    """A stub on a plaintext channel to ``server``."""
    from server_helpers import connect

    with connect(server.address) as connected:
        yield connected


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost and its key (``certificates.self_signed``)."""
    pair = self_signed(tmp_path_factory.mktemp("tls"))
    return pair.cert, pair.key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA with a server and a client certificate, and a stranger's client certificate from another CA."""
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway OS user with a group of its own, removed afterwards; skips unless root can make one with useradd."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to make another OS user")
    name = f"sb-other-{uuid.uuid4().hex[:8]}"
    added = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"useradd {name} failed: {added.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server for this test session (each xdist worker has its own).

    Its data lives outside pytest's temporary tree: pytest resets that tree's root to 0700 when a
    worker starts using it, which would lock out the server's own user (pgserver runs it as one)
    in the middle of a run."""
    root = Path(tempfile.mkdtemp(prefix="specbuilder-postgres-"))
    root.chmod(0o755)
    server = Postgres(root / "data")
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server for this test session, in a process of its own; the AWS variables point at it meanwhile."""
    server = S3Server()
    with aws_env(server):
        yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each store backend in turn (their servers started only for tests that use them)."""
    return request.param


@pytest.fixture
def open_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., ModelStore]]:
    """Opens a fresh store of ``backend`` (limits and lease as keyword arguments), or another one on the index and weights of
    ``replica_of`` (as a replica on another host would); closes every one it opened."""
    postgres = request.getfixturevalue("postgres") if backend != "directory" else None
    s3 = request.getfixturevalue("s3_server") if backend == "postgresql+s3" else None
    opened: dict[ModelStore, tuple[str, str | None]] = {}

    def opener(replica_of: ModelStore | None = None, **options: Any) -> ModelStore:
        urls = backend_urls(backend, tmp_path, postgres, s3) if replica_of is None else opened[replica_of]
        from specbuilder.store import ModelStore

        store = ModelStore.open(urls[0], weights=urls[1], **options)
        opened[store] = urls
        return store

    yield opener
    for store in opened:
        store.close()
