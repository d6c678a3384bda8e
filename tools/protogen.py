"""Python code from the ``.proto`` files: ``python tools/protogen.py`` (``make proto``).

A development tool, in neither distribution: it needs ``grpcio-tools`` (the core's dev extra).
Every ``.proto`` under ``protos/`` is compiled by ``grpc_tools.protoc``, with its bundled
well-known types on the include path, into ``clients/python/``, mirroring its path with the
top folder renamed after ``PACKAGES``: ``protos/specbuilder/v1/spec.proto`` (proto package
``specbuilder.v1``) becomes ``specbuilder_wire/v1/spec_pb2.py`` and ``spec_pb2.pyi``, plus
``spec_pb2_grpc.py`` when the file declares a service, and the generated imports are renamed
alike (``from specbuilder.v1 import`` -> ``from specbuilder_wire.v1 import``). The generated
files are committed; a test regenerates them into a temporary folder and compares byte for
byte, so they never drift from their sources. The output depends only on the sources and the
pinned ``grpcio-tools``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from google.protobuf.descriptor_pb2 import FileDescriptorSet

ROOT = Path(__file__).resolve().parent.parent
"""The repository root."""
PROTOS = ROOT / "protos"
"""The import root of the sources: ``import "specbuilder/v1/spec.proto";`` resolves under it."""
OUT = ROOT / "clients" / "python"
"""Where the generated packages land: in the client's distribution, which the core and the server import too."""
PACKAGES = {"specbuilder": "specbuilder_wire"}
"""The Python package that holds the code of each top folder under ``protos/``; others keep their name."""
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
"""How the names of generated files end; no hand-written file may end so."""


def well_known() -> Path:
    """``grpc_tools``' copy of the well-known types (``google/protobuf/struct.proto`` and the rest)."""
    return Path(str(resources.files("grpc_tools") / "_proto"))


def sources(protos: Path = PROTOS) -> list[str]:
    """Every ``.proto`` under ``protos``, as sorted paths relative to it (``specbuilder/v1/spec.proto``)."""
    return sorted(path.relative_to(protos).as_posix() for path in protos.rglob("*.proto"))


def python_path(source: str) -> str:
    """Where the code of ``source`` (``specbuilder/v1/spec.proto``) goes, without suffix: ``specbuilder_wire/v1/spec``."""
    top, slash, rest = source.removesuffix(".proto").partition("/")
    return PACKAGES.get(top, top) + slash + rest


def _renamed_imports(code: str) -> str:
    """``code`` with every import of a generated module (``from specbuilder.v1 import spec_pb2 as ...``,
    how protoc writes them) from its ``PACKAGES`` name."""
    for top, package in PACKAGES.items():
        code = re.sub(rf"^from {re.escape(top)}(?=[.\s])", f"from {package}", code, flags=re.MULTILINE)
    return code


def _protoc(protos: Path, args: list[str]) -> None:
    """Runs protoc in a child process, so its messages can go into the exception."""
    command = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={protos}", f"--proto_path={well_known()}", *args]
    done = subprocess.run(command, cwd=protos, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed with exit status {done.returncode}:\n{(done.stderr or done.stdout).strip()}")


def descriptor_set(protos: Path = PROTOS, *, source_info: bool = True) -> FileDescriptorSet:
    """Every source compiled to descriptors, imports included, with comments unless ``source_info`` is False.

    The generated ``_pb2`` modules drop comments; this keeps them (docs, and the test that
    every message and field is documented).
    """
    with tempfile.TemporaryDirectory(prefix="protogen-") as scratch:
        out = Path(scratch) / "descriptors.binpb"
        flags = ["--include_imports", *(["--include_source_info"] if source_info else [])]
        _protoc(protos, [f"--descriptor_set_out={out}", *flags, *sources(protos)])
        return FileDescriptorSet.FromString(out.read_bytes())


def generate(out_dir: Path, protos: Path = PROTOS) -> list[Path]:
    """Writes the generated code of every ``.proto`` under ``protos`` into ``out_dir``; returns the files written, sorted.

    Everything is generated into a scratch folder first, so a protoc error writes nothing.
    ``_pb2_grpc.py`` is kept only for files that declare a service.
    """
    files = sources(protos)
    if not files:
        return []
    written = []
    with tempfile.TemporaryDirectory(prefix="protogen-") as scratch:
        staged = Path(scratch)
        descriptors = staged / "descriptors.binpb"
        outputs = [f"--python_out={staged}", f"--pyi_out={staged}", f"--grpc_python_out={staged}"]
        _protoc(protos, [*outputs, f"--descriptor_set_out={descriptors}", *files])
        with_services = {file.name for file in FileDescriptorSet.FromString(descriptors.read_bytes()).file if file.service}
        for name in files:
            stem = name.removesuffix(".proto")
            for suffix in GENERATED_SUFFIXES:
                if suffix == "_pb2_grpc.py" and name not in with_services:
                    continue
                target = Path(out_dir) / (python_path(name) + suffix)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_renamed_imports((staged / (stem + suffix)).read_bytes().decode()).encode())
                written.append(target)
    return sorted(written)


def committed(out: Path = OUT, protos: Path = PROTOS) -> list[Path]:
    """Generated-looking files under ``out`` in the packages ``protos`` feeds, sorted."""
    tops = {python_path(name).split("/")[0] for name in sources(protos)}
    return sorted(
        path for top in tops for path in (out / top).rglob("*") if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    )


def main() -> None:
    """Regenerates into ``OUT``, removes generated files whose ``.proto`` is gone and gives any
    new generated package an ``__init__.py``."""
    written = generate(OUT)
    for path in sorted(set(committed()) - set(written)):
        path.unlink()
        print(f"removed {path.relative_to(ROOT)} (its .proto is gone)")
    packages = {folder for path in written for folder in path.relative_to(OUT).parents if folder != Path(".")}
    for package in sorted(packages):
        init = OUT / package / "__init__.py"
        if not init.exists():
            name = package.as_posix().replace("/", ".")
            init.write_text(f'"""Generated protobuf code of package ``{name}``; regenerate with ``make proto``."""\n')
            print(f"wrote {init.relative_to(ROOT)}")
    for path in written:
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
