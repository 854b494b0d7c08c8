"""Shared pytest configuration.

The tests import only installed packages (``autopar``, ``cost_models``; ``pip install -e .``
or ``pip install .``): nothing here puts the repository on ``sys.path``, and pytest runs with
``--import-mode=importlib`` (pyproject.toml), so it does not insert the rootdir either. A test
module is therefore not importable by name from another process; code run on gloo ranks is
found by its file (``autopar.testing.GlooPool``).
"""
