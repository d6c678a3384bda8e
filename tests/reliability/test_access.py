"""Access: no client gets in without the token, reaches a file outside the store, or gets code run.

- Every ModelService RPC, enumerated from the service descriptor (a new RPC is covered the day
  it is added), answers UNAUTHENTICATED to a missing or wrong token; health needs none.
- No model id or name a client sends addresses a file outside the store: every RPC that takes
  an id answers INVALID_ARGUMENT or NOT_FOUND to hand-picked and generated attacks, and the
  files planted next to the store are neither changed, deleted, read, nor joined by new ones.
- A scan of the package sources (``ast``, not text) finds no unpickling, no ``torch.load``
  without ``weights_only=True``, no ``eval``/``exec``/``compile``/``__import__``, no shell, no
  ``yaml.load``; the few justified exceptions are listed with why. The scan is shown to catch
  a planted example of each rule, so it cannot pass by seeing nothing.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from server_helpers import ROOT, batch, connect, invoke, message_class, open_channel, serving, train_request
from specbuilder_server import RunningServer
from specbuilder_wire.v1 import service_pb2 as pb

TOKEN = "reliability-token"
SERVICE = pb.DESCRIPTOR.services_by_name["ModelService"]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# -- the token on every RPC -----------------------------------------------------------------

WRONG_TOKENS: dict[str, list[tuple[str, str]]] = {
    "no token": [],
    "a wrong token": bearer("wrong"),
    "the token cut short": bearer(TOKEN[:-1]),
    "the token and more": bearer(TOKEN + "x"),
    "the token without Bearer": [("authorization", TOKEN)],
    "the token under another key": [("x-authorization", f"Bearer {TOKEN}")],
    "a wrong token, then the right one": bearer("wrong") + bearer(TOKEN),
}


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(tmp_path_factory.mktemp("store"), tokens=(TOKEN,)) as running:
        yield running


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda method: method.name)
def test_every_rpc_refuses_a_missing_or_wrong_token(guarded: RunningServer, method: MethodDescriptor, tally: Any) -> None:
    request = message_class(method.input_type)()  # empty: the token is checked before anything in it
    with open_channel(guarded.address) as channel:
        for what, metadata in WRONG_TOKENS.items():
            code = code_of(lambda: invoke(channel, method, request, metadata))
            tally.count(f"a ModelService RPC with {what}", code.name)
            assert code == UNAUTHENTICATED, (method.name, what)
        admitted = code_of(lambda: invoke(channel, method, request, bearer(TOKEN)))  # the method exists and lets the token in
        assert admitted not in (UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED), (method.name, admitted)


def test_health_needs_no_token(guarded: RunningServer) -> None:
    with open_channel(guarded.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE.full_name):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE.full_name))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


# -- ids and names never reach outside the store --------------------------------------------


@dataclass(frozen=True)
class Planted:
    """Files next to a store, each a valid safetensors file a traversal would gladly load."""

    folder: Path
    store: Path

    def snapshot(self) -> dict[str, tuple[int, ...]]:
        """Every file outside the store: inode, size, modification and change times (any write moves them; reading them would move atime)."""
        found = {}
        for path in self.folder.rglob("*"):
            if path.is_file() and self.store not in path.parents:
                info = path.stat()
                found[str(path.relative_to(self.folder))] = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        return found

    def access_times(self) -> dict[str, int]:
        return {str(path): path.stat().st_atime_ns for path in self.folder.iterdir() if path.is_file()}


def plant(folder: Path, store: Path) -> Planted:
    """Sentinels beside the store and one level up, under the names a traversal would reach."""
    tensors = {"fc1.weight": np.ones((16, 2), np.float32)}
    for name in ("sentinel", "sentinel.safetensors", "x", "x.safetensors", "index.sqlite3", f"{'0' * 32}.safetensors"):
        save_file(tensors, str(folder / name))
    long_ago = time.time() - 3 * 86400  # with atime before mtime (and days old) any read moves it, under relatime too
    for path in folder.iterdir():
        if path.is_file():
            os.utime(path, (long_ago, path.stat().st_mtime))
    return Planted(folder, store)


def reads_show_in_access_times(folder: Path) -> bool:
    """Whether this filesystem records reads in atime (relatime does; noatime does not)."""
    probe = folder / "probe"
    probe.write_bytes(b"probe")
    os.utime(probe, (time.time() - 3 * 86400, probe.stat().st_mtime))
    before = probe.stat().st_atime_ns
    probe.read_bytes()
    moved = probe.stat().st_atime_ns != before
    probe.unlink()
    return moved


@dataclass(frozen=True)
class Traversal:
    server: RunningServer
    planted: Planted
    before: dict[str, tuple[int, ...]]
    atimes: dict[str, int] | None
    """Access times of the planted files, where the filesystem records reads."""


@pytest.fixture(scope="module")
def traversal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traversal]:
    folder = tmp_path_factory.mktemp("beside")
    store = folder / "store"
    with serving(store) as running:
        planted = plant(folder, store)
        atimes = planted.access_times() if reads_show_in_access_times(folder) else None
        yield Traversal(running, planted, planted.snapshot(), atimes)


def id_requests(method: MethodDescriptor, model_id: str) -> Any | None:
    """A request for ``method`` whose model id is ``model_id`` (nested one level, as in StreamEvaluate's start); None if it takes no id."""
    request = message_class(method.input_type)()
    if "model_id" in method.input_type.fields_by_name:
        request.model_id = model_id
        return request
    for field in method.input_type.fields:
        if field.message_type is not None and "model_id" in field.message_type.fields_by_name:
            getattr(request, field.name).model_id = model_id
            return request
    return None


ID_METHODS = [method for method in SERVICE.methods if id_requests(method, "") is not None]
HAND_PICKED = [
    "", ".", "..", "../x", "../../x", "../sentinel", "../../sentinel", "..\\sentinel", "..\\..\\x", "/etc/passwd",
    "weights/../../sentinel", "./../sentinel", "....//sentinel", "%2e%2e%2fsentinel", "..%2fsentinel", "%2e%2e/sentinel",
    "..%c0%afsentinel", "\x00", "0" * 31 + "\x00", "0" * 32 + "\x00../sentinel", "0" * 32 + "/../../sentinel",
    "0" * 31 + "\n", "A" * 32, "０" * 32, "0" * 33, "0" * 31, "ü" * 32, "~/sentinel", "sentinel", "x.safetensors",
    "index.sqlite3", "a" * 100_000, "0" * 32,
]
BAD_NAMES = ["../x", "../../sentinel", "/tmp/x", "..\\x", "x/y", "\x00", "a" * 65, ".hidden", "ü", "x\n"]


def attack(traversal: Traversal, model_ids: list[str], tally: Any) -> None:
    """Send each id to every RPC that takes one; each answer must be INVALID_ARGUMENT or NOT_FOUND."""
    x = batch(np.ones((2, 2), np.float32))
    with open_channel(traversal.server.address) as channel:
        for model_id in model_ids:
            for method in ID_METHODS:
                request = id_requests(method, model_id)
                if method.name == "Evaluate":
                    request.input.CopyFrom(x)
                code = code_of(lambda: invoke(channel, method, request, []))
                tally.count(f"hostile model id to {method.name}", code.name)
                assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (method.name, model_id[:80], code)
    check_untouched(traversal)


def check_untouched(traversal: Traversal) -> None:
    assert traversal.planted.snapshot() == traversal.before  # nothing outside the store changed, appeared or went away
    if traversal.atimes is not None:
        assert traversal.planted.access_times() == traversal.atimes  # and nothing there was read


def test_hand_picked_hostile_ids_reach_no_file_outside_the_store(traversal: Traversal, tally: Any) -> None:
    attack(traversal, [*HAND_PICKED, str(traversal.planted.folder / "sentinel"), str(traversal.planted.folder / "x")], tally)
    tally.figure("planted files, reads checked", "yes" if traversal.atimes is not None else "no (this filesystem keeps no atime)")


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # tally gathers every example
@given(st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
    st.lists(st.sampled_from(["..", ".", "sentinel", "x", "weights", "%2e", "%2f", "\\", "/", "\x00", "0" * 32, ".safetensors"]), max_size=8).map("".join),
    st.lists(st.sampled_from(["..", "sentinel", "weights", "0" * 32]), min_size=1, max_size=6).map("/".join),
))
def test_generated_hostile_ids_reach_no_file_outside_the_store(traversal: Traversal, tally: Any, model_id: str) -> None:
    attack(traversal, [model_id], tally)


