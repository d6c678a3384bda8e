"""Prometheus metrics: calls by method and status code, latency, compute queue and time, trainings,
streams and store operations, scraped from ``/metrics`` as Prometheus scrapes them."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_helpers import SPIRALS, batch, connect, rpc_error, server_process, serving, spec_source, train_request

from specbuilder_wire.v1 import service_pb2 as pb


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``/metrics``: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_calls_compute_trainings_and_the_store_are_counted(tmp_path: Path) -> None:
    x = np.zeros((4, 2), np.float32)
    with serving(tmp_path / "store", metrics_port=0) as running, connect(running.address) as stub:
        assert running.metrics_port
        for _ in range(3):
            stub.Evaluate(pb.EvaluateRequest(spec=spec_source(SPIRALS), input=batch(x)))
        rpc_error(lambda: stub.Evaluate(pb.EvaluateRequest(spec=spec_source({**SPIRALS, "layers": [{"type": "relu7"}]}), input=batch(x))))
        rpc_error(lambda: stub.GetModel(pb.GetModelRequest(model_id="0" * 32)))
        run_id = list(stub.Train(train_request()))[-1].run_id
        stub.GetModel(pb.GetModelRequest(model_id=run_id))
        samples = scrape(running.metrics_port)
    assert samples[("specbuilder_rpc_total", (("code", "OK"), ("method", "Evaluate")))] == 3
    assert samples[("specbuilder_rpc_total", (("code", "INVALID_ARGUMENT"), ("method", "Evaluate")))] == 1
    assert samples[("specbuilder_rpc_total", (("code", "NOT_FOUND"), ("method", "GetModel")))] == 1
    assert samples[("specbuilder_rpc_total", (("code", "OK"), ("method", "Train")))] == 1
    assert samples[("specbuilder_rpc_seconds_count", (("method", "Evaluate"),))] == 4
    assert samples[("specbuilder_compute_seconds_count", (("lane", "small"),))] == 3
    assert samples[("specbuilder_compute_queue_seconds_count", (("lane", "small"),))] == 3
    assert samples[("specbuilder_store_seconds_count", (("operation", "start_run"),))] == 1
    assert samples[("specbuilder_store_seconds_count", (("operation", "finish_run"),))] == 1
    assert samples[("specbuilder_store_seconds_count", (("operation", "get"),))] == 2
    assert samples.get(("specbuilder_store_errors_total", (("operation", "get"),)), 0) == 0  # an unknown id is no store error
    assert samples[("specbuilder_trainings_running", ())] == 0 and samples[("specbuilder_streams_open", ())] == 0


def test_serve_prints_where_its_metrics_are(tmp_path: Path) -> None:
    with server_process(tmp_path / "store", "--metrics-port", "0") as running:
        line = running.process.stdout.readline() if running.process.stdout else ""
        assert line.startswith("metrics on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        assert ("specbuilder_streams_open", ()) in scrape(port)


def test_a_server_that_cannot_start_says_why_and_lets_go_of_its_metrics_port(tmp_path: Path) -> None:
    import socket

    from specbuilder_server import ServerConfig, ServerStartError, start_server

    with socket.socket() as taken, socket.socket() as free:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        metrics_port = free.getsockname()[1]
        free.close()
        with pytest.raises(ServerStartError, match="cannot serve metrics on 127.0.0.1"):
            start_server(ServerConfig(port=0, store=tmp_path / "a", device="cpu", metrics_port=taken.getsockname()[1]))
        with pytest.raises(ServerStartError, match="cannot listen on"):  # the gRPC port is the one taken now
            start_server(ServerConfig(port=taken.getsockname()[1], store=tmp_path / "b", device="cpu", metrics_port=metrics_port))
        with socket.socket() as again:
            again.bind(("127.0.0.1", metrics_port))  # the failed start served no metrics there any more
