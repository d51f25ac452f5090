"""Temporal segment module (TSM, paper Sec. 3.2): history latents -> M motion-frame latents, parameter-free.

Notation (<variable> -> paper):
- `s` -> frames-per-segment groups (4), `r` -> temporal ratio (2), `K` -> number of segments (5).

*Reconstructed* rule (the paper gives only s=4, r=2 and "124 frames -> 20 motion frames"): segments are counted
back from the clip boundary. Segment k (k = 0 nearest the boundary) covers `s * r**k` frames, split into `s` groups
of `r**k` consecutive frames; each group becomes one latent by `mean` (default) or by taking its `middle` frame.
So s=4, r=2, K=5 reaches 4 * (1 + 2 + 4 + 8 + 16) = 124 frames and gives 4 * 5 = 20 latents; r=1 gives the plain
"last s*K frames"; K*s=4 with r=1 gives classic 4-motion-frame behaviour. Output is oldest-first.

Frames missing at the start of a video are padded before grouping, identically in training and inference:
`reference` repeats the reference latent, `first` repeats the oldest available frame, `zeros` uses zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TSMConfig


def tsm_groups(s: int, r: int, K: int) -> list[list[int]]:
    """Frame offsets (negative, relative to the clip boundary; -1 = last generated frame) of each output latent,
    oldest latent first; each list is in chronological order."""
    groups = []
    offset = 0  # frames already covered, counting back from the boundary
    for k in range(K):
        size = r**k
        for _ in range(s):
            groups.append([-(offset + size) + i for i in range(size)])
            offset += size
    return groups[::-1]


class TemporalSegmentModule(nn.Module):
    """Compress a history of latents `[B, C, T, h, w]` (oldest first) into `[B, C, M, h, w]`, M = s*K."""

    def __init__(self, config: TSMConfig):
        super().__init__()
        self.config = config
        self.groups = tsm_groups(config.s, config.r, config.K)
        self.span = sum(len(g) for g in self.groups)  # frames the module can reach (124 for the paper)
        # each output latent is a weighted sum over the padded history: mean of its group, or its middle frame
        weights = torch.zeros(len(self.groups), self.span)
        for m, group in enumerate(self.groups):
            if config.reduce == "middle":
                weights[m, self.span + group[len(group) // 2]] = 1.0
            else:
                weights[m, [self.span + f for f in group]] = 1.0 / len(group)
        self.register_buffer("weights", weights, persistent=False)  # [M, span]

    @property
    def num_latents(self) -> int:
        return len(self.groups)

    def pad_history(self, history: torch.Tensor | None, ref_latents: torch.Tensor) -> torch.Tensor:
        """Left-pad (or crop) `history` [B, C, T, h, w] to exactly `span` frames.

        Args:
            history: generated latents so far, oldest first, or None at video start.
            ref_latents: `[B, C, h, w]` reference latents (used by `pad="reference"` and for shapes).
        """
        B, C, h, w = ref_latents.shape
        if history is None:
            history = ref_latents.new_zeros(B, C, 0, h, w)
        if history.ndim != 5 or history.shape[:2] != (B, C) or history.shape[3:] != (h, w):
            raise ValueError(
                f"history must be [B, C, T, h, w] = [{B}, {C}, T, {h}, {w}] to match the reference latents, "
                f"got {tuple(history.shape)}"
            )
        T = history.shape[2]
        if T >= self.span:
            return history[:, :, T - self.span :]
        missing = self.span - T
        if self.config.pad == "reference" or (self.config.pad == "first" and T == 0):
            fill = ref_latents[:, :, None].expand(B, C, missing, h, w)
        elif self.config.pad == "first":
            fill = history[:, :, :1].expand(B, C, missing, h, w)
        else:
            fill = ref_latents.new_zeros(B, C, missing, h, w)
        return torch.cat([fill.to(history.dtype), history], dim=2)

    def forward(self, history: torch.Tensor | None, ref_latents: torch.Tensor) -> torch.Tensor:
        padded = self.pad_history(history, ref_latents)  # [B, C, span, h, w]
        weights = self.weights.to(device=padded.device, dtype=padded.dtype)
        return torch.einsum("bcthw,mt->bcmhw", padded, weights)  # [B, C, M, h, w]
