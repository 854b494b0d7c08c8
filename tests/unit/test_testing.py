"""autopar.testing: how a task's function is named in the parent and found again on a rank
(by module name, or by file path when the module is not importable by name, as a pytest
test module is not)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from autopar.testing._worker import function_ref, resolve_function


def top_level(rank: int, world: int) -> int:
    return rank + world


class Holder:
    @staticmethod
    def method(rank: int, world: int) -> int:
        return rank * world


def test_a_top_level_function_is_named_by_module_file_and_qualname():
    mod, path, qualname = function_ref(top_level)
    assert mod == __name__ and qualname == "top_level"
    assert path is not None and Path(path) == Path(__file__).resolve()
    assert resolve_function((mod, path, qualname)) is top_level
    assert resolve_function(function_ref(Holder.method))(2, 3) == 6


def test_lambdas_and_nested_functions_are_refused():
    def nested(rank, world):
        return rank

    for fn in (lambda rank, world: rank, nested):
        with pytest.raises(TypeError, match="top level of a module"):
            function_ref(fn)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "task_module.py"
    path.write_text(body)
    return path


def test_a_module_not_importable_by_name_is_loaded_from_its_file(tmp_path, monkeypatch):
    path = _write(tmp_path, "def task(rank, world):\n    return ('from file', rank, world)\n")
    name = "autopar_not_importable_by_this_name.tasks"
    monkeypatch.delitem(sys.modules, name, raising=False)
    fn = resolve_function((name, str(path), "task"))
    assert fn(1, 2) == ("from file", 1, 2)
    assert sys.modules[name].__file__ == str(path)  # pickled objects of it resolve
    monkeypatch.delitem(sys.modules, name)


def test_a_module_name_that_imports_another_file_loads_the_given_file(tmp_path, monkeypatch):
    import colorsys

    path = _write(tmp_path, "def rgb_to_hsv(rank, world):\n    return 'the given file'\n")
    monkeypatch.setitem(sys.modules, "colorsys", colorsys)  # restored afterwards
    assert resolve_function(("colorsys", str(path), "rgb_to_hsv"))(0, 1) == "the given file"


def test_a_missing_file_and_name_is_an_import_error(tmp_path):
    with pytest.raises(ImportError):
        resolve_function(("autopar_no_such_module_anywhere", None, "task"))
    assert importlib.util.find_spec("autopar_no_such_module_anywhere") is None
