"""``autopar run``'s mesh without processes: ``--strategy pp`` pipelines over every
process when no ``--mesh`` is given, and a ``--mesh`` without a ``pp`` axis is bad usage
(exit 2, one paragraph, no traceback) instead of a crash inside the ranks."""

from __future__ import annotations

import pytest

from autopar.cli import main
from autopar.cli.run import run_mesh
from autopar.mesh import MeshSpec


@pytest.mark.parametrize(
    "text,strategy,axes",
    [
        (None, "pp", (("pp", 2),)),
        (None, "auto", (("dp", 2),)),
        ("pp=2", "pp", (("pp", 2),)),
        ("pp=2", "auto", (("pp", 2),)),
    ],
)
def test_run_mesh(text: str | None, strategy: str, axes) -> None:  # type: ignore[no-untyped-def]
    assert run_mesh(text, 2, strategy) == MeshSpec(axes)


def test_pp_without_a_pp_axis_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "gpt2-tiny", "--nproc", "2", "--strategy", "pp", "--mesh", "dp=2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--mesh dp=2 has none" in err and "--mesh pp=2" in err
    assert "Traceback" not in err
