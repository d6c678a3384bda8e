"""Where a PostgreSQL-indexed store keeps weights: an S3 bucket or a directory every replica mounts.

Each weights object is one safetensors file under a key of its own (``<id>.<random>.safetensors``),
written whole before any row names it: an S3 PUT is atomic (an object exists complete or not at
all), and a directory's object is written under a temporary name, fsynced and renamed
(``specbuilder.store.files``). Nothing is ever unpickled: objects are read with safetensors.

The bucket's endpoint and credentials come from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``),
so MinIO, Ceph and GCS's S3 interface work as AWS does. A bucket that cannot be reached raises
``StoreUnavailable`` naming the bucket.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save

from specbuilder.store.files import WEIGHTS_SUFFIX, is_temp, owned_dir, publish, write_temp
from specbuilder.store.records import StoreError, StoreUnavailable

KEY_SUFFIX = WEIGHTS_SUFFIX


def new_key(model_id: str) -> str:
    """A fresh object key for weights of ``model_id``: two writers of one run never share one."""
    return f"{model_id}.{secrets.token_hex(4)}{KEY_SUFFIX}"


class Objects(Protocol):
    """Weights objects by key: written whole, read, deleted, listed with their age (for the orphan sweep)."""

    url: str

    def write(self, key: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> int:
        """Store ``tensors`` as one complete safetensors object under ``key``; its size in bytes."""

    def read(self, key: str, device: torch.device) -> dict[str, torch.Tensor]:
        """The tensors of ``key`` on ``device``; ``FileNotFoundError`` if there is no such object."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (nothing if it is already gone)."""

    def ages(self) -> Iterator[tuple[str, float]]:
        """Every weights object's key with its age in seconds (temporary files of a directory included)."""


class DirectoryObjects:
    """Weights objects as files of a directory (a shared filesystem, for replicas on several hosts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = str(path)
        owned_dir(path)

    def write(self, key: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> int:
        target = self.path / key
        temp = write_temp(target, tensors, metadata)
        size = temp.stat().st_size
        try:
            publish(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return size

    def read(self, key: str, device: torch.device) -> dict[str, torch.Tensor]:
        try:
            return load_file(self.path / key, device=str(device))
        except SafetensorError as error:
            raise StoreError(f"the weights object {key} in {self.url} is unreadable: {error}") from error

    def delete(self, key: str) -> None:
        (self.path / key).unlink(missing_ok=True)

    def ages(self) -> Iterator[tuple[str, float]]:
        now = time.time()
        for file in self.path.iterdir():
            if file.name.endswith(KEY_SUFFIX) or is_temp(file):
                try:
                    yield file.name, now - file.stat().st_mtime
                except FileNotFoundError:  # deleted meanwhile
                    continue


def _unreachable(error: Exception) -> bool:
    """Whether a botocore error means the bucket's server could not be reached (rather than a refusal)."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(error, (ConnectionError, HTTPClientError)):
        return True
    return isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) in {"500", "502", "503", "504", "SlowDown", "ServiceUnavailable", "InternalError"}


class BucketObjects:
    """Weights objects in an S3 bucket (``s3://bucket/prefix``), through boto3."""

    def __init__(self, url: str) -> None:
        import boto3
        from botocore.config import Config

        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"a bucket for weights is s3://BUCKET or s3://BUCKET/PREFIX; got {url!r}")
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/") + "/" if parts.path.strip("/") else ""
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
        self._client: Any = boto3.client("s3", config=config)
        self._call("open", lambda: self._client.head_bucket(Bucket=self.bucket))

    def _call(self, what: str, action: Any) -> Any:
        """Run one request; unreachable servers as ``StoreUnavailable``, refusals as ``StoreError``, both naming the bucket."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return action()
        except (BotoCoreError, ClientError) as error:
            if _unreachable(error):
                raise StoreUnavailable(
                    f"the weights bucket {self.url} cannot be reached ({what}): {error}; check that its server "
                    f"({os.environ.get('AWS_ENDPOINT_URL', 'AWS S3')}) is up, then retry") from error
            if isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise FileNotFoundError(what) from error
            raise StoreError(f"the weights bucket {self.url} refused to {what}: {error}") from error

    def write(self, key: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> int:
        data = save(dict(tensors), metadata=dict(metadata))
        self._call(f"write {key}", lambda: self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data))
        return len(data)

    def read(self, key: str, device: torch.device) -> dict[str, torch.Tensor]:
        body = self._call(f"read {key}", lambda: self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read())
        try:
            tensors = load(body)
        except SafetensorError as error:
            raise StoreError(f"the weights object {key} in {self.url} is unreadable: {error}") from error
        return tensors if device.type == "cpu" else {name: value.to(device) for name, value in tensors.items()}

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key))

    def ages(self) -> Iterator[tuple[str, float]]:
        pages = self._call("list", lambda: list(self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)))
        now = time.time()
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"].removeprefix(self.prefix)
                if "/" not in key and key.endswith(KEY_SUFFIX):
                    yield key, now - item["LastModified"].timestamp()


def open_objects(url: str | os.PathLike[str]) -> Objects:
    """``s3://bucket/prefix`` as a bucket, anything else as a directory (created 0700 if missing)."""
    text = os.fspath(url)
    if text.startswith("s3://"):
        return BucketObjects(text)
    if "://" in text:
        raise ValueError(f"weights go to s3://BUCKET/PREFIX or a directory; got {text!r}")
    return DirectoryObjects(Path(text))
