"""The gRPC benchmark's workload, shared by the benchmark and the ``repeated float`` baseline server.

An MLP 784-256-256-10 (ReLU), batches of 1024 rows: 3.2 MB of float32 in, 40 KB out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEED = 0
BATCH = 1024
FEATURES = 784
CLASSES = 10
MLP: dict[str, Any] = {
    "name": "bench-mlp",
    "input_shape": [FEATURES],
    "layers": [
        {"type": "linear", "out_features": 256, "name": "fc1", "activation": "relu"},
        {"type": "linear", "out_features": 256, "name": "fc2", "activation": "relu"},
        {"type": "linear", "out_features": CLASSES, "name": "logits"},
    ],
}

LINEAR: dict[str, Any] = {
    "name": "bench-linear",
    "input_shape": [FEATURES],
    "layers": [{"type": "linear", "out_features": CLASSES, "name": "logits"}],
}
"""The MLP's input and output with 3% of its compute: a call's cost with next to no forward."""
SPECS = {"mlp": MLP, "linear": LINEAR}


def batch(rows: int = BATCH) -> np.ndarray:
    """``rows`` samples of standard normal float32, the same every time."""
    return np.random.default_rng(SEED).standard_normal((rows, FEATURES), dtype=np.float32)