def test_names_are_never_paths(traversal: Traversal, tally: Any) -> None:
    """Bad names are refused before a run starts; good names that look like the store's own files are only names."""
    with connect(traversal.server.address) as stub:
        for name in BAD_NAMES:
            code = code_of(lambda: list(stub.Train(train_request(name=name))))
            tally.count("Train with a hostile name", code.name)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, name
        for name in ("index.sqlite3", "weights"):
            finished = list(stub.Train(train_request(name=name)))[-1].finished
            assert finished.status == pb.RUN_STATUS_COMPLETED, name
            tally.count("Train named like a store file", "COMPLETED, only a name")
        assert {m.name for m in stub.ListModels(pb.ListModelsRequest()).models} >= {"index.sqlite3", "weights"}
    check_untouched(traversal)


# -- nothing a client sends is run or unpickled ---------------------------------------------

SCANNED = ("specbuilder", "server", "clients", "tools")
UNPICKLERS = frozenset({"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"})
BUILTIN_CODE = frozenset({"eval", "exec", "compile", "__import__"})
SHELL_ALWAYS = frozenset({"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"})
SUBPROCESS = frozenset({"subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output", "subprocess.Popen"})
YAML_LOADS = frozenset({"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"})
LAZY_TABLE = "a lazy package attribute: imports a module named in the package's own fixed _LAZY table, for a name found there"
ALLOWED: dict[tuple[str, str], str] = {
    ("specbuilder/registry.py", "importlib.import_module"):
        "resolve() imports the dotted paths the registries name; they are written in this package, never sent by a client",
    ("specbuilder/cli/__init__.py", "importlib.import_module"): "imports the command modules of the fixed COMMAND_MODULES list",
    ("specbuilder/lazy.py", "importlib.import_module"): LAZY_TABLE,
    ("specbuilder/stats/__init__.py", "importlib.import_module"): LAZY_TABLE,
    ("server/specbuilder_server/__init__.py", "importlib.import_module"): LAZY_TABLE,
}
"""Justified exceptions: (file, rule) -> why it is safe."""


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str


