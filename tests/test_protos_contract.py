"""The wire contract in protos/ is checked by buf: STANDARD lint rules, and no breaking change
against the released v1 (protos/released/v1.json, written by `make proto-release`).

buf is the npm package pinned in package.json; `make test` installs it into node_modules.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, json_format

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "node_modules" / ".bin" / "buf"
RELEASED = ROOT / "protos" / "released" / "v1.json"


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail(f"{BUF.relative_to(ROOT)} is missing: `make test` installs it (npm ci)")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_protos_pass_buf_lint() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_protos_make_no_breaking_change_against_the_released_v1() -> None:
    result = buf("breaking", "--against", str(RELEASED))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_breaking_check_refuses_a_removed_field(tmp_path: Path) -> None:
    """The check itself can fail: a copy of protos/ with a released field removed is refused."""
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    spec = tmp_path / "protos" / "specbuilder" / "v1" / "spec.proto"
    text = spec.read_text()
    assert "optional string name = 1;" in text
    spec.write_text(text.replace("optional string name = 1;", "reserved 1;", 1))
    result = buf("breaking", "--against", str(RELEASED), cwd=tmp_path)
    assert result.returncode != 0
    assert "ModelSpec" in result.stdout + result.stderr


def test_the_released_image_holds_the_v1_files() -> None:
    image = json_format.Parse(RELEASED.read_text(), descriptor_pb2.FileDescriptorSet(), ignore_unknown_fields=True)
    names = {file.name for file in image.file}
    assert {"specbuilder/v1/spec.proto", "specbuilder/v1/tensor.proto", "specbuilder/v1/service.proto"} <= names
