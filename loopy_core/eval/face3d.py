"""Deep3DFaceRecon's reconstruction network for E-FID: a face crop -> the 257 coefficients of a 3D morphable face.

Deng et al., "Accurate 3D Face Reconstruction with Weakly-Supervised Learning" (2019), as released in
Deep3DFaceRecon_pytorch (`ReconNetWrapper` with `net_recon='resnet50'`, `use_last_fc=False`), the network the talking-
head papers use for E-FID. A ResNet-50 (torchvision's layout and parameter names: `conv1`, `bn1`, `layer1`..`layer4`
of Bottleneck blocks with the stride on the 3x3 conv, no `fc`) pools a 2048-d feature, and seven 1x1 convolutions
with bias (`final_layers.0`..`6`) give the coefficients in the order of `COEFFICIENTS`: identity 80, expression 64,
texture 80, angle 3, lighting (gamma) 27, translation 2 + 1. E-FID uses the 64 expression ones.

Weights: the released `epoch_20.pth` is a dict whose `net_recon` entry is the state dict (keys `backbone.*` and
`final_layers.*`); `weights.read_state_dict` unwraps it. Input: RGB `[N, 3, H, W]` in 0..1, resized to 224 x 224
(the repository feeds its landmark-aligned 224 crop without any further normalisation; `loopy eval-suite` feeds its
own face crop, the same for every method, so E-FID compares models but is not the repository's alignment).
`width` scales every channel count (1.0 is the real network; tests build tiny random ones) and is read back from a
file's first layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 224
COEFFICIENTS = (("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("trans_xy", 2), ("trans_z", 1))
EXP = slice(80, 144)  # the expression coefficients in the 257
LAYERS = (3, 4, 6, 3)  # Bottleneck blocks per stage: ResNet-50
EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 x4, each with BatchNorm, plus the (projected) input; torchvision's names."""

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.downsample = None
        if stride != 1 or cin != planes * EXPANSION:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * EXPANSION, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * EXPANSION))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)), inplace=True)


class ResNet50(nn.Module):
    """ResNet-50 without its classifier: `[N, 3, H, W]` -> `[N, 2048w, 1, 1]` (the global average pool)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(1, round(n * width))

        self.conv1 = nn.Conv2d(3, c(64), 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c(64))
        cin = c(64)
        for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), LAYERS), 1):
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(cin, c(planes), 2 if i == 0 and stage > 1 else 1))
                cin = c(planes) * EXPANSION
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x)), inplace=True), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean((2, 3), keepdim=True)


class Face3DRecon(nn.Module):
    """Deep3DFaceRecon's `ReconNetWrapper` (module docstring): `[N, 3, H, W]` 0..1 -> `[N, 257]` coefficients."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.width = float(width)
        self.backbone = ResNet50(width)
        self.final_layers = nn.ModuleList(nn.Conv2d(self.backbone.out_channels, n, 1) for _, n in COEFFICIENTS)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> Face3DRecon:
        """An un-loaded network whose width fits `state` (Deep3DFaceRecon's `net_recon` layout); a file of another
        layout, or heads of other sizes, raise ValueError saying what was found."""
        first = state.get("backbone.conv1.weight")
        if first is None or "final_layers.1.weight" not in state:
            sample = ", ".join(list(state)[:3])
            raise ValueError("not Deep3DFaceRecon reconstruction weights: no backbone.conv1.weight / "
                             f"final_layers.1.weight (its epoch_20.pth 'net_recon' layout); the file has {sample}, ...")
        heads = tuple(int(state[k].shape[0]) if k in state else None
                      for k in (f"final_layers.{i}.weight" for i in range(len(COEFFICIENTS))))
        if heads != tuple(n for _, n in COEFFICIENTS):
            raise ValueError(f"Deep3DFaceRecon heads give {heads} coefficients, expected "
                             f"{tuple(n for _, n in COEFFICIENTS)} ({', '.join(k for k, _ in COEFFICIENTS)}): "
                             "not the released resnet50 net_recon")
        return cls(width=first.shape[0] / 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        feature = self.backbone(x.float())
        return torch.cat([layer(feature) for layer in self.final_layers], 1).flatten(1)

    def expression(self, x: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` 0..1 -> `[N, 64]`: the expression coefficients, E-FID's features."""
        return self(x)[:, EXP]

