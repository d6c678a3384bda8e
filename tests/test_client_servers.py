"""The client against servers set up otherwise: a token, TLS, small limits, shared memory, and a
client process in which torch cannot be imported at all.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest

from server_helpers import QUICK, ROOT, SPIRALS, server_process, serving
from specbuilder_client import Client, InvalidArgument, ResourceExhausted, Unauthenticated, Unavailable
from specbuilder_server import RunningServer

TOKEN = "client-test-token"
X = np.random.default_rng(3).normal(size=(5, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("store"), tokens=(TOKEN,), max_message_mb=1) as running:
        yield running


def test_the_token_goes_with_every_call_and_a_wrong_one_is_unauthenticated(guarded: RunningServer) -> None:
    with Client(guarded.address, token=TOKEN) as client:
        assert client.evaluate(SPIRALS, X).outputs.shape == (5, 2)
        assert client.evaluate_stream(SPIRALS, [X, X]).summary.rows == 10
        assert client.train(SPIRALS, "spirals", epochs=1).result().status == "completed"
    for token in (None, "not-it"):
        with Client(guarded.address, token=token) as client, pytest.raises(Unauthenticated) as caught:
            client.activations()
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED and "token" in caught.value.message


def test_a_message_over_the_server_limit_is_resource_exhausted(guarded: RunningServer) -> None:
    big = np.zeros((150_000, 2), np.float32)  # 1.2 MB, over the server's 1 MB
    with Client(guarded.address, token=TOKEN) as client, pytest.raises(ResourceExhausted) as caught:
        client.evaluate(SPIRALS, big)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_tls_with_root_certificates_as_a_path_or_bytes(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with serving(tmp_path / "store", tls_cert=cert, tls_key=key, tokens=(TOKEN,)) as running:
        for roots in (cert, cert.read_bytes()):
            with Client(running.address, token=TOKEN, root_certificates=roots) as client:
                assert client.validate(SPIRALS).valid
        with Client(running.address, token=TOKEN, timeout=10) as plaintext, pytest.raises(Unavailable):
            plaintext.validate(SPIRALS)


@pytest.fixture(scope="module")
def shm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``specbuilder serve --shared-memory`` in its own process, as users run it; its address."""
    with server_process(tmp_path_factory.mktemp("store"), "--shared-memory") as running:
        yield running.address


def test_shared_memory_evaluate_equals_inline_and_the_region_goes_on_close(shm_server: str) -> None:
    with Client(shm_server) as client:
        model_id = client.train(SPIRALS, "spirals", **QUICK).result().model_id
        inline = client.evaluate(model_id, X, statistics=True)
        for x in (X, np.random.default_rng(4).normal(size=(200_000, 2)).astype(np.float32)):  # the second outgrows the region
            shared = client.evaluate(model_id, x, statistics=True, shared_memory=True)
            if x is X:
                np.testing.assert_array_equal(shared.outputs, inline.outputs)
                assert shared.stats == inline.stats
            else:
                np.testing.assert_array_equal(shared.outputs, client.evaluate(model_id, x).outputs)
        region = client._shared.name
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=region)


def test_a_shared_array_is_sent_where_it_lies_and_its_region_goes_with_its_last_view(shm_server: str) -> None:
    x = np.random.default_rng(7).normal(size=(300, 2)).astype(np.float32)
    with Client(shm_server, shared_memory=True) as client:
        inline = client.evaluate(SPIRALS, x, shared_memory=False).outputs
        array = client.shared_array(x.shape)
        assert array.dtype == np.float32 and not array.any()
        array[...] = x
        (name,) = client._shared._owned
        np.testing.assert_array_equal(client.evaluate(SPIRALS, array).outputs, inline)
        np.testing.assert_array_equal(client.evaluate(SPIRALS, array[100:]).outputs, inline[100:])  # a view: sent at its offset
        assert client._shared.name is None, "nothing was copied into the client's own region"
        np.testing.assert_array_equal(client.evaluate(SPIRALS, array[::2]).outputs, inline[::2])  # strided: copied
        assert client._shared.name is not None
        view = array[5:]
        del array
        gc.collect()
        assert os.path.exists(f"/dev/shm/{name}"), "a live view keeps its region"
        del view
        gc.collect()
        assert not os.path.exists(f"/dev/shm/{name}") and not client._shared._owned
        kept = client.shared_array((4, 2), np.float64)
        (name,) = client._shared._owned
        with pytest.raises(TypeError, match="cannot travel"):
            client.shared_array((4, 2), np.complex64)
    assert not os.path.exists(f"/dev/shm/{name}"), "closing the client unlinks the regions of live arrays"
    kept[...] = 1.0
    assert kept.sum() == 8.0


