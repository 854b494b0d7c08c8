"""Count the collectives a piece of code issues (forward and backward).

Contract: ``with CommCounter() as c: ...`` counts every c10d functional collective
dispatched in this thread (DTensor's redistributes use them) into ``c.counts`` keyed
by short names: all_reduce, all_gather, reduce_scatter, all_to_all, broadcast.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

_NAMES = {
    "all_reduce": "all_reduce",
    "all_gather_into_tensor": "all_gather",
    "reduce_scatter_tensor": "reduce_scatter",
    "all_to_all_single": "all_to_all",
    "broadcast": "broadcast",
}


class CommCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        ns = getattr(func, "namespace", "")
        if ns in ("_c10d_functional", "c10d_functional", "c10d", "_c10d_functional_autograd"):
            name = func._schema.name.split("::")[-1].rstrip("_")
            for key, short in _NAMES.items():
                if name.startswith(key):
                    self.counts[short] += 1
                    break
        return func(*args, **(kwargs or {}))
