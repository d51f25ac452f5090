"""Pixel-only estimators of mouth opening, head pose and blinks for videos of the synthetic world.

They read nothing but RGB frames, so they score generated videos exactly as they score rendered ones. They rely on
the world's conventions (`loopy_core.synthetic.face`): a plain background, skin that fills most of the head, and
feature colours (`EYE_RGB`, `MOUTH_RGB`) shared by every identity. Per frame, vectorised over frames:

1. background colour = median of the border pixels; foreground = pixels far from it;
2. skin colour = median of the foreground, refined by the mean of the pixels near it;
3. feature region = non-skin pixels with skin on all four sides (holes in the skin: eyes and mouth), grown by one
   pixel so that their anti-aliased rims count;
4. in that region each pixel is unmixed as `skin + a_eye (EYE - skin) + a_mouth (MOUTH - skin)` (least squares,
   clamped to 0..1), which gives the sub-pixel coverage of the eyes and the mouth;
5. mouth: area A and major semi-axis a (from the covariance of its coverage) give the half-height b = A / (pi a);
6. roll: the principal axis of the head's silhouette (hair + face, taller than wide and symmetric about the head's
   vertical axis); large areas make it robust to compression, unlike the few pixels of the eyes;
7. yaw: the features (eyes and mouth) slide along the head's x axis while the silhouette does not, so the offset
   of the feature axis from the silhouette centroid along that axis measures yaw;
8. translation: the silhouette centroid sits at a fixed, per-identity offset along the head's y axis from the pivot
   (estimated per video as a median); removing it gives the pivot, tx and ty.

Frames where the eyes are (nearly) closed or a feature is missing are marked invalid; yaw there is interpolated
from the valid frames. Units: fractions of the image size (mouth, tx, ty, yaw shift), radians (roll).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..synthetic.face import EYE_RGB, EYE_Y, MOUTH_RGB, MOUTH_Y, NEUTRAL_CENTRE

logger = logging.getLogger(__name__)

FG_THRESHOLD = 0.15  # colour distance from the background above which a pixel is head
SKIN_THRESHOLD = 0.12  # colour distance from the skin colour below which a pixel is skin
PIVOT_FRACTION = -EYE_Y / (MOUTH_Y - EYE_Y)  # pivot position from the eye midpoint (0) to the mouth (1)


@dataclass
class FaceMeasurements:
    """Per-frame measurements, each a float array [T].

    mouth_open: mouth half-height (fraction of image height); mouth_width: mouth half-width (fraction of width);
    mouth_x, mouth_y: mouth centre (fractions of the image width and height);
    tx, ty: head pivot offset from the neutral position (fractions of the image size); roll: radians, clockwise;
    yaw: sideways shift of the features against the silhouette (fraction of the image width, proportional to yaw);
    blink: eyelid closure 0..1 from the eye area; valid: eyes and mouth were found and the eyes are open.
    """

    mouth_open: np.ndarray
    mouth_width: np.ndarray
    mouth_x: np.ndarray
    mouth_y: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    roll: np.ndarray
    yaw: np.ndarray
    blink: np.ndarray
    valid: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return asdict(self)


def as_float_frames(frames: Any) -> torch.Tensor:
    """Frames as float32 torch [T, H, W, 3] in 0..1 (from uint8 or float, numpy or torch; [H, W, 3] is one frame)."""
    if not isinstance(frames, torch.Tensor):
        frames = torch.from_numpy(np.require(frames, requirements="CW"))
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {tuple(frames.shape)}")
    if frames.dtype == torch.uint8:
        return frames.float() / 255.0
    return frames.float()


def border_colour(x: torch.Tensor) -> torch.Tensor:
    """Median colour of the image border: [t, H, W, 3] -> [t, 3]."""
    b = max(1, x.shape[1] // 32)
    border = torch.cat(
        [x[:, :b].flatten(1, 2), x[:, -b:].flatten(1, 2), x[:, :, :b].flatten(1, 2), x[:, :, -b:].flatten(1, 2)], 1
    )
    return border.median(dim=1).values


def skin_colour(x: torch.Tensor, bg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(skin colour [t, 3], foreground mask [t, H, W]) from frames [t, H, W, 3] and background colours [t, 3]."""
    fg = (x - bg[:, None, None]).norm(dim=-1) > FG_THRESHOLD
    pixels = torch.where(fg[..., None], x, torch.full_like(x, float("nan"))).flatten(1, 2)
    skin0 = pixels.nanmedian(dim=1).values.nan_to_num(0.0)
    near = ((x - skin0[:, None, None]).norm(dim=-1) < SKIN_THRESHOLD) & fg
    count = near.sum((1, 2)).clamp_min(1)[:, None]
    return (x * near[..., None]).sum((1, 2)) / count, fg


