"""Count the collectives a piece of code issues (forward and backward).

Contract: ``with CommCounter() as c: ...`` counts every collective dispatched in this
thread into ``c.counts`` keyed by short names (all_reduce, all_gather, reduce_scatter,
all_to_all, broadcast): ``torch.distributed`` calls (``c10d::allreduce_`` and friends,
what generated programs, FSDP2 and the gradient buckets issue) and the functional
collectives DTensor's redistribute uses. Point-to-point sends and receives are not
counted. ``c.events`` lists ``(name, seconds since entry)`` in issue order.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

_NAMES = {  # op name (without namespace) -> short name; prefixes match
    "allreduce": "all_reduce",
    "all_reduce": "all_reduce",
    "_allgather_base": "all_gather",
    "allgather_into_tensor": "all_gather",
    "all_gather_into_tensor": "all_gather",
    "_reduce_scatter_base": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "alltoall_base": "all_to_all",
    "all_to_all_single": "all_to_all",
    "broadcast": "broadcast",
}
_NAMESPACES = ("_c10d_functional", "c10d_functional", "c10d", "_c10d_functional_autograd")


class CommCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.events: list[tuple[str, float]] = []
        self._start = time.perf_counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if getattr(func, "namespace", "") in _NAMESPACES:
            name = func._schema.name.split("::")[-1].rstrip("_")
            for key, short in _NAMES.items():
                if name.startswith(key):
                    self.counts[short] += 1
                    self.events.append((short, time.perf_counter() - self._start))
                    break
        return func(*args, **(kwargs or {}))
