"""Face crop and paste-back: find the face in any photo, crop a square around it with margin for head motion, and
paste animated crops back with a colour-matched, feathered seam (`paste_back`; `seam_step` measures the seam).

The detector is OpenCV's Haar cascade `haarcascade_frontalface_default.xml`, which ships inside the
`opencv-python-headless` 4.x wheel (`cv2.data.haarcascades`; OpenCV 5 dropped it): nothing is downloaded. cv2 is imported lazily; without it
(or when no face is found) the crop falls back to the centre square of the image, with a logged message.

Images are float `[H, W, 3]` in 0..1 (numpy or torch); frames are `[T, S, S, 3]`. Geometry lives in `CropInfo`
(pixels of the original image).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

CASCADE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 640  # images are shrunk to this for detection (speed); boxes are scaled back
FEATHER = 0.15  # default seam ramp, a fraction of the crop side: wide enough that a slight colour misfit fades out
MATCH_BAND = 0.08  # colour matching looks at a band at least this wide (of the side), even for a narrower feather
MATCH_SIGMA = 0.05  # low-pass of the colour offset field, a fraction of the side (about 3 px of a 64-px model)
MATCH_GRID = 64  # the offset field is estimated on this coarse grid (it is smooth) and upsampled
GAIN_RANGE = (0.5, 2.0)  # per-channel colour gain limits: the band is a hint, not a proof


@dataclass(frozen=True)
class CropInfo:
    """A square crop of an image: `left`, `top`, `side` in pixels of the original `height` x `width` image;
    `found` says whether it is centred on a detected face (False: the centre-square fallback)."""

    left: int
    top: int
    side: int
    height: int
    width: int
    found: bool

    def check(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"crop info has an empty image size {self.width}x{self.height}")
        if not (1 <= self.side <= min(self.height, self.width)):
            raise ValueError(f"crop side {self.side} must be in 1..{min(self.height, self.width)} for a "
                             f"{self.width}x{self.height} image")
        if not (0 <= self.left <= self.width - self.side and 0 <= self.top <= self.height - self.side):
            raise ValueError(f"crop at left={self.left}, top={self.top}, side={self.side} is not inside the "
                             f"{self.width}x{self.height} image")


def _as_hwc(image: Any, what: str = "image") -> torch.Tensor:
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.require(image, requirements="CW"))
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"{what} must be [H, W, 3] float 0..1, got shape {tuple(x.shape)}")
    return x.float()


@functools.lru_cache(maxsize=1)
def _cascade():
    """The Haar cascade classifier, or None when cv2 is missing."""
    try:
        import cv2
    except ImportError:
        logger.warning("face detection needs opencv-python-headless (pip install opencv-python-headless); "
                       "falling back to the centre crop")
        return None
    if not hasattr(cv2, "CascadeClassifier"):  # OpenCV 5 moved the Haar cascades out of the main wheel
        logger.warning("this OpenCV (%s) has no Haar face detector; install opencv-python-headless<5. "
                       "Falling back to the centre crop", cv2.__version__)
        return None
    path = cv2.data.haarcascades + CASCADE
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        logger.warning("could not load the face detector %r; falling back to the centre crop", path)
        return None
    return classifier


def largest_box(boxes: Sequence[Sequence[float]]) -> tuple[int, int, int, int] | None:
    """The box `(x, y, w, h)` of largest area, or None when there are none."""
    if len(boxes) == 0:
        return None
    x, y, w, h = max(boxes, key=lambda b: float(b[2]) * float(b[3]))
    return int(x), int(y), int(w), int(h)


def detect_face(image: Any) -> tuple[int, int, int, int] | None:
    """The largest frontal face in `image` (float `[H, W, 3]` 0..1) as `(x, y, w, h)` pixels, or None."""
    classifier = _cascade()
    if classifier is None:
        return None
    import cv2

    x = _as_hwc(image).detach().cpu().clamp(0, 1)
    h, w = x.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    rgb = (x.numpy() * 255.0 + 0.5).astype(np.uint8)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_side = max(20, min(gray.shape) // 10)
    boxes = classifier.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
    box = largest_box([tuple(b) for b in boxes] if len(boxes) else [])
    if box is None:
        return None
    if len(boxes) > 1:
        logger.info("%d faces found; using the largest", len(boxes))
    return tuple(round(v / scale) for v in box)  # type: ignore[return-value]


def detect_face_box(frames: np.ndarray, samples: int = 12) -> np.ndarray | None:
    """Median face box `(x, y, w, h)` of `detect_face` over `samples` frames spread over `[T, H, W, 3]` uint8
    `frames` (one steady box for a whole video), or None if no face is found in any of them."""
    boxes = []
    for i in np.linspace(0, len(frames) - 1, min(samples, len(frames))).astype(int):
        box = detect_face(frames[i].astype(np.float32) / 255.0)
        if box is not None:
            boxes.append(box)
    if not boxes:
        return None
    return np.median(np.array(boxes, dtype=np.float32), axis=0)


def crop_box(image_shape: Sequence[int], face_box: Sequence[float] | None, margin: float = 1.8) -> CropInfo:
    """The square crop around `face_box` (`(x, y, w, h)`): side `margin` x the face's larger side, centred on the
    face, shifted and (if needed) shrunk to stay inside the image. No face: the centre square, `found=False`."""
    if len(image_shape) < 2:
        raise ValueError(f"image_shape must be (H, W) or (H, W, C), got {tuple(image_shape)}")
    height, width = int(image_shape[0]), int(image_shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"image_shape must have positive height and width, got {tuple(image_shape)}")
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number (face side multiplier), got {margin!r}")
    limit = min(height, width)
    if face_box is None:
        logger.info("no face found in the %dx%d image; using the centre square", width, height)
        return CropInfo((width - limit) // 2, (height - limit) // 2, limit, height, width, False)
    if len(face_box) != 4:
        raise ValueError(f"face_box must be (x, y, w, h), got {tuple(face_box)}")
    x, y, w, h = (float(v) for v in face_box)
    if not (w > 0 and h > 0):
        raise ValueError(f"face_box must have positive width and height, got {tuple(face_box)}")
    side = min(limit, max(1, round(margin * max(w, h))))
    cx, cy = x + w / 2.0, y + h / 2.0
    left = int(min(max(round(cx - side / 2.0), 0), width - side))
    top = int(min(max(round(cy - side / 2.0), 0), height - side))
    return CropInfo(left, top, side, height, width, True)


def face_crop_info(image: Any, margin: float = 1.8) -> CropInfo:
    """Detect the face in `image` and return its square crop (centre square when none is found)."""
    x = _as_hwc(image)
    return crop_box(x.shape, detect_face(x), margin)


def _check_matches(info: CropInfo, height: int, width: int) -> None:
    info.check()
    if (info.height, info.width) != (height, width):
        raise ValueError(f"this crop info is for a {info.width}x{info.height} image, but the image is "
                         f"{width}x{height}")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """`[N, S, S, 3]` -> `[N, size, size, 3]` (bilinear, antialiased when shrinking); unchanged when S == size."""
    if x.shape[1] == size and x.shape[2] == size:
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.clamp(0, 1).permute(0, 2, 3, 1)


def crop(image: Any, info: CropInfo, size: int) -> torch.Tensor:
    """The square crop `info` of `image` (`[H, W, 3]`), resized to `[size, size, 3]` float32 0..1."""
    if int(size) < 1:
        raise ValueError(f"crop size must be a positive number of pixels, got {size!r}")
    x = _as_hwc(image)
    _check_matches(info, x.shape[0], x.shape[1])
    square = x[info.top : info.top + info.side, info.left : info.left + info.side]
    return _resize(square[None], int(size))[0].contiguous()


def feather_mask(info: CropInfo, feather: float = FEATHER) -> torch.Tensor:
    """`[side, side]` blend weights: 1 inside, a smooth ramp down to ~0 over `feather * side` pixels at the crop's
    edges that lie inside the image (edges on the image border are not feathered)."""
    if not (0.0 <= feather <= 0.5):
        raise ValueError(f"feather must be in 0..0.5 (a fraction of the crop side), got {feather!r}")
    side = info.side
    ramp_px = feather * side
    d = torch.arange(side, dtype=torch.float32)

    def ramp(dist: torch.Tensor) -> torch.Tensor:
        if ramp_px <= 0:
            return torch.ones_like(dist)
        t = ((dist + 0.5) / ramp_px).clamp(0, 1)
        return t * t * (3 - 2 * t)  # smoothstep

    one = torch.ones(side)
    mx = (ramp(d) if info.left > 0 else one) * (ramp(side - 1 - d) if info.left + side < info.width else one)
    my = (ramp(d) if info.top > 0 else one) * (ramp(side - 1 - d) if info.top + side < info.height else one)
    return my[:, None] * mx[None, :]


@dataclass(frozen=True)
class ColourMatch:
    """A colour correction for one video's animated crops, estimated once (see `colour_match`): each crop becomes
    `gain * crop + offset`, with `gain` `[3]` per channel and `offset` a smooth `[side, side, 3]` field."""

    gain: torch.Tensor
    offset: torch.Tensor

    def apply(self, patch: torch.Tensor) -> torch.Tensor:
        """`[T, side, side, 3]` crops at the paste size -> colour-matched crops, clamped to 0..1."""
        return (patch * self.gain.to(patch) + self.offset.to(patch)).clamp(0, 1)


def _frames(frames: Any) -> torch.Tensor:
    f = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.require(frames, requirements="CW"))
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4 or f.shape[-1] != 3 or f.shape[1] != f.shape[2]:
        raise ValueError(f"frames must be square [T, S, S, 3], got shape {tuple(f.shape)}")
    return f.float()


def _normalised_blur(x: torch.Tensor, weight: torch.Tensor, sigma: float, floor: float = 0.1) -> torch.Tensor:
    """`blur(weight * x) / max(blur(weight), floor)` for `x` `[C, G, G]` and `weight` `[G, G]` in 0..1 (Gaussian,
    kornia): a smooth field that follows `x` where the weight is (normalised convolution) and fades to 0 away from
    it (where the blurred weight drops below `floor`)."""
    from kornia.filters import gaussian_blur2d

    k = 2 * int(3 * sigma) + 1
    num = gaussian_blur2d((x * weight)[None], (k, k), (sigma, sigma), border_type="replicate")[0]
    den = gaussian_blur2d(weight[None, None], (k, k), (sigma, sigma), border_type="replicate")[0]
    return num / den.clamp_min(floor)


def colour_match(original: Any, frames: Any, info: CropInfo, feather: float = FEATHER) -> ColourMatch:
    """Estimate how to move animated crops `frames` (`[T, S, S, 3]`) to the photo's colour at the seam.

    The evidence is the feather band (the ring of the crop that is blended with the photo, at least `MATCH_BAND` of
    the side wide) of the frames' mean: (1) a per-channel gain, the photo's mean over the crops' mean on the band
    (exposure and white balance; clamped to `GAIN_RANGE`); (2) an offset field: the band's remaining difference,
    low-passed (Gaussian of `MATCH_SIGMA` of the side) and spread over the whole crop by normalised convolution, so
    the colour near each edge moves to the photo's there and the interior's moves toward the edges' average.

    One estimate per video, not per frame: the band is mostly background, hair and shoulders, which hold still,
    while the head moves and the model's colour wanders a little from clip to clip; a per-frame estimate would make
    the whole crop pulse. `render_video` estimates on the first clip and reuses it; Loopy Paste Back estimates on
    all the frames it is given. Edges on the image border are not blended and give no evidence; a crop with none
    left (the centre square of a square photo) gets the identity.
    """
    f = _frames(frames)
    base = _as_hwc(original, "original image").to(f.device)
    _check_matches(info, base.shape[0], base.shape[1])
    side = info.side
    region = base[info.top : info.top + side, info.left : info.left + side].permute(2, 0, 1)  # [3, S, S]
    patch = _resize(f.mean(0, keepdim=True), side)[0].permute(2, 0, 1)  # [3, S, S], the frames' mean
    band = 1.0 - feather_mask(info, max(feather, MATCH_BAND)).to(f.device)  # [S, S]: 1 at the blended edges
    if float(band.sum()) < 1.0:
        return ColourMatch(torch.ones(3, device=f.device), torch.zeros(side, side, 3, device=f.device))
    # 1. gain: the band's mean colour, photo over crops
    w = band / band.sum()
    gain = ((region * w).sum((1, 2)) / (patch * w).sum((1, 2)).clamp_min(1e-3)).clamp(*GAIN_RANGE)
    # 2. offset: the band's remaining difference on a coarse grid (it is low-frequency), spread inwards
    grid = min(side, MATCH_GRID)

    def coarse(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x[None], size=(grid, grid), mode="area")[0]

    diff = coarse(region - gain[:, None, None] * patch)  # [3, G, G]
    weight = coarse(band[None])[0]
    mean = (diff * weight).sum((1, 2), keepdim=True) / weight.sum()  # ~0 unless the gain was clamped
    offset = mean + _normalised_blur(diff - mean, weight, max(MATCH_SIGMA * grid, 1.0))
    offset = F.interpolate(offset[None], size=(side, side), mode="bilinear", align_corners=False)[0]
    return ColourMatch(gain, offset.permute(1, 2, 0).contiguous())


def paste_back(
    original: Any, frames: Any, info: CropInfo, feather: float = FEATHER, match: bool | ColourMatch = True
) -> torch.Tensor:
    """Paste animated crops `frames` (`[T, S, S, 3]`) into `original` (`[H, W, 3]`) at `info`, with a feathered
    seam; returns `[T, H, W, 3]` float32 0..1 (on the frames' device). Pixels outside the crop are the original's.

    `match`: True estimates a `colour_match` on these frames; a `ColourMatch` is reused as it is (one estimate for a
    video that arrives clip by clip, so the colour does not jump between clips); False pastes the crops' colours."""
    f = _frames(frames)
    base = _as_hwc(original, "original image").to(f.device)
    _check_matches(info, base.shape[0], base.shape[1])
    mask = feather_mask(info, feather).to(f.device)[None, :, :, None]
    patch = _resize(f, info.side)
    if match is True:
        match = colour_match(base, f, info, feather)
    if isinstance(match, ColourMatch):
        if tuple(match.offset.shape) != (info.side, info.side, 3):
            raise ValueError(f"this colour match is for a {match.offset.shape[0]}-px crop, but the crop is "
                             f"{info.side} px")
        patch = match.apply(patch)
    out = base[None].repeat(f.shape[0], 1, 1, 1)
    region = out[:, info.top : info.top + info.side, info.left : info.left + info.side]
    out[:, info.top : info.top + info.side, info.left : info.left + info.side] = torch.lerp(region, patch, mask)
    return out.clamp(0, 1)


def seam_step(video: Any, original: Any, info: CropInfo, width: int | None = None) -> float:
    """The edge a paste adds at the crop's border, in 0..1 pixel units: 0 for none; a bit under half the colour
    difference for an un-matched crop with the default rings (the inside ring is then the blend ramp, half crop on
    average, less at the corners).

    Along each crop edge that lies inside the image, per pixel of the edge: the mean of the `width` pixels just inside
    minus the mean of the `width` just outside (default: the default feather's ramp), less the same difference in
    `original`; the absolute value averaged over edges, positions, channels and the frames of `video` (`[T, H, W, 3]`
    pastes into `original`)."""
    base = _as_hwc(original, "original image")
    v = video if isinstance(video, torch.Tensor) else torch.from_numpy(np.require(video, requirements="CW"))
    v = (v[None] if v.ndim == 3 else v).float().to(base.device)
    if v.ndim != 4 or tuple(v.shape[1:]) != tuple(base.shape):
        raise ValueError(f"video must be [T, {base.shape[0]}, {base.shape[1]}, 3] like the original, got "
                         f"{tuple(v.shape)}")
    _check_matches(info, base.shape[0], base.shape[1])
    top, left, side, height, width_px = info.top, info.left, info.side, info.height, info.width
    w = max(1, round(FEATHER * side)) if width is None else int(width)
    if not 1 <= w <= side:
        raise ValueError(f"width must be 1..{side} pixels (the crop side), got {width!r}")
    rows, cols = slice(top, top + side), slice(left, left + side)

    def across(img: torch.Tensor) -> list[torch.Tensor]:  # img [..., H, W, 3] -> inside - outside, per edge
        d = []
        if left > 0:
            k = min(w, left)
            d.append(img[..., rows, left : left + k, :].mean(-2) - img[..., rows, left - k : left, :].mean(-2))
        if left + side < width_px:
            k, r = min(w, width_px - left - side), left + side
            d.append(img[..., rows, r - k : r, :].mean(-2) - img[..., rows, r : r + k, :].mean(-2))
        if top > 0:
            k = min(w, top)
            d.append(img[..., top : top + k, cols, :].mean(-3) - img[..., top - k : top, cols, :].mean(-3))
        if top + side < height:
            k, b = min(w, height - top - side), top + side
            d.append(img[..., b - k : b, cols, :].mean(-3) - img[..., b : b + k, cols, :].mean(-3))
        return d

    steps = [(dv - dp).abs().mean() for dv, dp in zip(across(v), across(base[None]))]
    return float(torch.stack(steps).mean()) if steps else 0.0
