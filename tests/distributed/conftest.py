"""Fixtures for multi-process tests: module-scoped gloo pools (spawned lazily, once per module)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from autopar.testing import GlooPool

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.distributed)


@pytest.fixture(scope="module")
def pool2() -> Iterator[GlooPool]:
    pool = GlooPool(2)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def pool4() -> Iterator[GlooPool]:
    pool = GlooPool(4)
    try:
        yield pool
    finally:
        pool.close()