def _moments(w: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor):
    """Mass [t], centroid ([t], [t]) and covariance entries of weights [t, H, W] over pixel grids [H, W]."""
    mass = w.sum((1, 2))
    m = mass.clamp_min(1e-6)
    cx, cy = (w * gx).sum((1, 2)) / m, (w * gy).sum((1, 2)) / m
    dx, dy = gx - cx[:, None, None], gy - cy[:, None, None]
    sxx, syy, sxy = (w * dx * dx).sum((1, 2)) / m, (w * dy * dy).sum((1, 2)) / m, (w * dx * dy).sum((1, 2)) / m
    return mass, cx, cy, sxx, syy, sxy


def _measure_chunk(x: torch.Tensor) -> dict[str, torch.Tensor]:
    t, h, w, _ = x.shape
    gy, gx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")  # pixel centres
    # 1-2. background, foreground, skin
    bg = border_colour(x)
    skin, _ = skin_colour(x, bg)
    is_skin = ((x - skin[:, None, None]).norm(dim=-1) < SKIN_THRESHOLD).int()
    # 3. holes in the skin, grown by a pixel
    left, up = is_skin.cummax(2).values, is_skin.cummax(1).values
    right, down = is_skin.flip(2).cummax(2).values.flip(2), is_skin.flip(1).cummax(1).values.flip(1)
    holes = (left & right & up & down & (1 - is_skin)).float()
    region = F.max_pool2d(holes[:, None], 3, stride=1, padding=1)[:, 0]
    # 4. unmix each pixel into skin + eye + mouth coverage
    basis = torch.stack([torch.tensor(EYE_RGB) - skin, torch.tensor(MOUTH_RGB) - skin], dim=-1)  # [t, 3, 2]
    gram_inv = torch.linalg.inv(basis.transpose(1, 2) @ basis + 1e-4 * torch.eye(2))  # [t, 2, 2]
    q = (x - skin[:, None, None]).flatten(1, 2)  # [t, HW, 3]
    coef = (q @ basis @ gram_inv.transpose(1, 2)).clamp(0.0, 1.0)  # [t, HW, 2]
    residual = (q - coef @ basis.transpose(1, 2)).norm(dim=-1)
    coef = coef * ((residual < 0.15).float() * region.flatten(1))[..., None]
    eye_w, mouth_w = coef[..., 0].view(t, h, w), coef[..., 1].view(t, h, w)
    # 5. mouth half-height from area and major axis
    m_mass, m_cx, m_cy, sxx, syy, sxy = _moments(mouth_w, gx, gy)
    lam_max = 0.5 * (sxx + syy) + torch.sqrt((0.5 * (sxx - syy)) ** 2 + sxy**2)
    m_a = 2.0 * lam_max.clamp_min(1e-6).sqrt()
    m_b = m_mass / (torch.pi * m_a)
    # 6. roll from the silhouette's principal axis (the holes count as head even where they resemble the background)
    smooth = F.avg_pool2d(F.pad(x.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # [t, 3, H, W]
    fg_dist = (smooth.permute(0, 2, 3, 1) - bg[:, None, None]).norm(dim=-1)
    fg_w = ((fg_dist - 0.8 * FG_THRESHOLD) / FG_THRESHOLD).clamp(0.0, 1.0)
    fg_w = torch.maximum(fg_w, region)
    _, s_cx, s_cy, sxx, syy, sxy = _moments(fg_w, gx, gy)
    axis_angle = 0.5 * torch.atan2(2 * sxy, sxx - syy)  # major axis from the image x axis, in (-pi/2, pi/2]
    roll = axis_angle - torch.sign(axis_angle) * (torch.pi / 2)
    # 7. yaw: the feature axis point (at the pivot's height) against the silhouette centroid, along the head's x axis
    e_mass, e_cx, _, _, _, _ = _moments(eye_w, gx, gy)
    on_left = (gx[None] < e_cx[:, None, None]).float()
    l_mass, l_cx, l_cy, *_ = _moments(eye_w * on_left, gx, gy)
    r_mass, r_cx, r_cy, *_ = _moments(eye_w * (1 - on_left), gx, gy)
    mid_x, mid_y = 0.5 * (l_cx + r_cx), 0.5 * (l_cy + r_cy)
    axis_x = mid_x + PIVOT_FRACTION * (m_cx - mid_x)
    axis_y = mid_y + PIVOT_FRACTION * (m_cy - mid_y)
    ux, uy = torch.cos(roll), torch.sin(roll)
    shift = (axis_x - s_cx) * ux + (axis_y - s_cy) * uy
    # 8. the silhouette centroid's offset from the pivot along the head's y axis (a per-identity constant)
    offset = (s_cx - axis_x) * -uy + (s_cy - axis_y) * ux
    return {
        "mouth_open": m_b / h,
        "mouth_width": m_a / w,
        "sil_x": s_cx / w,
        "sil_y": s_cy / h,
        "offset": offset / h,
        "roll": roll,
        "yaw": shift / w,
        "eye_mass": torch.minimum(l_mass, r_mass),
        "mouth_mass": m_mass,
        "mouth_x": m_cx / w,
        "mouth_y": m_cy / h,
    }


def _fill_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Linear interpolation over the invalid frames (held constant past the ends)."""
    if valid.all() or not valid.any():
        return values
    idx = np.arange(len(values))
    return np.interp(idx, idx[valid], values[valid])


@torch.no_grad()
def measure_faces(frames: Any, chunk: int = 64) -> FaceMeasurements:
    """Measure mouth, head pose and blinks on every frame of a video of the synthetic world.

    Args:
        frames: [T, H, W, 3] uint8 or float 0..1, numpy or torch.
        chunk: frames processed at once (bounds memory).
    """
    frames = as_float_frames(frames)
    parts = [_measure_chunk(frames[s : s + chunk].cpu()) for s in range(0, frames.shape[0], chunk)]
    out = {k: torch.cat([p[k] for p in parts]).double().numpy() for k in parts[0]}
    eye_ref = np.median(out["eye_mass"]) if np.any(out["eye_mass"] > 0) else 0.0
    blink = np.clip(1.0 - out["eye_mass"] / max(eye_ref, 1e-6), 0.0, 1.0)
    valid = (out["eye_mass"] > 0.4 * eye_ref) & (out["mouth_mass"] > 0) & (eye_ref > 0)
    if not valid.any():
        logger.warning("no frame shows both eyes and a mouth of the synthetic world; pose estimates are meaningless")
    offset = float(np.median(out["offset"][valid])) if valid.any() else 0.0
    roll = out["roll"]
    return FaceMeasurements(
        mouth_open=out["mouth_open"],
        mouth_width=out["mouth_width"],
        mouth_x=out["mouth_x"],
        mouth_y=out["mouth_y"],
        tx=out["sil_x"] + offset * np.sin(roll) - NEUTRAL_CENTRE[0],
        ty=out["sil_y"] - offset * np.cos(roll) - NEUTRAL_CENTRE[1],
        roll=roll,
        yaw=_fill_invalid(out["yaw"], valid),
        blink=blink,
        valid=valid,
    )


def estimate_mouth_opening(frames: Any) -> np.ndarray:
    """Mouth half-height per frame, as a fraction of the image height: [T]."""
    return measure_faces(frames).mouth_open


def estimate_head_pose(frames: Any) -> dict[str, np.ndarray]:
    """Head pose per frame: dict of [T] arrays tx, ty (image fractions), roll (radians), yaw (feature shift)."""
    m = measure_faces(frames)
    return {"tx": m.tx, "ty": m.ty, "roll": m.roll, "yaw": m.yaw}