class Scanner(ast.NodeVisitor):
    """Finds the dangerous calls and imports of one module, following ``import x as y`` and ``from x import y``."""

    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self.aliases: dict[str, str] = {}
        """Local name -> what it was imported as (``np`` -> ``numpy``, ``load`` -> ``torch.load``)."""
        self.bound = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        self.bound |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
        self.bound |= {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)}

    def found(self, node: ast.AST, rule: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), rule))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in UNPICKLERS:
                self.found(node, f"imports {alias.name}")
            self.aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0 and module.split(".")[0] in UNPICKLERS:
            self.found(node, f"imports {module}")
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}" if module else alias.name

    def qualified(self, node: ast.AST) -> str | None:
        """``torch.load`` for ``torch.load``, ``T.load`` (``import torch as T``) or ``load`` (``from torch import load``)."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        root = self.aliases.get(node.id, node.id)
        return ".".join([root, *reversed(parts)])

    def visit_Call(self, node: ast.Call) -> None:
        keywords = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}

        def is_true(name: str) -> bool:
            value = keywords.get(name)
            return isinstance(value, ast.Constant) and value.value is True

        name = self.qualified(node.func)
        if isinstance(node.func, ast.Name) and node.func.id in BUILTIN_CODE and node.func.id not in self.bound and node.func.id not in self.aliases:
            self.found(node, f"calls {node.func.id}")
        elif name in {f"builtins.{builtin}" for builtin in BUILTIN_CODE}:
            self.found(node, f"calls {name.removeprefix('builtins.')}")
        elif name in ("torch.load", "torch.serialization.load") and not is_true("weights_only"):
            self.found(node, "torch.load without weights_only=True")
        elif name in ("numpy.load",) and "allow_pickle" in keywords and not (isinstance(keywords["allow_pickle"], ast.Constant) and keywords["allow_pickle"].value is False):
            self.found(node, "numpy.load with allow_pickle")
        elif name in YAML_LOADS:
            self.found(node, name)
        elif name in SHELL_ALWAYS:
            self.found(node, f"{name} (a shell)")
        elif name in SUBPROCESS and "shell" in keywords and not (isinstance(keywords["shell"], ast.Constant) and keywords["shell"].value is False):
            self.found(node, f"{name} with shell")
        elif name == "importlib.import_module":
            self.found(node, name)
        self.generic_visit(node)


def scan(source: str, path: str = "<planted>") -> list[Finding]:
    tree = ast.parse(source, path)
    scanner = Scanner(path, tree)
    scanner.visit(tree)
    return scanner.findings


def sources() -> list[Path]:
    return sorted(path for folder in SCANNED for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts)


def test_no_source_unpickles_runs_code_or_a_shell(tally: Any) -> None:
    files = sources()
    relative = {str(path.relative_to(ROOT)) for path in files}
    assert {"specbuilder/store/model_store.py", "server/specbuilder_server/servicer.py", "clients/python/specbuilder_client/client.py"} <= relative
    findings = [finding for path in files for finding in scan(path.read_text(), str(path.relative_to(ROOT)))]
    unexplained = [finding for finding in findings if (finding.path, finding.rule) not in ALLOWED]
    stale = set(ALLOWED) - {(finding.path, finding.rule) for finding in findings}
    tally.figure("python files scanned", len(files))
    tally.figure("findings allowed (each with its reason)", len(findings) - len(unexplained))
    assert unexplained == [] and stale == set(), (unexplained, stale)


PLANTED = {
    "import pickle\npickle.loads(data)": ["imports pickle"],
    "from pickle import loads": ["imports pickle"],
    "import marshal, shelve": ["imports marshal", "imports shelve"],
    "import dill as d": ["imports dill"],
    "import torch\ntorch.load(path)": ["torch.load without weights_only=True"],
    "import torch as T\nT.load(path, weights_only=False)": ["torch.load without weights_only=True"],
    "from torch import load\nload(path, map_location='cpu')": ["torch.load without weights_only=True"],
    "import torch\ntorch.serialization.load(f)": ["torch.load without weights_only=True"],
    "eval(text)": ["calls eval"],
    "exec(code, {})": ["calls exec"],
    "compile(source, 'f', 'exec')": ["calls compile"],
    "__import__(name)": ["calls __import__"],
    "import builtins\nbuiltins.exec(code)": ["calls exec"],
    "import subprocess\nsubprocess.run(command, shell=True)": ["subprocess.run with shell"],
    "from subprocess import Popen\nPopen(command, shell=flag)": ["subprocess.Popen with shell"],
    "import os\nos.system('ls')": ["os.system (a shell)"],
    "import yaml\nyaml.load(text, Loader=yaml.Loader)": ["yaml.load"],
    "import numpy as np\nnp.load(f, allow_pickle=True)": ["numpy.load with allow_pickle"],
    "import importlib\nimportlib.import_module(name)": ["importlib.import_module"],
}
SAFE = [
    "import torch\ntorch.load(path, weights_only=True)",
    "import re\nre.compile('x')",
    "import subprocess\nsubprocess.run(['g++', 'kernel.cpp'], check=True)",
    "import subprocess\nsubprocess.run(command, shell=False)",
    "import yaml\nyaml.safe_load(text)",
    "import numpy as np\nnp.load(f)",
    "def compile(spec):\n    return spec\ncompile(1)",
    "from specbuilder.compiler import compile_spec as compile\ncompile(spec)",
    "model.eval()",
    "torch_ops = 1\nload(path)",
]


@pytest.mark.parametrize("source", PLANTED, ids=lambda source: source.splitlines()[-1][:40])
def test_the_scan_catches_a_planted_example_of_each_rule(source: str) -> None:
    assert [finding.rule for finding in scan(source)] == PLANTED[source]


@pytest.mark.parametrize("source", SAFE, ids=lambda source: source.splitlines()[-1][:40])
def test_the_scan_lets_the_safe_forms_pass(source: str) -> None:
    assert scan(source) == []
