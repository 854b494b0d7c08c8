"""Layouts written as text in generated programs (``"S(0)R"``: one placement per axis).

Contract: ``parse_layout(text)`` returns the ``Layout`` (cached: programs parse a few
dozen distinct strings); ValueError names the expected form.
"""

from __future__ import annotations

import re
from functools import cache

from autopar.placement import Layout, parse_placement

_TOKEN = re.compile(r"S\(\d+\)|P\(avg\)|R|P")


@cache
def parse_layout(text: str) -> Layout:
    tokens = _TOKEN.findall(text)
    if "".join(tokens) != text:
        raise ValueError(f"cannot parse layout {text!r}; expected e.g. 'S(0)R'")
    return tuple(parse_placement(t) for t in tokens)
