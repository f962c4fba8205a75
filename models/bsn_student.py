"""The fast student: a compact U-Net distilled from a C-BSN or SDAP teacher for CPU users.

The blind-spot teachers spend all their compute at full resolution (3.65 M multiply-adds per pixel at
paper size). The student works at half resolution and below: a space-to-depth step turns 2×2 pixels into
12 channels, a two-level U-Net (widths w, 2w, 4w at 1/2, 1/4 and 1/8 resolution) predicts a correction,
and depth-to-space brings it back, added to the input. It is trained with an L1 loss to reproduce the
teacher's output on noisy images (no clean images anywhere), so it inherits the teacher's behaviour,
including its adaptation to a user's camera, at a small fraction of the cost.

Input and output are standardised images like the teachers'; height and width must be multiples of 8.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class StudentConfig:
    width: int = 16
    channels: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU())


class _Up(nn.Module):
    """×2 up-sampling by a 1×1 conv to 4× the channels and depth-to-space (cheap, no checkerboard)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, 4 * cout, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class Student(nn.Module):
    multiple = 8  # space-to-depth and two stride-2 levels

    def __init__(self, config: StudentConfig = StudentConfig()):
        super().__init__()
        self.config = config
        w, c = config.width, config.channels
        self.down = nn.PixelUnshuffle(2)
        self.enc0 = nn.Sequential(_conv(4 * c, w), _conv(w, w))
        self.enc1 = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w))
        self.mid = nn.Sequential(_conv(2 * w, 4 * w, stride=2), _conv(4 * w, 4 * w), _conv(4 * w, 4 * w))
        self.up1 = _Up(4 * w, 2 * w)
        self.dec1 = nn.Sequential(_conv(4 * w, 2 * w), _conv(2 * w, 2 * w))
        self.up0 = _Up(2 * w, w)
        self.dec0 = nn.Sequential(_conv(2 * w, w), _conv(w, w))
        self.out = nn.Conv2d(w, 4 * c, 3, padding=1)
        self.up = nn.PixelShuffle(2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(self.down(z))
        e1 = self.enc1(e0)
        d1 = self.dec1(torch.cat([self.up1(self.mid(e1)), e1], dim=1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], dim=1))
        return z + self.up(self.out(d0))
