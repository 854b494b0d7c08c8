"""Where each statement of the generated program lives: the root or a layer submodule.

Contract:
- ``assign(captured)`` maps every call_function node to the module path of the layer
  submodule it runs in (``"transformer.h.3"``), or ``""`` for the root program (what runs
  before the first layer, after the last one, and constants such as masks), using
  ``pipeline.partition.find_units`` + ``pipeline.layers.split_head``; a graph without
  repeated layers runs entirely in the root.
- ``order(items)`` orders root statements and layer calls so that every value is defined
  before it is read, keeping graph order where it can; ``None`` when layers depend on
  each other in a cycle (the caller then emits one flat program).
- ``canonical(lines, inputs, outputs, local)`` renames a layer body's local names in order
  of appearance, so that layers whose code differs only by names compare equal.
"""

from __future__ import annotations

import heapq
import io
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch.fx as fx

from autopar.capture import Captured


def assign(captured: Captured) -> tuple[dict[str, str], str]:
    """(node name -> layer path or "", the layers' common prefix)."""
    from autopar.pipeline.layers import split_head
    from autopar.pipeline.partition import find_units

    gm = captured.graph_module
    try:
        units = split_head(find_units(gm, captured.param_names), captured)
    except ValueError:
        return {}, ""
    where: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.name in units.const:
            continue
        u = units.unit.get(node.name)
        label = units.labels[u] if u is not None else "<pre>"
        where[node.name] = "" if label in ("<pre>", "<post>") else label
    return where, units.prefix


@dataclass
class Item:
    """A root statement group (``layer == ""``) or one layer call."""

    key: str
    first: int  # graph position of its first node
    layer: str
    defines: set[str] = field(default_factory=set)
    reads: set[str] = field(default_factory=set)
    lines: list[str] = field(default_factory=list)


def order(items: list[Item], available: Iterable[str]) -> list[Item] | None:
    defined_by: dict[str, int] = {}
    for i, it in enumerate(items):
        for v in it.defines:
            defined_by[v] = i
    ready = set(available)
    deps: list[set[int]] = []
    users: dict[int, list[int]] = {i: [] for i in range(len(items))}
    for i, it in enumerate(items):
        d = {defined_by[v] for v in it.reads if v in defined_by and v not in ready}
        d.discard(i)
        deps.append(d)
        for j in d:
            users[j].append(i)
    heap = [(it.first, i) for i, it in enumerate(items) if not deps[i]]
    heapq.heapify(heap)
    out: list[Item] = []
    while heap:
        _, i = heapq.heappop(heap)
        out.append(items[i])
        for j in users[i]:
            deps[j].discard(i)
            if not deps[j]:
                heapq.heappush(heap, (items[j].first, j))
    return out if len(out) == len(items) else None


def rename(lines: list[str], mapping: dict[str, str]) -> list[str]:
    """Rename variables (NAME tokens that are not attributes or keyword arguments)."""
    out = []
    for line in lines:
        toks = list(tokenize.generate_tokens(io.StringIO(line).readline))
        pieces: list[str] = []
        col = 0
        depth = 0
        for k, tok in enumerate(toks):
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER):
                continue
            start = tok.start[1]
            pieces.append(line[col:start])
            text = tok.string
            if tok.type == tokenize.OP and text in "([{":
                depth += 1
            elif tok.type == tokenize.OP and text in ")]}":
                depth -= 1
            if tok.type == tokenize.NAME and text in mapping:
                prev = toks[k - 1].string if k else ""
                nxt = toks[k + 1].string if k + 1 < len(toks) else ""
                kwarg = depth > 0 and nxt == "="
                if prev != "." and not kwarg:
                    text = mapping[text]
            pieces.append(text)
            col = tok.end[1]
        pieces.append(line[col:])
        out.append("".join(pieces))
    return out


def canonical(lines: list[str], inputs: list[str], outputs: list[str], local: set[str]) -> str:
    mapping: dict[str, str] = {}
    for name in inputs:
        mapping.setdefault(name, f"v{len(mapping)}")
    for line in lines:
        target = line.split(" = ", 1)[0]
        for name in (t.strip() for t in target.split(",")):
            if name in local:
                mapping.setdefault(name, f"v{len(mapping)}")
    body = rename(lines, mapping)
    outs = [mapping.get(o, o) for o in outputs]
    return "\n".join([",".join(mapping.get(i, i) for i in inputs), *body, ",".join(outs)])


def module_type(captured: Captured, path: str) -> str:
    """The class name of the original module at ``path`` (from nn_module_stack)."""
    for node in captured.graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        for entry in stack.values():
            p, t = entry if isinstance(entry, tuple) else (str(entry), "")
            p = p.removeprefix("L__self__.")
            if p == path:
                name = t.__name__ if isinstance(t, type) else str(t).rsplit(".", 1)[-1]
                return name.strip("'>") or "Layer"
    return "Layer"


def node_index(graph: fx.Graph) -> dict[str, int]:
    return {n.name: i for i, n in enumerate(graph.nodes)}
