"""The model-zoo sweep's support table (``autopar.zoo.sweep``): cells, the Markdown table
and bad command-line input, from given outcomes (no ranks; the sweep itself runs in
tests/distributed/test_zoo_sweep.py); and ``from autopar.testing import pipeline_check``,
which the sweep's pipeline check is, in a fresh interpreter."""

from __future__ import annotations

import pytest

from autopar.zoo import sweep


def _o(status: str, detail: str = "") -> dict[str, object]:
    return {"status": status, "detail": detail, "seconds": 1.0, "cpu_seconds": 1.0}


def test_cell_is_ok_or_the_first_sentence_of_the_reason() -> None:
    assert sweep.cell(_o("ok")) == "ok"
    err = _o("error", "ValueError: strategy='pp' needs 2 blocks | got 1. Fix: add one.\nmore")
    assert sweep.cell(err) == "error: ValueError: strategy='pp' needs 2 blocks / got 1"
    long = sweep.cell(_o("mismatch", "x" * 200), width=30)
    assert len(long) == 30 and long.endswith("…") and long.startswith("mismatch: x")


def test_markdown_has_a_row_per_architecture_and_a_column_per_kind() -> None:
    results = {
        "hf-llama": {k: _o("ok") for k in sweep.KINDS},
        "hf-t5": {**{k: _o("ok") for k in sweep.KINDS}, "pp": _o("error", "CaptureError: no")},
    }
    lines = sweep.markdown(results).splitlines()
    assert lines[0] == (
        "| architecture | model class | `dp` | `tp` | `fsdp` | `zero` | `pp` | `auto` |"
    )
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| hf-llama | LlamaForCausalLM | ok | ok | ok | ok | ok | ok |"
    assert lines[3] == (
        "| hf-t5 | T5ForConditionalGeneration | ok | ok | ok | ok | error: CaptureError: no | ok |"
    )


def test_bad_names_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        sweep.main(["--archs", "hf-nope", "--kinds", "dp"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown hf-nope" in err and "hf-llama" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="unknown plan kinds \\['ddp'\\]"):
        sweep.run_arch(0, 1, "hf-llama", ("ddp",))


def test_pipeline_check_imports_from_the_package() -> None:
    # in a fresh interpreter: the name used to recurse in autopar.testing.__getattr__
    # until the submodule had been imported some other way
    import subprocess
    import sys

    code = "from autopar.testing import pipeline_check; print(pipeline_check.__module__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "autopar.testing.pipeline_parity"
