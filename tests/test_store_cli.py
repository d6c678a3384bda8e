"""``--store URL`` on the commands and on ``serve``: a PostgreSQL store with its weights in a bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from server_helpers import server_process
from specbuilder.demo.server import ServerProcessError
from specbuilder.cli.stores import store_location
from specbuilder.compiler import compile_spec
from specbuilder.store import ModelStore
from stores import Postgres, S3Server
from test_cli_train import run
from test_store import MLP


def test_a_url_keeps_its_slashes_even_through_a_path() -> None:
    url = "postgresql://user@db.example:5432/models?schema=prod"
    assert store_location(url) == url and store_location(Path(url)) == url
    assert store_location("models") == Path("models")


def test_models_list_and_rm_on_a_postgresql_store(postgres: Postgres, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, bucket = postgres.url(), s3_server.bucket()
    with ModelStore.open(url, weights=bucket) as store:
        saved = store.save(compile_spec(MLP, device="cpu"), name="shared-mlp")
    monkeypatch.setenv("SPECBUILDER_WEIGHTS", bucket)
    listed = run("models", "list", "--store", url)
    assert listed.code == 0 and any(saved.id in line and "shared-mlp" in line for line in listed.out)
    assert run("models", "rm", "--store", url, saved.id).code == 0
    with ModelStore.open(url, weights=bucket) as store:
        assert store.list() == []
    monkeypatch.delenv("SPECBUILDER_WEIGHTS")
    assert run("models", "list", "--store", url, "--weights", bucket).code == 0  # the flag, where no variable is set
    refused = run("models", "list", "--store", url)
    assert refused.code != 0 and any("needs a place for weights" in line for line in refused.err)


def test_two_servers_serve_one_postgresql_store_and_bucket(postgres: Postgres, s3_server: S3Server, tmp_path: Path) -> None:
    url, bucket = postgres.url(), s3_server.bucket()
    with server_process(url, "--weights", bucket, "--store-lease", "2", log=tmp_path / "a.log") as a, \
            server_process(url, "--weights", bucket, log=tmp_path / "b.log") as b:
        assert a.port != b.port
    with pytest.raises(ServerProcessError, match="(?s)the server did not start.*needs a place for weights \\(--weights\\)"):
        with server_process(url, log=tmp_path / "refused.log"):
            pass
