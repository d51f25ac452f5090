"""Inception-v3 as FID's feature extractor: the 2048-d pool features of the FID variant of the network.

Szegedy et al., "Rethinking the Inception Architecture" (2016); FID (Heusel et al. 2017) uses the TensorFlow
2015-12-05 Inception graph, whose PyTorch port (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`) has
torchvision's `Inception3` state-dict names (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`,
...) and four blocks changed to match the graph: the average pools of the A, C and first E blocks do not count
padding, and the last E block pools with a max. That is the network built here (no auxiliary head; the 1008-way
`fc` of the file is not used).

Input: frames `[N, 3, H, W]` float 0..1 -> resized to 299 x 299 (bilinear) -> scaled to -1..1 -> `[N, 2048]`.
`width` scales every channel count (1.0 is the real network; tests build tiny random ones) and is read back from a
weights file's first layer; `num_features` is the output width, which torchmetrics' `FrechetInceptionDistance`
reads when it is given this module as its feature extractor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 299
IGNORED_KEYS = ("fc.", "AuxLogits.")  # in the released files, not used for FID


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int, c) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c(64), 1)
        self.branch5x5_1 = BasicConv2d(cin, c(48), 1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)
        self.out_channels = 2 * c(64) + c(96) + pool_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int, c) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, c(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, stride=2)
        self.out_channels = c(384) + c(96) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, c) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, c(192), 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c(192), (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c(192), (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, c(192), 1)
        self.out_channels = 4 * c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int, c) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, c(192), 1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, c(192), 1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), 3, stride=2)
        self.out_channels = c(320) + c(192) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """The last blocks; `max_pool` marks the second one, which pools with a max in the FID graph."""

    def __init__(self, cin: int, c, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, c(320), 1)
        self.branch3x3_1 = BasicConv2d(cin, c(384), 1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, c(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, c(192), 1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class InceptionV3Features(nn.Module):
    """FID's Inception-v3 up to the global average pool (module docstring): `[N, 3, H, W]` 0..1 -> `[N, F]`."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.width = float(width)

        def c(n: int) -> int:
            return max(1, int(round(n * width)))

        self.Conv2d_1a_3x3 = BasicConv2d(3, c(32), 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), 3)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), 3)
        self.Mixed_5b = InceptionA(c(192), c(32), c)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, c(64), c)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, c(64), c)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, c)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, c(128), c)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, c(160), c)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, c(160), c)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, c(192), c)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, c)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, c, max_pool=False)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, c, max_pool=True)
        self.num_features = self.Mixed_7c.out_channels

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> InceptionV3Features:
        """An un-loaded network whose width fits `state` (torchvision / pytorch-fid Inception3 names)."""
        first = state.get("Conv2d_1a_3x3.conv.weight")
        if first is None:
            raise ValueError("not Inception-v3 weights: no Conv2d_1a_3x3.conv.weight (torchvision Inception3 layout)")
        return cls(width=first.shape[0] / 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1. resize and scale as the FID graph expects
        x = F.interpolate(x.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        # 2. stem: 299 -> 35
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
        # 3. Inception blocks: 35 -> 17 -> 8
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        # 4. global average pool: [N, F]
        return x.mean((2, 3))
