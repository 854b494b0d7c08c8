"""The Megatron-LM SC'21 Table 1 rows of benchmarks/fidelity_published.py, checked against
the paper's own arithmetic (no planning: fast)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import fidelity_published as fp  # noqa: E402

# label -> (published parameters in billions, TP, PP, GPUs) from Table 1
TABLE1 = {
    "Megatron-LM GPT 1.7B": (1.7, 1, 1, 32),
    "Megatron-LM GPT 3.6B": (3.6, 2, 1, 64),
    "Megatron-LM GPT 7.5B": (7.5, 4, 1, 128),
    "Megatron-LM GPT 18.4B": (18.4, 8, 1, 256),
    "Megatron-LM GPT 39.1B": (39.1, 8, 2, 512),
    "Megatron-LM GPT 76.1B": (76.1, 8, 4, 1024),
    "Megatron-LM GPT 145.6B": (145.6, 8, 8, 1536),
}
MEGATRON = {r.label: r for r in fp.RUNS if r.source == fp.MEGATRON}


def _params(run: fp.PublishedRun) -> float:
    """Narayanan et al. eq. 2: P = 12 l h^2 (1 + 13/(12h) + (V + s)/(12 l h))."""
    h, n, v, s = run.shape["n_embd"], run.shape["n_layer"], run.shape["vocab_size"], run.seq
    return 12 * n * h * h * (1 + 13 / (12 * h) + (v + s) / (12 * n * h))


def test_table1_rows_present() -> None:
    assert set(TABLE1) <= set(MEGATRON)
    assert any(TABLE1[k][0] >= 100 for k in TABLE1)


@pytest.mark.parametrize("label", sorted(TABLE1))
def test_row_arithmetic(label: str) -> None:
    billions, tp, pp, gpus = TABLE1[label]
    run = MEGATRON[label]
    assert abs(_params(run) / 1e9 - billions) <= 0.06  # Table 1 rounds to 0.1B
    assert run.gpus == gpus
    assert run.mesh.get("tp", 1) == tp and run.mesh.get("pp", 1) == pp
    dp = run.mesh["dp"]
    assert tp * pp * dp == gpus
    assert run.pipelined == (pp > 1)
    assert run.seq == 2048 and run.shape["vocab_size"] == 51200 and run.recompute == "full"
    if run.pipelined:  # microbatch size 1 per replica, the interleaved schedule's m % pp == 0
        assert run.global_batch % dp == 0
        assert run.microbatches * dp * run.microbatch == run.global_batch
        assert run.microbatches % pp == 0
        assert run.strategy == f"tp={tp},pp={pp},dp={dp}"


def test_eq3_flops_145b() -> None:
    run = MEGATRON["Megatron-LM GPT 145.6B"]
    # 148 TFLOP/s/GPU on 1536 GPUs is 227 PFLOP/s aggregate (Table 1: 227.1)
    assert abs(148e12 * 1536 / 1e15 - 227.1) < 1.0
    step = fp.megatron_flops(run) / (148e12 * 1536)
    assert 20 < step < 30  # seconds per global batch of 2304 x 2048 tokens (24.8 s)
