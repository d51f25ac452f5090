"""Loopy's dual classifier-free guidance as pure functions (paper Sec. 3.4).

Notation (<variable> -> paper):
- `e_uncond` -> prediction without reference and audio (reference features zeroed, motion tokens of "no audio");
- `e_ref` -> prediction with the reference, without audio;
- `e_full` -> prediction with reference and audio;
- `ref_scale` -> reference ratio (paper: 3), `audio_scale` -> audio ratio (paper: 5).

    e = e_uncond + ref_scale * (e_ref - e_uncond) + audio_scale * (e_full - e_ref)

Motion frames are kept in all three branches. The branches run as one batch in the order of `BRANCHES`, split
with `chunk(3)`; with `ref_scale = audio_scale = 1` the result is exactly `e_full`. Written as a weighted sum,
`e = (1 - ref_scale) e_uncond + (ref_scale - audio_scale) e_ref + audio_scale e_full`, so a branch whose weight is
zero need not run at all (`branch_weights`): `ref_scale = 1` drops the unconditional branch, for example.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

BRANCHES = ("uncond", "ref", "full")
Scale = Union[float, Sequence[float], Callable[[int, int], float]]


def combine(
    e_uncond: torch.Tensor, e_ref: torch.Tensor, e_full: torch.Tensor, ref_scale: float, audio_scale: float
) -> torch.Tensor:
    """The dual-guidance formula above."""
    return e_uncond + ref_scale * (e_ref - e_uncond) + audio_scale * (e_full - e_ref)


def combine_batched(pred: torch.Tensor, ref_scale: float, audio_scale: float) -> torch.Tensor:
    """`pred` is the three branches stacked on dim 0 in `BRANCHES` order."""
    if pred.shape[0] % 3:
        raise ValueError(f"batched guidance needs a batch that is a multiple of 3, got {pred.shape[0]}")
    return combine(*pred.chunk(3), ref_scale=ref_scale, audio_scale=audio_scale)


def branch_weights(ref_scale: float, audio_scale: float) -> tuple[float, float, float]:
    """Weights of (e_uncond, e_ref, e_full) in the combined prediction; they sum to 1."""
    return (1.0 - ref_scale, ref_scale - audio_scale, audio_scale)


def scale_at(scale: Scale, step: int, num_steps: int) -> float:
    """The guidance scale at `step` (0-based) of `num_steps`: a constant, a callable `(step, num_steps)`, or a
    sequence of values spread evenly over the steps (linearly interpolated; one value per step also works)."""
    if callable(scale):
        return float(scale(step, num_steps))
    if isinstance(scale, (int, float)):
        return float(scale)
    values = [float(v) for v in scale]
    if not values:
        raise ValueError("a guidance schedule needs at least one value")
    if len(values) == 1 or num_steps <= 1:
        return values[0]
    pos = step / (num_steps - 1) * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def in_interval(step: int, num_steps: int, interval: tuple[float, float]) -> bool:
    """Whether guidance applies at `step` (0-based) of `num_steps`: `interval = (start, end)` are fractions of the
    steps, from the first (noisiest); `(0, 1)` is every step. Outside it the scales are 1 and only the full branch
    runs: guidance in a limited interval of the steps (Kynkaenniemi et al., 2024) costs one branch instead of three
    on those steps."""
    start, end = interval
    return start <= step / num_steps < end


def parse_interval(text) -> tuple[float, float]:
    """'0,0.5' (or a pair) -> (0.0, 0.5): the fractions of the steps, from the first, that use guidance."""
    try:
        values = [float(v) for v in (str(text).split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError) as e:
        raise ValueError(f"guidance interval {text!r} must be two numbers 'start,end', e.g. '0,0.5'") from e
    if len(values) != 2 or not 0.0 <= values[0] < values[1] <= 1.0:
        raise ValueError(f"guidance interval {text!r} must be two fractions of the steps 'start,end' with "
                         "0 <= start < end <= 1, e.g. '0,0.5' for guidance on the first half of the steps")
    return values[0], values[1]


def parse_scale(text: str) -> Scale:
    """'5' -> 5.0; '6,4,2' -> a schedule from 6 down to 2 over the steps."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError as e:
        raise ValueError(f"guidance scale {text!r} is not a number or a comma-separated list of numbers") from e
    if not values:
        raise ValueError(f"guidance scale {text!r} is empty")
    if any(v < 0 for v in values):
        raise ValueError(f"guidance scale {text!r} must not be negative")
    return values[0] if len(values) == 1 else values