def test_serve_answers_shared_memory_calls_on_its_local_socket_unless_told_not_to(shm_server: str, tmp_path: Path) -> None:
    with Client(shm_server, shared_memory=True) as client:
        first = client.evaluate(SPIRALS, X).outputs
        assert client.local_socket is not None and Path(client.local_socket).is_socket()
        np.testing.assert_array_equal(client.evaluate(SPIRALS, X).outputs, first)
    with server_process(tmp_path / "store", "--shared-memory", "--shared-memory-over-grpc", "--no-local-socket") as running, \
            Client(running.address, shared_memory=True) as client:
        inline = client.evaluate(SPIRALS, X, shared_memory=False).outputs  # another process: other initial weights
        np.testing.assert_array_equal(client.evaluate(SPIRALS, X).outputs, inline)
        np.testing.assert_array_equal(client.evaluate(SPIRALS, X).outputs, inline)
        assert client.local_socket is None


def test_a_shared_memory_client_is_the_default_and_a_server_without_it_refuses(shm_server: str, server: RunningServer) -> None:
    with Client(shm_server, shared_memory=True) as client:
        assert client.evaluate(SPIRALS, X).outputs.shape == (5, 2)
    with Client(server.address, shared_memory=True) as client, pytest.raises(InvalidArgument) as caught:
        client.evaluate(SPIRALS, X)
    assert [v.path for v in caught.value.violations] == ["input.shared_memory"]
    assert "--shared-memory" in caught.value.message


NO_TORCH = textwrap.dedent(
    """
    import json, sys
    import importlib.abc

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this process")

    sys.meta_path.insert(0, NoTorch())
    import numpy as np
    from specbuilder_client import Client, InvalidArgument

    spec = json.loads(sys.argv[2])
    x = np.ones((3, 2), np.float32)
    with Client(sys.argv[1], timeout=60) as client:
        facts = {"valid": client.validate(spec).valid, "compiled": len(client.compile(spec, code=True).layers)}
        facts["evaluate"] = list(client.evaluate(spec, x, statistics=True).outputs.shape)
        facts["stream"] = client.evaluate_stream(spec, [x, x]).summary.rows
        run = client.train(spec, "spirals", epochs=1)
        facts["events"] = [event.type for event in run]
        model_id = run.result().model_id
        facts["record"] = client.get_model(model_id).status
        facts["weights"] = sorted(client.export_model(model_id)[1])
        facts["activations"] = len(client.activations()) > 0
        try:
            client.evaluate({"input_shape": [2], "layers": [{"type": "relu6x"}]}, x)
        except InvalidArgument as error:
            facts["error"] = [v.path for v in error.violations]
    facts["torch"] = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
    print(json.dumps(facts))
    """
)


def test_the_client_works_where_torch_cannot_be_imported(server: RunningServer) -> None:
    done = subprocess.run([sys.executable, "-c", NO_TORCH, server.address, json.dumps(SPIRALS)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout)
    assert facts == {
        "valid": True, "compiled": 3, "evaluate": [3, 2], "stream": 6,
        "events": ["started", "epoch", "finished"], "record": "completed",
        "weights": ["fc1.bias", "fc1.weight", "out.bias", "out.weight"], "activations": True,
        "error": ["layers[0].type"], "torch": [],
    }
