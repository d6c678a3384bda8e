"""Replicas: two ``specbuilder serve`` processes over one store, and one client balancing over both.

What the replicas share is the store; each keeps its own caches, training pool and limits.
The tests check what sharing must get right: a model trained through one is served by the
other, a delete through one reaches the other's cache, a replica starting leaves the other's
running training alone, and a round-robin ``Client`` really uses both (shown by the per-replica
training limit, a counter each server keeps) and carries on when one stops.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_helpers import ENDLESS, QUICK, SPIRALS, server_process, serving, wait_for

from specbuilder.cli import main
from specbuilder.demo.server import ServerProcess
from specbuilder_client import Client, NotFound, ResourceExhausted, TrainRun, TrainStarted
from specbuilder_client.targets import channel_target

X = np.random.default_rng(0).standard_normal((16, 2), dtype=np.float32)
ONE_SLOT = ("--max-concurrent-trains", "1")


@dataclass
class Shared:
    """Replica A, serving for the whole module (one training slot), and the store every replica opens."""

    store: Path
    a: ServerProcess


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    """Replica A for the module's tests; each test starts (and stops) its own replica B beside it."""
    store = tmp_path_factory.mktemp("replicas") / "store"
    with server_process(store, *ONE_SLOT) as a:
        yield Shared(store, a)


def start_run(client: Client) -> tuple[TrainRun, TrainStarted] | None:
    """An endless run, or None when the replica the call reached refuses it (its one slot is taken)."""
    run = client.train(SPIRALS, "spirals", **ENDLESS)
    try:
        started = next(iter(run))
    except ResourceExhausted:
        return None
    assert isinstance(started, TrainStarted)
    return run, started


def test_a_model_trained_through_one_replica_is_served_by_the_other_and_deleted_from_both(
    shared: Shared, capsys: pytest.CaptureFixture[str]
) -> None:
    with server_process(shared.store) as b, Client(shared.a.address) as on_a, Client(b.address) as on_b:
        trained = on_b.train(SPIRALS, "spirals", **QUICK).result()
        assert trained.status == "completed"
        assert on_a.get_model(trained.model_id).status == "completed"
        expected = on_a.evaluate(trained.model_id, X).outputs  # now in A's cache of loaded models
        np.testing.assert_array_equal(on_b.evaluate(trained.model_id, X).outputs, expected)
        spec, weights = on_a.export_model(trained.model_id)
        assert spec["name"] == SPIRALS["name"] and set(weights) == {"fc1.weight", "fc1.bias", "out.weight", "out.bias"}

        assert main(["models", "list", "--server", f"{shared.a.address},{b.address}"]) == 0
        assert trained.model_id in capsys.readouterr().out

        on_b.delete_model(trained.model_id)
        with pytest.raises(NotFound, match=trained.model_id):
            on_a.evaluate(trained.model_id, X)
        with pytest.raises(NotFound):
            on_a.get_model(trained.model_id)


def test_a_replica_starting_leaves_the_other_replicas_training_running(shared: Shared) -> None:
    with Client(shared.a.address) as on_a:
        run, started = wait_for(lambda: start_run(on_a), "A's training slot")  # another test's run may be ending
        with run, server_process(shared.store) as b, Client(b.address) as on_b:
            record = on_b.get_model(started.run_id)
            assert record.status == "running"
            wait_for(lambda: len(on_b.get_model(started.run_id).history) > len(record.history), "A's progress, read through B")
            run.cancel()
            result = run.result()
            final = wait_for(lambda: (r := on_b.get_model(started.run_id)).status != "running" and r, "the run's final record")
            assert (final.status, final.has_weights) == ("cancelled", True)
            assert result.model_id == started.run_id
            assert on_b.evaluate(started.run_id, X).outputs.shape == (len(X), 2)


def test_a_round_robin_client_uses_both_replicas_and_keeps_working_when_one_stops(shared: Shared) -> None:
    with server_process(shared.store, *ONE_SLOT) as b, Client([shared.a.address, b.address]) as client:
        runs: list[tuple[TrainRun, TrainStarted]] = []

        def one_more() -> bool:
            if (started := start_run(client)) is not None:
                runs.append(started)
            return len(runs) == 2

        # each replica refuses a second run, so two at once means one on each (a client that
        # did not balance would be refused by A until the wait gives up)
        wait_for(one_more, "a run on each replica")
        assert {client.get_model(started.run_id).status for _, started in runs} == {"running"}

        b.send_signal(signal.SIGTERM)
        assert b.stop() == 0
        records = {started.run_id: client.get_model(started.run_id) for _, started in runs}
        assert sorted((r.status, r.reason.partition(" after ")[0]) for r in records.values()) == [("cancelled", "the server is shutting down"), ("running", "")]
        (stopped,) = [run for run, started in runs if records[started.run_id].status == "cancelled"]
        (survivor,) = [run for run, started in runs if records[started.run_id].status == "running"]
        assert stopped.result().status == "cancelled"  # B's run ended with B, and its stream with it

        for _ in range(6):  # every call now reaches A, whose one slot is taken
            assert client.evaluate(SPIRALS, X).outputs.shape == (len(X), 2)
            assert start_run(client) is None
        survivor.cancel()
        wait_for(lambda: client.get_model(survivor.result().model_id).status == "cancelled", "A's run recorded cancelled")


@pytest.mark.parametrize(("target", "message"), [
    (["127.0.0.1:1", "localhost:2"], "'localhost:2': several addresses must be IP addresses with ports"),
    ("127.0.0.1:1,[::1]:2", "must all be IPv4 or all IPv6"),
    ("127.0.0.1:1,127.0.0.1:70000", "'127.0.0.1:70000': needs a port from 1 to 65535"),
    ("127.0.0.1:1,,127.0.0.1:2", "must be non-empty host:port strings"),
    ([], "must be non-empty host:port strings"),
])
def test_several_addresses_must_be_ip_addresses_of_one_family(target: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(target)


def test_several_addresses_become_one_round_robin_target_and_one_address_stays_as_it_was() -> None:
    several = channel_target(" 127.0.0.1:5001, 127.0.0.1:5002")
    assert several.target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    assert dict(several.options) == {
        "grpc.service_config": '{"loadBalancingConfig": [{"round_robin": {}}]}', "grpc.default_authority": "127.0.0.1:5001",
    }
    assert channel_target(["[::1]:5001", "[::1]:5002"]).target == "ipv6:[::1]:5001,[::1]:5002"
    assert channel_target("localhost:5001") == channel_target(["localhost:5001"])
    assert channel_target("localhost:5001").options == ()
    named = channel_target("dns:///specbuilder.internal:50051", "round_robin")
    assert named.target == "dns:///specbuilder.internal:50051" and "round_robin" in dict(named.options)["grpc.service_config"]


def test_replicas_over_tls_are_checked_against_one_name(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate  # valid for 127.0.0.1, the first address: the default name to check
    with serving(tmp_path / "store", tls_cert=cert, tls_key=key) as a, serving(tmp_path / "store", tls_cert=cert, tls_key=key) as b, \
            Client([a.address, b.address], root_certificates=cert, timeout=30) as client:
        assert [m.id for m in client.list_models()] == []


def test_the_command_line_says_what_is_wrong_with_a_server_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--server", "localhost:1,localhost:2"]) == 1
    assert "--server: 'localhost:1': several addresses must be IP addresses" in capsys.readouterr().err
