"""Processes sharing one store race to fill it: its limits hold, and what is left is consistent.

Worker processes (two short, four with ``--soak``) each open the store with the same
``max_models`` and ``max_bytes`` and loop at random: save a model, run a run to its end with
weights, start a run and leave it, or delete an entry one of them stored. Both limits are
small enough that most operations meet one. After every operation each worker reads the
index's count and bytes in a snapshot of their own: neither may ever be over its limit, not
only at the end. Then the store is checked: each weights file is an entry that says it has one,
of the size the index says, no temporary files, and each run refused its weights is
``failed`` with the refusal as its reason.

Two writers reaching the limit at the same moment are seldom met in the short mode (the
store's own tests force that interleaving); in the soak's 4 x 1000 operations they are: a
store that checked the limits only before writing the weights, not in the committing
transaction, failed it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from specbuilder.compiler import compile_spec
from specbuilder.store import ModelStore
from specbuilder.store.files import is_temp

SPEC: dict[str, Any] = {"name": "mlp", "input_shape": [32], "layers": [{"type": "linear", "out_features": 64}, {"type": "linear", "out_features": 4}]}
MAX_MODELS = 12
WORKER = r"""
import json, random, sqlite3, sys
from specbuilder.compiler import compile_spec
from specbuilder.store import ModelNotFound, ModelStore, QuotaExceeded, StoreError

root, spec, max_models, max_bytes, seed, operations = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:7])
rng, outcomes, worst = random.Random(seed), {}, [0, 0]
index = sqlite3.connect(f"{root}/index.sqlite3")
with ModelStore(root, max_models=max_models, max_bytes=max_bytes) as store:
    for _ in range(operations):
        kind = rng.choice(["save", "save", "save", "run", "run", "start", "delete", "delete"])
        try:
            if kind == "save":
                store.save(compile_spec(spec, device="cpu"))
            elif kind == "run":
                run = store.start_run(spec)
                store.finish_run(run.id, "completed", compile_spec(spec, device="cpu"))
            elif kind == "start":
                store.start_run(spec)
            else:
                page = store.page(limit=50)
                if page.records:
                    store.delete(rng.choice(page.records).id)
            outcome = "done"
        except QuotaExceeded as error:
            outcome = "refused: " + ("max_models" if "(max_models)" in str(error) else "max_bytes")
        except ModelNotFound:
            outcome = "already deleted"
        key = f"{kind}: {outcome}"
        outcomes[key] = outcomes.get(key, 0) + 1
        count, size = index.execute("SELECT COUNT(*), COALESCE(SUM(weights_bytes), 0) FROM models").fetchone()
        worst = [max(worst[0], count), max(worst[1], size)]
print(json.dumps({"outcomes": outcomes, "worst": worst}))
"""


def test_processes_sharing_a_store_never_take_it_past_its_limits(tmp_path: Path, budget: Any, tally: Any) -> None:
    root = tmp_path / "store"
    with ModelStore(root) as probe:
        size = probe.save(compile_spec(SPEC, device="cpu")).weights_bytes
    max_bytes = 6 * size + size // 2  # room for six models' weights: max_bytes binds before max_models
    workers, operations = budget.pick((2, 60), (4, 1000))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(root), json.dumps(SPEC), str(MAX_MODELS), str(max_bytes), str(seed),
                               str(operations)], stdout=subprocess.PIPE, text=True) for seed in range(workers)]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
        reports.append(json.loads(out))
    outcomes = sum((Counter(report["outcomes"]) for report in reports), Counter())
    for key, n in outcomes.items():
        kind, outcome = key.split(": ", 1)
        tally.count(kind, outcome, n)
    assert outcomes["save: refused: max_bytes"] + outcomes["run: refused: max_bytes"] > 0, f"the limits were never met: {outcomes}"
    worst_count, worst_bytes = max(r["worst"][0] for r in reports), max(r["worst"][1] for r in reports)
    tally.figure("most entries seen", worst_count)
    tally.figure("most weights bytes seen", worst_bytes)
    assert worst_count <= MAX_MODELS and worst_bytes <= max_bytes
    with ModelStore(root) as store:
        records = store.list()
    files = {path.name: path.stat().st_size for path in (root / "weights").iterdir()}
    assert [name for name in files if is_temp(root / "weights" / name)] == []
    assert files == {f"{r.id}.safetensors": r.weights_bytes for r in records if r.has_weights}
    refused = [r for r in records if r.status == "failed"]
    assert all(r.reason and "(max_bytes)" in r.reason and not r.has_weights for r in refused)
