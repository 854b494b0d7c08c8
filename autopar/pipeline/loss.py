"""The training loss of a model's output, as ``step`` reads it.

Contract: ``loss_of(out)`` returns ``out.loss`` when the output carries one (Hugging
Face ``ModelOutput``), the output itself when it is a scalar tensor, and the first
element of a tuple/list whose first element is a scalar tensor. Anything else raises a
``ValueError`` asking for ``loss_fn(out, target)``.
"""

from __future__ import annotations

from typing import Any

import torch


def loss_of(out: Any) -> torch.Tensor:
    loss = getattr(out, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        if out[0].dim() == 0:
            return out[0]
    raise ValueError(
        f"cannot find a scalar loss in the model's output ({type(out).__name__}); pass "
        "step(..., target=y, loss_fn=fn) with fn(output, target) -> scalar mean loss"
    )
