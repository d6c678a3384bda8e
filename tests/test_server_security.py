"""Who gets in: the bearer token on every RPC but health, and TLS with a certificate made here."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server_helpers import SPIRALS, batch, certificate, connect, open_channel, rpc_error, server_process, serving, spec_source, train_request  # noqa: F401 - fixture
from specbuilder_server import RunningServer
from specbuilder_wire.v1 import service_pb2 as pb


TOKEN = "s3cret-token"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("store"), token=TOKEN) as running:
        yield running


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def stream_requests() -> Iterator[pb.StreamEvaluateRequest]:
    yield pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=spec_source(SPIRALS)))
    yield pb.StreamEvaluateRequest(batch=batch(np.zeros((2, 2), np.float32)))


@pytest.mark.parametrize(("metadata", "phrase"), [
    ((), "needs a token"),
    (bearer("wrong"), "not this server's token"),
    ((("authorization", TOKEN),), "not this server's token"),  # the scheme is part of it
], ids=["missing", "wrong", "without Bearer"])
def test_every_kind_of_call_without_the_right_token_is_unauthenticated(guarded: RunningServer, metadata: tuple[tuple[str, str], ...], phrase: str) -> None:
    with connect(guarded.address) as stub:
        calls = {
            "unary": lambda: stub.ListActivations(pb.ListActivationsRequest(), metadata=metadata),
            "server stream": lambda: stub.Train(train_request(), metadata=metadata),
            "bidirectional stream": lambda: stub.StreamEvaluate(stream_requests(), metadata=metadata),
        }
        for kind, call in calls.items():
            failure = rpc_error(call)
            assert (failure.code, phrase in failure.message) == (UNAUTHENTICATED, True), kind
    assert not any(m.name == "spirals-mlp" for m in _models(guarded))  # the Train call never ran


def _models(server: RunningServer) -> list[pb.ModelRecord]:
    with connect(server.address) as stub:
        return list(stub.ListModels(pb.ListModelsRequest(), metadata=bearer(TOKEN)).models)


def test_the_right_token_gets_in_and_health_needs_none(guarded: RunningServer) -> None:
    with connect(guarded.address) as stub:
        assert stub.ListActivations(pb.ListActivationsRequest(), metadata=bearer(TOKEN)).activations
        answers = list(stub.StreamEvaluate(stream_requests(), metadata=bearer(TOKEN)))
        assert answers[-1].summary.rows == 2
    with open_channel(guarded.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="specbuilder.v1.ModelService"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        failure = rpc_error(lambda: reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        assert failure.code == UNAUTHENTICATED  # only health is open


def test_tls_serves_clients_that_trust_the_certificate_and_no_plaintext(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with serving(tmp_path / "store", tls_cert=cert, tls_key=key, token=TOKEN) as running:
        trusted = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with connect(running.address, trusted) as stub:
            answer = stub.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(np.ones((3, 2), np.float32))), metadata=bearer(TOKEN))
            assert list(answer.output.shape) == [3, 2]
        with connect(running.address) as plaintext:
            failure = rpc_error(lambda: plaintext.ListActivations(pb.ListActivationsRequest(), metadata=bearer(TOKEN), timeout=10))
            assert failure.code == grpc.StatusCode.UNAVAILABLE
        with connect(running.address, grpc.ssl_channel_credentials()) as untrusting:  # the system's roots do not know it
            failure = rpc_error(lambda: untrusting.ListActivations(pb.ListActivationsRequest(), metadata=bearer(TOKEN), timeout=10))
            assert failure.code == grpc.StatusCode.UNAVAILABLE


def test_tls_needs_both_files(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    from pydantic import ValidationError

    from specbuilder_server import ServerConfig

    with pytest.raises(ValidationError, match="tls_cert and tls_key go together"):
        ServerConfig(store=tmp_path, tls_cert=certificate[0])


@pytest.mark.parametrize(("settings", "refused"), [
    ({"host": "0.0.0.0"}, "reachable from other machines and no token is set"),
    ({"host": "192.0.2.7", "tls_cert": "cert", "tls_key": "key"}, "reachable from other machines and no token is set"),
    ({"host": "[::]"}, "reachable from other machines and no token is set"),
    ({"token": ""}, "at least 1 character"),
    ({"token": "   "}, "should match pattern"),
    ({"host": "0.0.0.0", "token": "secret"}, None),
    ({"host": "0.0.0.0", "insecure": True}, None),
    ({"host": "localhost"}, None),
    ({"host": "127.0.0.2"}, None),
    ({"host": "::1"}, None),
])
def test_configuration_fails_closed(tmp_path: Path, settings: dict[str, object], refused: str | None) -> None:
    from pydantic import ValidationError

    from specbuilder_server import ServerConfig

    if refused is None:
        assert ServerConfig(store=tmp_path, **settings).protection  # type: ignore[arg-type]
        return
    with pytest.raises(ValidationError, match=refused):
        ServerConfig(store=tmp_path, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(("arguments", "environment", "message"), [
    (["--token", ""], {}, "--token is empty"),
    ([], {"SPECBUILDER_TOKEN": ""}, "$SPECBUILDER_TOKEN is set but empty"),
    (["--host", "0.0.0.0"], {}, "no token is set"),
])
def test_serve_refuses_an_empty_token_and_a_public_host_without_one(tmp_path: Path, arguments: list[str], environment: dict[str, str],
                                                                   message: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "SPECBUILDER_TOKEN"} | environment
    done = subprocess.run([sys.executable, "-m", "specbuilder", "serve", "--port", "0", "--store", str(tmp_path / "store"), *arguments],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and message in done.stderr and not (tmp_path / "store").exists()


def test_the_start_line_says_what_protects_the_server(tmp_path: Path) -> None:
    with server_process(tmp_path / "open") as running:
        assert "NO TOKEN" in running.banner
    with server_process(tmp_path / "closed", env={"SPECBUILDER_TOKEN": TOKEN}) as running:
        assert "token required" in running.banner and "NO TOKEN" not in running.banner
