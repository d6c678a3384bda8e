"""``specbuilder store copy``: every entry from a directory store into PostgreSQL + a bucket and back,
ids, times, records and weights kept and verified; idempotent; an interrupted copy finished by a rerun."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specbuilder.compiler import compile_spec
from specbuilder.store import ModelStore
from specbuilder.store.copy import CopyMismatch, copy_store, digests
from stores import Postgres, S3Server
from test_cli_train import run
from test_store import MLP


def filled(path: Path) -> tuple[ModelStore, list[str]]:
    """A directory store with a model, a run with weights, a run without, and a run still going."""
    store = ModelStore(path)
    ids = [store.save(compile_spec(MLP, device="cpu", seed=1), name="plain", history=[{"epoch": 1, "loss": 0.5}]).id]
    run_ = store.start_run(MLP, config={"epochs": 3}, dataset="spirals")
    store.finish_run(run_.id, "completed", compile_spec(MLP, device="cpu", seed=2), history=[{"epoch": 1, "loss": 0.25}])
    ids.append(run_.id)
    diverged = store.start_run(MLP, name="diverged")
    store.finish_run(diverged.id, "diverged", None, reason="the loss became NaN")
    ids.append(diverged.id)
    store.start_run(MLP, name="still-going")
    return store, ids


def same(source: ModelStore, target: ModelStore, model_id: str) -> bool:
    ours, theirs = source.get(model_id), target.get(model_id)
    kept = ours.model_dump(exclude={"weights_bytes"}) == theirs.model_dump(exclude={"weights_bytes"})
    return kept and (not ours.has_weights or digests(source.weights(model_id)) == digests(target.weights(model_id)))


def test_a_directory_store_goes_to_postgresql_and_a_bucket_and_back(tmp_path: Path, postgres: Postgres, s3_server: S3Server) -> None:
    source, ids = filled(tmp_path / "source")
    with source, ModelStore.open(postgres.url(), weights=s3_server.bucket()) as shared, ModelStore(tmp_path / "back") as back:
        report = copy_store(source, shared)
        assert sorted(report.copied) == sorted(ids) and len(report.running) == 1 and not report.verified
        assert all(same(source, shared, model_id) for model_id in ids)
        again = copy_store(source, shared)  # idempotent: nothing twice
        assert sorted(again.verified) == sorted(ids) and not again.copied and len(shared.list()) == 3
        copy_store(shared, back)
        assert all(same(source, back, model_id) for model_id in ids)
        torch.testing.assert_close(back.load(ids[0], "cpu").state_dict(), source.load(ids[0], "cpu").state_dict(), rtol=0, atol=0)


def test_an_interrupted_copy_leaves_whole_entries_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    source, ids = filled(tmp_path / "source")

    def stop_after_the_first(record: object, outcome: str) -> None:
        if outcome == "copied":
            raise KeyboardInterrupt

    with source, ModelStore(tmp_path / "target") as target:
        with pytest.raises(KeyboardInterrupt):
            copy_store(source, target, stop_after_the_first)
        assert len(target.list()) == 1 and same(source, target, target.list()[0].id)
        report = copy_store(source, target)
        assert len(report.verified) == 1 and len(report.copied) == 2
        assert all(same(source, target, model_id) for model_id in ids)


def test_weights_that_differ_in_the_target_are_found(tmp_path: Path) -> None:
    source, ids = filled(tmp_path / "source")
    with source, ModelStore(tmp_path / "target") as target:
        copy_store(source, target)
    weights = tmp_path / "target" / "weights" / f"{ids[0]}.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit of the last weight
    weights.write_bytes(bytes(data))
    with ModelStore(tmp_path / "source") as source, ModelStore(tmp_path / "target") as target, pytest.raises(CopyMismatch, match=ids[0]):
        copy_store(source, target)


def test_store_copy_on_the_command_line(tmp_path: Path, postgres: Postgres, s3_server: S3Server) -> None:
    source, ids = filled(tmp_path / "source")
    source.close()  # its run still going ends interrupted: it is copied as such
    url, bucket = postgres.url(), s3_server.bucket()
    first = run("store", "copy", str(tmp_path / "source"), url, "--target-weights", bucket)
    assert first.code == 0 and first.out[-1] == "4 copied, 0 already there and verified, 0 still running (left out)"
    assert any("still-going (interrupted)" in line for line in first.out)
    second = run("store", "copy", str(tmp_path / "source"), url, "--target-weights", bucket)
    assert second.code == 0 and second.out[-1].startswith("0 copied, 4 already there")
    refused = run("store", "copy", str(tmp_path / "source"), url)
    assert refused.code != 0 and any("needs a place for weights" in line for line in refused.err)
