"""Motion statistics (paper Sec. 3.3): head-movement variance and expression variance of a clip.

Training computes them from per-frame tracks of the target clip (facial keypoints for real videos, the renderer's
ground truth for the synthetic world) and feeds them to audio-to-latents; at inference they are an optional user
control of motion intensity. Both go through `motion_statistics`, so the scale is the same.

Tracks: `head` `[T, 3]` (x and y of the face centre as fractions of the frame, roll in radians) and `expression`
`[T, E]` (e.g. mouth opening and eye closure, each 0..1). *Reconstructed*: the statistics are
`log10(1e-6 + mean variance)` over each track's dimensions, so typical values lie in -6..0.
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-6


def motion_statistics(head, expression) -> torch.Tensor:
    """`[2]` float32: (head-movement variance, expression variance), log10 scale."""
    head = torch.as_tensor(np.asarray(head, dtype=np.float32))
    expression = torch.as_tensor(np.asarray(expression, dtype=np.float32))
    if head.ndim != 2 or expression.ndim != 2 or head.shape[0] != expression.shape[0] or head.shape[0] < 2:
        raise ValueError(
            f"motion tracks must be [T, 3] head and [T, E] expression with T >= 2 frames, got "
            f"{tuple(head.shape)} and {tuple(expression.shape)}"
        )
    head_var = head.var(dim=0, unbiased=False).mean()
    expr_var = expression.var(dim=0, unbiased=False).mean()
    return torch.log10(torch.stack([head_var, expr_var]) + EPS)


def intensity_to_statistics(head_intensity: float, expression_intensity: float) -> torch.Tensor:
    """A user-facing control: intensities in 0..1 mapped linearly onto the log-variance range (-6..-1)."""
    for name, v in (("head_intensity", head_intensity), ("expression_intensity", expression_intensity)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be in 0..1, got {v}")
    return torch.tensor([-6.0 + 5.0 * head_intensity, -6.0 + 5.0 * expression_intensity], dtype=torch.float32)
