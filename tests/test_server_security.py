"""Who gets in: a bearer token on every RPC but health, TLS with a certificate made here, and client certificates (mTLS).

Roles are in ``test_server_roles.py``, token files in ``test_tokenfile.py``."""

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

from certificates import Pki
from server_helpers import SPIRALS, batch, connect, counted, open_channel, rpc_error, server_process, serving, spec_source, train_request, wait_for
from specbuilder.cli import main
from specbuilder_server import RunningServer
from specbuilder_wire.v1 import service_pb2 as pb


TOKEN = "s3cret-token"
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("store"), tokens=(TOKEN, "the-next-token")) as running:
        yield running


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def stream_requests() -> Iterator[pb.StreamEvaluateRequest]:
    yield pb.StreamEvaluateRequest(start=pb.StreamEvaluateStart(spec=spec_source(SPIRALS)))
    yield pb.StreamEvaluateRequest(batch=batch(np.zeros((2, 2), np.float32)))


@pytest.mark.parametrize(("metadata", "phrase"), [
    ((), "needs a token"),
    (bearer("wrong"), "not one of this server's tokens"),
    ((("authorization", TOKEN),), "not in the form"),  # the scheme is part of it
    (bearer("wrong") + bearer(TOKEN), "not in the form"),
], ids=["missing", "wrong", "without Bearer", "two tokens"])
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


def test_each_of_the_tokens_gets_in_and_health_needs_none(guarded: RunningServer) -> None:
    with connect(guarded.address) as stub:
        for token in (TOKEN, "the-next-token"):  # rotation: the old token and the new one, both for a while
            assert stub.ListActivations(pb.ListActivationsRequest(), metadata=bearer(token)).activations
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
    with serving(tmp_path / "store", tls_cert=cert, tls_key=key, tokens=(TOKEN,)) as running:
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
    ({"tokens": [""]}, "at least 1 character"),
    ({"tokens": ["secret", "   "]}, "should match pattern"),
    ({"inference_tokens": [""]}, "at least 1 character"),
    ({"host": "0.0.0.0", "tokens": ["secret"]}, None),
    ({"host": "0.0.0.0", "inference_tokens": ["secret"]}, None),
    ({"host": "0.0.0.0", "tls_cert": "cert", "tls_key": "key", "tls_client_ca": "ca"}, None),
    ({"tls_client_ca": "ca"}, "tls_client_ca needs TLS"),
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
    (["--token", "t", "--token", " "], {}, "--token is empty"),
    (["--inference-token", ""], {}, "--inference-token is empty"),
    ([], {"SPECBUILDER_TOKEN": ""}, "$SPECBUILDER_TOKEN is set but empty"),
    (["--host", "0.0.0.0"], {}, "no token is set"),
    (["--token", "t", "--inference-token", "t"], {}, "both as a full-access token and as an inference token"),
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
        assert "token required (1 full access, 0 inference)" in running.banner and "NO TOKEN" not in running.banner


@pytest.fixture(scope="module")
def mutual(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RunningServer]:
    """A server that requires a client certificate signed by ``pki``'s CA, and no token."""
    with serving(tmp_path_factory.mktemp("store"), tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca) as running:
        yield running


@pytest.mark.parametrize(("client", "admitted"), [("client", True), (None, False), ("stranger", False)],
                         ids=["a certificate the CA signed", "no certificate", "a certificate another CA signed"])
def test_mutual_tls_admits_only_clients_with_a_certificate_its_ca_signed(mutual: RunningServer, pki: Pki, client: str | None,
                                                                        admitted: bool) -> None:
    pair = getattr(pki, client) if client else None
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes(), private_key=pair.key.read_bytes() if pair else None,
                                               certificate_chain=pair.cert.read_bytes() if pair else None)
    before = counted(mutual)
    with connect(mutual.address, credentials) as stub:
        call = lambda: stub.ListActivations(pb.ListActivationsRequest(), timeout=10)  # noqa: E731
        if admitted:
            assert call().activations
        else:
            assert rpc_error(call).code == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call reaches the service
    if admitted:
        wait_for(lambda: counted(mutual) == before + 1)
    assert counted(mutual) == before + admitted


def test_the_client_and_the_command_line_present_a_client_certificate(mutual: RunningServer, pki: Pki,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from specbuilder_client import Client, Unavailable

    with Client(mutual.address, root_certificates=pki.ca, certificate_chain=pki.client.cert, private_key=pki.client.key) as client:
        assert client.validate(SPIRALS).valid
    with Client(mutual.address, root_certificates=pki.ca, timeout=10) as anonymous, pytest.raises(Unavailable):
        anonymous.validate(SPIRALS)
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    assert main(["models", "list", "--server", mutual.address, *tls]) == 0
    assert capsys.readouterr().out.strip() == f"no models in {mutual.address}"
    assert main(["models", "list", "--server", mutual.address, *tls[:4]]) == 1
    assert capsys.readouterr().err.strip() == "--tls-cert and --tls-key go together: give both or neither"


def test_the_start_line_says_client_certificates_are_required(tmp_path: Path, pki: Pki) -> None:
    from specbuilder_server import ServerConfig

    config = ServerConfig(store=tmp_path, tls_cert=pki.server.cert, tls_key=pki.server.key, tls_client_ca=pki.ca)
    assert config.protection == "TLS, client certificate required, NO TOKEN: every caller with a client certificate is trusted"
