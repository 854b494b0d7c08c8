"""Your own model, planned by autopar: a file with a function that returns (model, args, kwargs).

    autopar plan examples/custom_model.py:build --cluster 8xH100
    autopar emit examples/custom_model.py:build --nproc 2 -o out/mine
    torchrun --nproc-per-node 2 out/mine/train.py

``build()`` returns the model and one example batch, as the training loop will call it:
``model(*args, **kwargs)`` must return the loss (a scalar tensor) or an object with ``.loss``.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm residual MLP block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class Regressor(nn.Module):
    def __init__(self, features: int = 32, width: int = 128, blocks: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return nn.functional.mse_loss(self.head(h).squeeze(-1), target)


def build() -> tuple[nn.Module, tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    torch.manual_seed(0)  # the same weights and batch on every rank
    model = Regressor()
    x = torch.randn(64, 32)
    return model, (x,), {"target": x.sum(-1)}


if __name__ == "__main__":
    model, args, kwargs = build()
    print(f"loss {model(*args, **kwargs).item():.4f}")
