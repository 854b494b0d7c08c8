"""A plain multi-layer perceptron regression example.

``model(x, target)`` returns the MSE loss (a scalar tensor).
"""

from __future__ import annotations

import torch
from torch import nn

from autopar.zoo._common import build_context, resolve_size

SIZES = ("tiny", "full")

# size -> (layer widths, default batch size)
_CONFIGS: dict[str, tuple[tuple[int, ...], int]] = {
    "tiny": ((32, 64, 64, 16), 8),
    "full": ((1024, 4096, 4096, 4096, 1024), 256),
}


class MLP(nn.Module):
    """Linear -> GELU -> ... -> Linear; ``forward(x, target)`` returns the MSE loss."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(widths) - 2:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self.net(x), target)


def build(
    size: str = "tiny",
    *,
    device: str = "cpu",
    batch_size: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
) -> tuple[nn.Module, tuple, dict]:
    """Return ``(model, args, kwargs)``; ``model(*args, **kwargs)`` is the loss tensor.

    ``seq_len`` is accepted for interface uniformity and ignored.
    """
    widths, default_batch = _CONFIGS[resolve_size(size, SIZES, {})]
    batch = batch_size or default_batch
    with build_context(device, seed):
        model = MLP(widths)
    if torch.device(device).type == "meta":
        x = torch.empty(batch, widths[0], device="meta")
        target = torch.empty(batch, widths[-1], device="meta")
    else:
        model = model.to(torch.device(device))
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(batch, widths[0], generator=gen).to(device)
        target = torch.randn(batch, widths[-1], generator=gen).to(device)
    return model, (x, target), {}
