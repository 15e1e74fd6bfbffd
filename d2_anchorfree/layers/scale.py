"""Learnable scalar multiplier, one per FPN level (FCOS paper, Sec. 3.2 "exp(s_i x)")."""
import torch
from torch import nn


class Scale(nn.Module):
    """Multiply the input by a learnable scalar ``s`` (initialised to ``init_value``).

    Shapes: any tensor -> same shape. Source: Tian et al., FCOS, ICCV 2019, Sec. 3.2.
    """

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
