"""Resolve a MODEL argument to (model, args, kwargs).

Contract: ``resolve(spec, device, batch_size, seq_len)`` accepts a bundled model name
(``mlp``, ``gpt2``, ``bert``, ``llama-7b``, ``llama-70b``, each also ``<name>-tiny``, and the
model-zoo sweep's ``hf-llama``, ``hf-t5``, ...: see ``autopar.zoo``) or
``path/to/file.py:function`` where the function returns ``(model, args)`` or
``(model, args, kwargs)``; it is called with ``batch_size=`` / ``seq_len=`` when those are
given and it takes them, and a batch size it does not take cuts its inputs to their
first ``batch_size`` samples (dim 0; more than it builds is refused). The bundled models
ship inside the package (``autopar.zoo``), so they resolve from any working directory,
after an editable or a regular install, and in a program run by torchrun. A user's file is loaded by its path (relative to the working
directory). Unknown names raise ValueError listing what is accepted.
``check_model(spec)`` refuses a spec that cannot work without importing or running anything
(the file is parsed, not imported); ``user_code_error(err, spec)`` turns an exception
raised inside the user's file into one ``UserCodeError`` paragraph.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from autopar import zoo


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path}: it is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve(
    spec: str, device: str = "cpu", batch_size: int | None = None, seq_len: int | None = None
) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    if ":" not in spec:
        return zoo.build(spec, device=device, batch_size=batch_size, seq_len=seq_len)
    file, _, fn = spec.rpartition(":")
    path = Path(file)
    if not path.exists():
        raise ValueError(
            f"model file {file!r} does not exist (from {spec!r}; relative paths are taken from "
            f"{Path.cwd()}); give an existing path/to/file.py:function or a bundled model "
            f"({', '.join(zoo.names())})"
        )
    module = _load(path, f"autopar_user_{path.stem}")
    if not hasattr(module, fn):
        raise ValueError(f"{file} has no function {fn!r}; define it or name another one")
    builder = getattr(module, fn)
    sizes = {k: v for k, v in (("batch_size", batch_size), ("seq_len", seq_len))
             if v is not None and _takes(builder, k)}  # fmt: skip
    out = builder(**sizes)
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise ValueError(
            f"{spec} returned {type(out).__name__}, but it must return (model, args) or "
            "(model, args, kwargs)"
        )
    args, kwargs = tuple(out[1]), dict(out[2]) if len(out) == 3 else {}
    if batch_size is not None and "batch_size" not in sizes:
        args, kwargs = _first_samples(spec, args, kwargs, batch_size)
    return out[0], args, kwargs


def _takes(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _first_samples(spec: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                   batch_size: int) -> tuple[tuple[Any, ...], dict[str, Any]]:  # fmt: skip
    """The inputs cut to their first ``batch_size`` samples (dim 0 of every input whose
    dim 0 is the batch: that of the first tensor input with a dim)."""
    import torch
    import torch.utils._pytree as pytree

    leaves = [t for t in pytree.tree_leaves((args, kwargs))
              if isinstance(t, torch.Tensor) and t.dim() > 0]  # fmt: skip
    if not leaves or int(leaves[0].shape[0]) == batch_size:
        return args, kwargs
    batch = int(leaves[0].shape[0])
    if batch_size > batch:
        raise ValueError(
            f"{spec} builds inputs of batch {batch}, fewer than the batch size {batch_size} "
            "asked for; give the function a batch_size parameter (autopar passes it), or ask "
            f"for at most {batch}"
        )

    def cut(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() > 0 and int(x.shape[0]) == batch:
            return x[:batch_size]
        return x

    return pytree.tree_map(cut, args), pytree.tree_map(cut, kwargs)


class UserCodeError(ValueError):
    """The user's model file raised while autopar built the model."""


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*" or (alias.asname or alias.name.split(".")[0]) == name:
                    return True
    return False


def check_model(spec: str) -> None:
    """Refuse a model spec that cannot work, without importing or running anything."""
    from autopar import zoo

    if ":" not in spec:
        if spec not in zoo.BUNDLED and spec not in zoo.names():  # names() imports torch
            raise ValueError(
                f"unknown model {spec!r}; use a bundled model ({', '.join(zoo.names())}) or "
                "path/to/file.py:function returning (model, args) or (model, args, kwargs)"
            )
        return
    file, _, fn = spec.rpartition(":")
    path = Path(file)
    form = "path/to/file.py:function, where the function returns (model, args) or (model, args, kwargs)"
    if not path.is_file():
        raise ValueError(
            f"model file {file!r} does not exist (from {spec!r}; relative paths are taken "
            f"from {Path.cwd()}); give {form}"
        )
    if not fn.isidentifier():
        raise ValueError(f"model {spec!r} names no function after the colon; give {form}")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as err:
        line = getattr(err, "lineno", None)
        raise ValueError(
            f"model file {file!r} is not valid Python ({type(err).__name__}"
            f"{f' at line {line}' if line else ''}: {getattr(err, 'msg', err)}); give {form}"
        ) from None
    if not _defines(tree, fn):
        raise ValueError(f"{file} defines no function {fn!r}; define it or name another ({form})")


def user_code_error(err: BaseException, spec: str) -> UserCodeError | None:
    """``err`` as one paragraph when it was raised inside the model file ``spec`` names."""
    if ":" not in spec or isinstance(err, UserCodeError):
        return None
    file, _, fn = spec.rpartition(":")
    target = Path(file).resolve()
    frames = [
        f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == target
    ]
    if not frames:
        return None
    f = frames[-1]
    return UserCodeError(
        f"building the model with {spec} failed: {type(err).__name__}: {err} (raised at "
        f"{f.filename}:{f.lineno} in {f.name}). autopar calls {fn}() (with batch_size= / "
        "seq_len= when it takes them and they are given) and needs it to return (model, args) "
        "or (model, args, kwargs); fix the function and run again"
    )
