"""The straightforward baseline, written the way the common PyTorch ports write the Growing NCA.

`conv2d` perception, two `Conv2d` 1x1 layers, masks as float tensors, every cell of the grid
computed every step. Same maths as `backend.nca.model.NCA` (it can load the same weights), so
the benchmark compares implementations, not algorithms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from backend.nca.model import NCA


class BaselineCA(nn.Module):
    def __init__(self, channels: int = 16, hidden: int = 128, fire_rate: float = 0.5):
        super().__init__()
        self.channels, self.fire_rate = channels, fire_rate
        self.w1 = nn.Conv2d(channels * 3, hidden, 1)
        self.w2 = nn.Conv2d(hidden, channels, 1)
        nn.init.zeros_(self.w2.weight)
        nn.init.zeros_(self.w2.bias)
        ident = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        kernel = torch.stack([ident, sobel, sobel.T])  # channel-major: c*3 + k
        self.register_buffer("kernel", kernel.repeat(channels, 1, 1)[:, None])

    @classmethod
    def from_nca(cls, model: NCA) -> BaselineCA:
        ca = cls(model.channels, model.hidden, model.fire_rate)
        ca.load_state_dict({"w1.weight": model.perceive_to_hidden.weight, "w1.bias": model.perceive_to_hidden.bias,
                            "w2.weight": model.hidden_to_update.weight, "w2.bias": model.hidden_to_update.bias},
                           strict=False)
        return ca

    def alive(self, x: torch.Tensor) -> torch.Tensor:
        return (F.max_pool2d(x[:, 3:4], 3, 1, 1) > 0.1).float()

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        pre = self.alive(x)
        y = F.conv2d(x, self.kernel, padding=1, groups=self.channels)
        dx = self.w2(F.relu(self.w1(y)))
        fire = (torch.rand(x.shape[0], 1, x.shape[2], x.shape[3], generator=generator) < self.fire_rate).float()
        x = x + dx * fire
        post = self.alive(x)
        return x * pre * post


def train_iteration(ca: BaselineCA, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
                    steps: int, generator: torch.Generator | None = None) -> tuple[float, torch.Tensor]:
    """One iteration of the paper's loop (rollout, RGBA MSE, per-parameter gradient normalisation, Adam)."""
    for _ in range(steps):
        x = ca(x, generator)
    loss = (x[:, :4] - target).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    for p in ca.parameters():
        p.grad /= p.grad.norm() + 1e-8
    optimizer.step()
    return loss.item(), x.detach()
