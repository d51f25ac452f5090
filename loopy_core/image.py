"""Reference images: read any common file, accept any layout, and make the model's square `[1, 3, R, R]` input.

Accepted: PIL images; numpy or torch arrays `[H, W]`, `[H, W, C]` or ComfyUI's IMAGE `[B, H, W, C]` (first item);
C in {1, 3, 4}; uint8, uint16 or float 0..1. Alpha is composited over white, grey is expanded to RGB, EXIF rotation
is applied when reading files. The image is centre-cropped to a square and resized with antialiasing; a face crop
that follows the head comes with the robustness work (`--crop auto`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MIN_SIDE = 16
MAX_SIDE = 16_384


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file to float32 `[H, W, 3]` in 0..1 (EXIF-rotated, alpha over white, 16-bit aware)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image {path.name!r} not found in {str(path.parent.resolve())!r}")
    Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE
    try:
        with Image.open(path) as im:
            if max(im.size) > MAX_SIDE:  # from the header, before decoding hundreds of megapixels
                raise ValueError(
                    f"Image {str(path)!r} is {im.size[0]}x{im.size[1]} pixels; the limit is {MAX_SIDE} per side, "
                    "resize it first"
                )
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            else:
                arr = np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
    except Image.DecompressionBombError as e:
        raise ValueError(f"Image {str(path)!r} is too large (over {MAX_SIDE}x{MAX_SIDE} pixels); resize it first") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a readable image ({e})") from e
    return to_rgb_float(arr)


def to_rgb_float(image: Any) -> np.ndarray:
    """Any supported layout -> float32 `[H, W, 3]` in 0..1."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        image = np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image)
    if arr.ndim == 4:
        if arr.shape[0] > 1:
            logger.info("reference IMAGE has a batch of %d; using the first image", arr.shape[0])
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"reference image must be [H, W], [H, W, C] or [B, H, W, C] with C in 1/3/4, got {arr.shape}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    else:
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("reference image contains NaN or infinite values")
    arr = np.clip(arr, 0.0, 1.0)
    if arr.shape[-1] == 4:
        rgb, alpha = arr[..., :3], arr[..., 3:]
        arr = rgb * alpha + (1.0 - alpha)  # over white
    elif arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"reference image is {w}x{h} pixels; it needs at least {MIN_SIDE} pixels on each side")
    if max(h, w) > MAX_SIDE:
        raise ValueError(f"reference image is {w}x{h} pixels; the limit is {MAX_SIDE} per side, resize it first")
    return arr


def prepare_reference(image: Any, resolution: int) -> torch.Tensor:
    """Any supported image -> `[1, 3, R, R]` float32 in -1..1, centre-cropped to a square and resized."""
    arr = to_rgb_float(image)
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(np.ascontiguousarray(arr[top : top + side, left : left + side])).permute(2, 0, 1)[None]
    if side != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=side > resolution,
                          align_corners=False).clamp(0, 1)
    return x * 2.0 - 1.0


def to_image_tensor(pixels: torch.Tensor) -> torch.Tensor:
    """`[N, 3, H, W]` in -1..1 -> ComfyUI IMAGE layout `[N, H, W, 3]` float32 in 0..1 on the CPU."""
    return ((pixels.float().clamp(-1, 1) + 1.0) / 2.0).permute(0, 2, 3, 1).contiguous().cpu()
