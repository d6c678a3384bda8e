"""``specbuilder.evaluation``: the one evaluation the CLI, the server and the training loop run."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from specbuilder.compiler import STYLES, compile_spec
from specbuilder.evaluation import Evaluator, evaluate, run_together
from specbuilder.stats import ActivationMonitor

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC: dict[str, Any] = {
    "input_shape": [3],
    "layers": [
        {"type": "linear", "out_features": 16, "activation": "tanh", "name": "hidden"},
        {"type": "dropout", "p": 0.5, "name": "drop"},
        {"type": "linear", "out_features": 4, "activation": "relu", "name": "out"},
    ],
}


def _batch(rows: int = 50) -> torch.Tensor:
    return torch.randn(rows, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("style", STYLES)
def test_statistics_are_those_of_a_monitor_attached_by_hand(style: str) -> None:
    module = compile_spec(SPEC, style, "cpu", seed=1)
    x = _batch()
    module.eval()
    with torch.inference_mode(), ActivationMonitor(module, grads=False) as monitor:
        expected_outputs = module(x)
        expected = monitor.stats()
    module.train()
    evaluation = evaluate(module, x, statistics=True)
    assert torch.equal(evaluation.outputs, expected_outputs), "eval mode: no dropout"
    assert [layer.model_dump() for layer in evaluation.stats] == [layer.model_dump() for layer in expected]
    assert module.training, "the module's mode is restored"
    chunked = evaluate(module, x, statistics=True, chunk=7)
    assert torch.allclose(chunked.outputs, expected_outputs), "chunks joined in order"
    assert [layer.count for layer in chunked.stats] == [layer.count for layer in expected]
    assert evaluate(module, x).stats == [], "no statistics unless asked"


def test_layers_and_bins_select_what_is_monitored() -> None:
    module = compile_spec(SPEC, "sequential", "cpu", seed=1)
    assert [layer.name for layer in evaluate(module, _batch(), statistics=True).stats] == ["tanh_1", "relu_4"]
    chosen = evaluate(module, _batch(), statistics=True, layers=["out"], bins=8).stats
    assert [layer.name for layer in chosen] == ["out"] and sum(chosen[0].histogram.counts) == 50 * 4
    assert len(chosen[0].histogram.counts) == 8
    with pytest.raises(ValueError, match="no layer named 'outs'"):
        evaluate(module, _batch(), statistics=True, layers=["outs"])


@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_runs_the_forward_under_autocast_and_statistics_stay_float32(amp: str, dtype: torch.dtype) -> None:
    module = compile_spec(SPEC, "sequential", "cpu", seed=1)
    x = _batch()
    evaluation = evaluate(module, x, statistics=True, amp=amp)
    assert evaluation.outputs.dtype == dtype
    full = evaluate(module, x).outputs
    assert torch.allclose(evaluation.outputs.float(), full, atol=0.1)
    assert all(layer.count > 0 for layer in evaluation.stats)
    with pytest.raises(ValueError, match="amp must be 'bf16', 'fp16' or None"):
        evaluate(module, x, amp="fp8")


def test_an_evaluator_counts_only_its_own_passes() -> None:
    module = compile_spec(SPEC, "sequential", "cpu", seed=1).eval()
    x = _batch(10)
    layers: list[str] = []
    with Evaluator(module, statistics=True, layers=["hidden"]) as evaluator:
        module(x)  # another caller of the shared module: not counted
        evaluator.run(x, lambda batch: layers.append("forward") or module(batch))
        stats = evaluator.stats()
    assert layers == ["forward"] and stats[0].count == 10 * 16
    assert not module.hidden._forward_hooks, "the monitor's hooks come off at the end"


ELEMENTWISE: dict[str, Any] = {
    "input_shape": [5],
    "layers": [{"type": "tanh", "name": "squash"}, {"type": "leaky_relu", "negative_slope": 0.1}, {"type": "softmax", "dim": -1}],
}
"""Row by row the same in a batch of any size: merged and alone give identical bits."""


@pytest.mark.parametrize("style", STYLES)
def test_evaluators_run_together_each_count_only_their_own_rows(style: str) -> None:
    module = compile_spec(ELEMENTWISE, style, "cpu", seed=1).eval()
    parts = [torch.randn(rows, 5, generator=torch.Generator().manual_seed(rows)) * 3 for rows in (1, 7, 4)]
    options: list[dict[str, Any]] = [{"statistics": True}, {"statistics": False}, {"statistics": True, "layers": "all", "bins": 8}]
    alone = [evaluate(module, part, **settings) for part, settings in zip(parts, options)]
    evaluators = [Evaluator(module, **settings) for settings in options]
    rows = [slice(0, 1), slice(1, 8), slice(8, 12)]
    merged = run_together(evaluators, rows, torch.cat(parts))
    for evaluator, one, own in zip(evaluators, alone, rows):
        evaluator.close()
        assert torch.equal(merged[own], one.outputs)
        assert [layer.model_dump() for layer in evaluator.stats()] == [layer.model_dump() for layer in one.stats]
    assert evaluators[2].stats()[0].count == 4 * 5, "the rows of its part only"
    with pytest.raises(ValueError, match="one module and with one amp"):
        run_together([Evaluator(module), Evaluator(module, amp="bf16")], [None, None], parts[0])
