"""Roles: full-access tokens may call every RPC, inference tokens only those the role table lists.

Every RPC of the service descriptor is called with no token, an inference token and a full token
(a new RPC is covered the day it is added, and needs full access until the table lists it). A
refused call does no work: the servicer never counts it, and a refused Train, DeleteModel or
ExportModel leaves the store as it was. The docs and the protos list the same RPCs as the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server_helpers import QUICK, ROOT, SPIRALS, answer, counted, invoke, message_class, open_channel, serving, wait_for
from specbuilder_wire.v1 import service_pb2 as pb
from specbuilder_client import Client, PermissionDenied
from specbuilder_server import RunningServer
from specbuilder_server.roles import MODEL_SERVICE, ROLES, Role, inference_rpcs, needed

FULL = "full-access-token"
INFERENCE = "inference-token"
SERVICE = pb.DESCRIPTOR.services_by_name["ModelService"]
CALLERS = {"no token": (), "inference token": (("authorization", f"Bearer {INFERENCE}"),),
           "full token": (("authorization", f"Bearer {FULL}"),)}
REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED")
X = np.random.default_rng(7).normal(size=(4, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("store"), tokens=(FULL,), inference_tokens=(INFERENCE,)) as running:
        yield running


def path(method: MethodDescriptor) -> str:
    return f"/{SERVICE.full_name}/{method.name}"


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda method: method.name)
def test_every_rpc_answers_each_role_as_the_table_says(guarded: RunningServer, method: MethodDescriptor, caller: str) -> None:
    request = message_class(method.input_type)()  # empty: the role is decided before anything in it is read
    before = counted(guarded, method.name)
    with open_channel(guarded.address) as channel:
        code, message, _ = answer(lambda: invoke(channel, method, request, CALLERS[caller]))
        answer(lambda: invoke(channel, method, request, CALLERS["full token"]))  # a call that is counted, after the one tested
    if caller == "no token":
        expected = "UNAUTHENTICATED"
    elif caller == "inference token" and needed(path(method)) is Role.FULL:
        expected = "PERMISSION_DENIED"
        assert f"{method.name} needs the full-access role" in message and ", ".join(inference_rpcs()) in message
    else:
        expected = "admitted"
    assert (code if code in REFUSALS else "admitted") == expected
    runs = before + 1 + (expected == "admitted")  # the full-token call, and the tested one unless it was refused
    wait_for(lambda: counted(guarded, method.name) >= runs)  # a call is counted as it ends, maybe after its client has its status
    assert counted(guarded, method.name) == runs  # a refused call never reached the servicer


def test_the_table_names_only_rpcs_that_exist_and_an_unlisted_one_needs_full_access() -> None:
    reflection = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    exists = {path(method) for method in SERVICE.methods} | {f"/{reflection.full_name}/{m.name}" for m in reflection.methods}
    assert set(ROLES) <= exists
    assert needed(f"/{MODEL_SERVICE}/SomeRpcAddedLater") is Role.FULL
    assert {"Train", "DeleteModel", "ExportModel"}.isdisjoint(inference_rpcs())


def test_an_inference_token_reads_and_evaluates_but_changes_and_exports_nothing(guarded: RunningServer) -> None:
    with Client(guarded.address, token=FULL) as admin, Client(guarded.address, token=INFERENCE) as reader:
        model_id = admin.train(SPIRALS, "spirals", **QUICK).result().model_id
        assert reader.validate(SPIRALS).valid and reader.compile(SPIRALS).summary
        assert reader.evaluate(model_id, X).outputs.shape == (4, 2)
        assert list(reader.evaluate_stream(SPIRALS, [X, X]))[1].shape == (4, 2)
        assert reader.get_model(model_id).status == "completed" and reader.activations()
        stored = [summary.id for summary in reader.list_models()]
        refusals = {
            "Train": lambda: reader.train(SPIRALS, "spirals", **QUICK).result(),
            "DeleteModel": lambda: reader.delete_model(model_id),
            "ExportModel": lambda: reader.export_model(model_id),
        }
        for name, call in refusals.items():
            with pytest.raises(PermissionDenied, match=f"{name} needs the full-access role"):
                call()
        assert [summary.id for summary in admin.list_models()] == stored  # nothing trained, nothing deleted
        assert admin.export_model(model_id)[1]
        admin.delete_model(model_id)
        assert model_id not in [summary.id for summary in reader.list_models()]


def test_reflection_describes_the_service_to_an_inference_token(guarded: RunningServer) -> None:
    with open_channel(guarded.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = list(stub.ServerReflectionInfo(iter([request]), metadata=CALLERS["inference token"], timeout=30))
    assert MODEL_SERVICE in [service.name for service in answers[0].list_services_response.service]


@pytest.mark.parametrize("document", ["docs/reliability.md", "README.md", "protos/specbuilder/v1/service.proto"])
def test_the_docs_list_the_rpcs_an_inference_token_may_call_as_the_table_does(document: str) -> None:
    text = (ROOT / document).read_text()
    found = re.search(r"inference token(?:s)? may call ([^.]*)\.", re.sub(r"\s*(?://)?\s*\n\s*(?://)?\s*", " ", text))
    assert found, f"{document} does not say which RPCs an inference token may call"
    assert re.findall(r"`(\w+)`", found.group(1)) == inference_rpcs()


def test_a_token_has_one_role(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from specbuilder_server import ServerConfig

    with pytest.raises(ValidationError, match="both as a full-access token and as an inference token"):
        ServerConfig(store=tmp_path, tokens=("same",), inference_tokens=("same",))
    assert "token required (1 full access, 2 inference)" in ServerConfig(store=tmp_path, tokens=("a",), inference_tokens=("b", "c")).protection

