"""Video quality metrics read from pixels: lip sync, head motion, identity drift, seam jitter and smoothness.

`evaluate_video` is the one entry point (used by `loopy eval` and the benchmark). Its result is a JSON-ready dict,
one section per metric; a section that can't be computed says so with `"available": false` and a `"reason"`.

Generic metrics (any video):
- **seam_jitter**: mean frame-to-frame change (mean absolute pixel difference, 0..1 units) across clip boundaries
  (between frames k*clip_length - 1 and k*clip_length) divided by the mean change inside clips. 1.0 is seamless;
  a hard cut at every boundary gives a ratio far above 1.
- **smoothness**: VBench-style motion smoothness, how well each frame is predicted by the average of its two
  neighbours: `score = 1 - mean |f_t - (f_{t-1} + f_{t+1}) / 2|` (1.0 is perfectly linear motion; pixel units
  0..1, as VBench's (255 - MAE) / 255), plus `error_ratio`, that error divided by the mean frame change (0 for
  linear motion, about 0.5-1 for flicker).
- **identity_drift**: per window of `window_seconds` (10 s), the distance of the window's appearance to the
  reference image: background colour and face colour (RGB distance, 0..1 units, from the border median and the
  median head colour) and head shape (mean |log ratio| of the silhouette's area and principal extents). Reported
  per window, as the maximum, and as a slope per window.
- **identity_fidelity**: whether the face in the video is the face in the reference, per second, on the reference's
  face box (OpenCV's detector on photos; the head's silhouette on synthetic-world portraits; else the centre square):
  `psnr16`, the PSNR (dB) of the box shrunk to 16x16 against the reference's (low-frequency appearance: colours,
  hair, ground; a photo shifted by 3% of the box keeps ~20+ dB), and `ssim`, the structural similarity of the box's
  grey levels at 32x32. The curve over the whole video is kept (`seconds`) beside first/last/mean values. A ground
  truth's own curve against the same reference (`error_ratio` in `training.eval_synthetic`) says how much of the
  change a talking face makes anyway.

World-specific metrics (videos of `loopy_core.synthetic`, need its ground-truth JSON):
- **sync**: correlation of the measured mouth opening with the speech envelope of the given audio at the best lag
  within +-`max_lag` frames (positive lag: the mouth follows the audio), and that lag; `ceiling` is the same score
  for the ground-truth mouth against the ground-truth envelope, and `relative` = score / ceiling. Both signals are
  first detrended by a centred 1 s moving average (`SYNC_DETREND_SECONDS`), so the score rewards syllable-level
  timing: two unrelated utterances share slow speech/pause structure, which alone correlates by up to ~0.4 over
  10 s, and ~0.25 after detrending.
- **motion**: head-sway amplitude (RMS of the pivot's tx, ty; image fractions) and dominant period of tx (seconds)
  against the truth, roll amplitude, the correlation of the measured tx with the true tx (a model that keeps the
  sway's phase over long histories scores high), and `frozen_head` (amplitude below a quarter of the truth's).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..synthetic.speech import speech_envelope
from .estimators import as_float_frames, border_colour, measure_faces, skin_colour

logger = logging.getLogger(__name__)

FROZEN_FRACTION = 0.25  # motion amplitude below this fraction of the truth's counts as a frozen head
SYNC_DETREND_SECONDS = 1.0  # window of the moving average removed before the sync correlation
NEEDS_TRUTH = "needs the ground-truth JSON of a synthetic-world video (loopy synth; --truth)"


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-12 else 0.0


def best_lag_correlation(signal: np.ndarray, reference: np.ndarray, max_lag: int = 2) -> tuple[float, int]:
    """Max over lags L in [-max_lag, max_lag] of corr(signal[t], reference[t - L]), and that L."""
    signal, reference = np.asarray(signal, np.float64), np.asarray(reference, np.float64)
    n = min(len(signal), len(reference))
    if n <= 2 * max_lag + 2:
        raise ValueError(f"need more than {2 * max_lag + 2} frames to correlate, got {n}")
    best = (-2.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        s = signal[max(lag, 0) : n + min(lag, 0)]
        r = reference[max(-lag, 0) : n - max(lag, 0)]
        best = max(best, (_corr(s, r), lag))
    return best


def detrend(x: np.ndarray, window: int) -> np.ndarray:
    """`x` minus its centred moving average over `window` frames (edges padded with the end values)."""
    x = np.asarray(x, np.float64)
    window = max(1, int(window) | 1)  # odd, so the average is centred
    if window == 1 or len(x) == 0:
        return x - x.mean() if len(x) else x
    padded = np.pad(x, window // 2, mode="edge")
    return x - np.convolve(padded, np.ones(window) / window, mode="valid")


def dominant_period(track: np.ndarray, fps: float, min_period: float = 1.0, max_period: float = 12.0) -> dict:
    """Period (s) of the sinusoid that explains most of `track`'s variance, and that fraction (`strength`, 0..1).

    Least-squares fits of a + b sin(wt) + c cos(wt) over a grid of periods, so it works with few cycles.
    """
    x = np.asarray(track, np.float64)
    x = x - x.mean()
    total = float((x * x).sum())
    seconds = len(x) / fps
    hi = min(max_period, seconds)
    if total < 1e-12 or hi <= min_period:
        return {"period_s": None, "strength": 0.0}
    t = np.arange(len(x)) / fps
    best = (0.0, None)
    for period in np.geomspace(min_period, hi, 240):
        w = 2 * math.pi / period
        basis = np.stack([np.ones_like(t), np.sin(w * t), np.cos(w * t)], 1)
        coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
        explained = 1.0 - float(((x - basis @ coef) ** 2).sum()) / total
        best = max(best, (explained, float(period)), key=lambda b: b[0])
    return {"period_s": best[1], "strength": best[0]}


# ---------------------------------------------------------------------------------------------------------------
# generic metrics
# ---------------------------------------------------------------------------------------------------------------
def _frame_changes(frames: torch.Tensor, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(d [T-1]: mean |f_{t+1} - f_t|, e [T-2]: mean |f_t - (f_{t-1} + f_{t+1}) / 2|), in 0..1 pixel units."""
    d, e = [], []
    for s in range(0, frames.shape[0] - 1, chunk):
        x = as_float_frames(frames[s : s + chunk + 2])  # overlap so every t gets both neighbours
        n = min(chunk, x.shape[0] - 1)
        d.append((x[1 : n + 1] - x[:n]).abs().mean((1, 2, 3)))
        if x.shape[0] >= 3:
            m = min(chunk, x.shape[0] - 2)
            e.append((x[1 : m + 1] - 0.5 * (x[:m] + x[2 : m + 2])).abs().mean((1, 2, 3)))
    d_arr = torch.cat(d).double().numpy()
    e_arr = torch.cat(e).double().numpy() if e else np.zeros(0)
    return d_arr, e_arr


def seam_jitter(frames: Any, clip_length: int = 12, changes: np.ndarray | None = None) -> dict:
    """Mean frame change across clip boundaries / mean change inside clips (see the module docstring)."""
    if clip_length < 2:
        raise ValueError(f"clip_length must be >= 2, got {clip_length}")
    d = _frame_changes(frames)[0] if changes is None else changes
    at_seam = (np.arange(len(d)) + 1) % clip_length == 0
    if not at_seam.any() or at_seam.all():
        return {"available": False, "reason": f"the video needs more than {clip_length} frames"}
    seam, inside = float(d[at_seam].mean()), float(d[~at_seam].mean())
    ratio = seam / inside if inside > 1e-9 else (1.0 if seam <= 1e-9 else math.inf)
    return {
        "available": True,
        "ratio": ratio,
        "seam_change": seam,
        "inside_change": inside,
        "clip_length": clip_length,
        "seams": int(at_seam.sum()),
    }


def motion_smoothness(frames: Any, changes: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """VBench-style smoothness: 1 - mean error of predicting each frame from its neighbours' average."""
    d, e = _frame_changes(frames) if changes is None else changes
    if len(e) == 0:
        return {"available": False, "reason": "the video needs at least 3 frames"}
    err = float(e.mean())
    change = float(d.mean())
    return {"available": True, "score": 1.0 - err, "error_ratio": err / change if change > 1e-9 else 0.0}


def _resize_image(image: Any, height: int, width: int) -> torch.Tensor:
    x = as_float_frames(image)[:1]  # [1, h, w, 3]
    if x.shape[1:3] != (height, width):
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(height, width), mode="bilinear", antialias=True)
        x = x.permute(0, 2, 3, 1).clamp(0.0, 1.0)
    return x


@torch.no_grad()
def _appearance(frames: torch.Tensor, chunk: int = 64) -> dict[str, np.ndarray]:
    """Per frame: background colour [T, 3], face colour [T, 3], silhouette shape (area, major, minor) [T, 3]."""
    out: dict[str, list] = {"background": [], "face": [], "shape": []}
    for s in range(0, frames.shape[0], chunk):
        x = as_float_frames(frames[s : s + chunk])
        t, h, w, _ = x.shape
        bg = border_colour(x)
        face, fg = skin_colour(x, bg)
        gy, gx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
        wgt = fg.float()
        mass = wgt.sum((1, 2)).clamp_min(1.0)
        cx, cy = (wgt * gx).sum((1, 2)) / mass, (wgt * gy).sum((1, 2)) / mass
        dx, dy = gx - cx[:, None, None], gy - cy[:, None, None]
        sxx, syy, sxy = ((wgt * v).sum((1, 2)) / mass for v in (dx * dx, dy * dy, dx * dy))
        root = torch.sqrt((0.5 * (sxx - syy)) ** 2 + sxy**2)
        major = (0.5 * (sxx + syy) + root).clamp_min(1e-8).sqrt()
        minor = (0.5 * (sxx + syy) - root).clamp_min(1e-8).sqrt()
        out["background"].append(bg)
        out["face"].append(face)
        out["shape"].append(torch.stack([mass / (h * w), major, minor], 1))
    return {k: torch.cat(v).double().numpy() for k, v in out.items()}


def identity_drift(frames: Any, reference: Any, fps: float, window_seconds: float = 10.0) -> dict:
    """Distance of background colour, face colour and head shape to the reference, per window (module docstring)."""
    frames = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.require(frames, requirements="CW"))
    ref = _appearance(_resize_image(reference, frames.shape[1], frames.shape[2]))
    app = _appearance(frames)
    dist = {
        "background": np.linalg.norm(app["background"] - ref["background"], axis=1),
        "face": np.linalg.norm(app["face"] - ref["face"], axis=1),
        "shape": np.abs(np.log(np.maximum(app["shape"], 1e-8) / np.maximum(ref["shape"], 1e-8))).mean(1),
    }
    per_window = max(1, int(round(window_seconds * fps)))
    windows = []
    for s in range(0, frames.shape[0], per_window):
        sl = slice(s, min(frames.shape[0], s + per_window))
        windows.append({"start_s": s / fps, **{k: float(np.median(v[sl])) for k, v in dist.items()}})
    result = {"available": True, "window_seconds": window_seconds, "windows": windows}
    for key in dist:
        values = np.array([w[key] for w in windows])
        result[f"{key}_max"] = float(values.max())
        result[f"{key}_slope_per_window"] = (
            float(np.polyfit(np.arange(len(values)), values, 1)[0]) if len(values) > 1 else 0.0
        )
    return result


def reference_face_box(reference: torch.Tensor) -> tuple[tuple[int, int, int, int], str]:
    """`(x, y, w, h)` of the face in `reference` `[1, H, W, 3]` and how it was found: "detected" (OpenCV), "silhouette"
    (the foreground against the border colour: the synthetic world's head) or "centre" (the middle half)."""
    from ..face import detect_face

    _, h, w, _ = reference.shape
    box = detect_face(reference[0])
    if box is not None:
        return box, "detected"
    _, fg = skin_colour(reference, border_colour(reference))
    ys, xs = torch.nonzero(fg[0], as_tuple=True)
    if len(ys) > 0.02 * h * w and len(ys) < 0.9 * h * w:
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        return (x0, y0, x1 - x0, y1 - y0), "silhouette"
    return (w // 4, h // 4, w // 2, h // 2), "centre"


@torch.no_grad()
def _box_scores(frames: torch.Tensor, ref_box: torch.Tensor, box, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: 16x16 mean squared error and 32x32 grey SSIM of the box against the reference's box."""
    from kornia.color import rgb_to_grayscale
    from kornia.metrics import ssim

    x, y, w, h = box

    def shrink(v, size):
        return F.interpolate(v, size=(size, size), mode="area")

    ref = ref_box.permute(0, 3, 1, 2)
    ref16, ref32 = shrink(ref, 16), rgb_to_grayscale(shrink(ref, 32))
    mse, sim = [], []
    for s in range(0, frames.shape[0], chunk):
        v = as_float_frames(frames[s : s + chunk])[:, y : y + h, x : x + w].permute(0, 3, 1, 2)
        mse.append(((shrink(v, 16) - ref16) ** 2).mean((1, 2, 3)))
        sim.append(ssim(rgb_to_grayscale(shrink(v, 32)), ref32.expand(v.shape[0], -1, -1, -1), 7).mean((1, 2, 3)))
    return torch.cat(mse).double().numpy(), torch.cat(sim).double().numpy()


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on 0..1 pixels (capped at 100 dB for identical images)."""
    return float(min(100.0, 10.0 * math.log10(1.0 / max(mse, 1e-10))))


def identity_fidelity(frames: Any, reference: Any, fps: float, box=None, window_seconds: float = 1.0) -> dict:
    """Face-box PSNR (16x16) and SSIM (32x32 grey) against the reference, per window of `window_seconds` (module
    docstring). `box` `(x, y, w, h)` in the frames' pixels overrides the box found in the reference."""
    frames = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.require(frames, requirements="CW"))
    height, width = frames.shape[1], frames.shape[2]
    ref_image = as_float_frames(reference)[:1]
    aspect = (ref_image.shape[2] / ref_image.shape[1]) / (width / height)
    if abs(math.log(aspect)) > 0.02:
        logger.warning("the reference is %dx%d but the video %dx%d: comparing a stretched reference; pass the "
                       "image the video was made from (or its crop)", ref_image.shape[2], ref_image.shape[1],
                       width, height)
    ref = _resize_image(ref_image, height, width)
    source = "given"
    if box is None:
        box, source = reference_face_box(ref)
    x, y, w, h = (int(v) for v in box)
    x, y = max(0, min(x, width - 1)), max(0, min(y, height - 1))
    w, h = max(1, min(w, width - x)), max(1, min(h, height - y))
    mse, sim = _box_scores(frames, ref[:, y : y + h, x : x + w], (x, y, w, h))
    per_window = max(1, int(round(window_seconds * fps)))
    seconds = []
    for s in range(0, frames.shape[0], per_window):
        sl = slice(s, min(frames.shape[0], s + per_window))
        m = float(mse[sl].mean())
        seconds.append({"start_s": s / fps, "mse16": m, "psnr16": psnr(m), "ssim": float(sim[sl].mean())})
    psnrs = np.array([r["psnr16"] for r in seconds])
    return {
        "available": True,
        "box": [x, y, w, h],
        "box_source": source,
        "window_seconds": window_seconds,
        "seconds": seconds,
        "psnr16_first": seconds[0]["psnr16"],
        "psnr16_last": seconds[-1]["psnr16"],
        "psnr16_mean": psnr(float(mse.mean())),
        "psnr16_min": float(psnrs.min()),
        "ssim_first": seconds[0]["ssim"],
        "ssim_last": seconds[-1]["ssim"],
        "ssim_mean": float(sim.mean()),
        "mse16_mean": float(mse.mean()),
        "mse16_last": seconds[-1]["mse16"],
    }


# ---------------------------------------------------------------------------------------------------------------
# world-specific metrics
# ---------------------------------------------------------------------------------------------------------------
def _truth_track(truth: dict, key: str) -> np.ndarray:
    frames = truth.get("frames")
    if not isinstance(frames, dict) or key not in frames:
        have = sorted(frames) if isinstance(frames, dict) else []
        raise ValueError(f"ground truth has no per-frame '{key}' (truth['frames'] keys: {have})")
    return np.asarray(frames[key], np.float64)


def sync_metric(
    mouth: np.ndarray, envelope: np.ndarray, fps: float, truth: dict | None = None, max_lag: int = 2
) -> dict:
    """Best-lag correlation of mouth opening and speech envelope, and the ground truth's ceiling (see module doc)."""
    window = int(round(SYNC_DETREND_SECONDS * fps))
    score, lag = best_lag_correlation(detrend(mouth, window), detrend(envelope, window), max_lag)
    result = {"available": True, "score": score, "lag_frames": lag, "max_lag": max_lag}
    if truth is not None:
        true_mouth = _truth_track(truth, "mouth_open")
        has_env = "envelope" in truth.get("frames", {})
        true_env = _truth_track(truth, "envelope") if has_env else envelope
        ceiling, ceiling_lag = best_lag_correlation(detrend(true_mouth, window), detrend(true_env, window), max_lag)
        result.update(ceiling=ceiling, ceiling_lag_frames=ceiling_lag)
        result["relative"] = score / ceiling if ceiling > 1e-6 else None
    return result


def motion_metric(pose: dict[str, np.ndarray], fps: float, truth: dict) -> dict:
    """Head-sway amplitude, period and phase agreement against the truth, and the frozen-head flag."""
    n = min(len(pose["tx"]), len(_truth_track(truth, "tx")))
    tx, ty, roll = (np.asarray(pose[k][:n], np.float64) for k in ("tx", "ty", "roll"))
    true_tx, true_ty, true_roll = (_truth_track(truth, k)[:n] for k in ("tx", "ty", "roll"))
    amplitude = math.sqrt(tx.var() + ty.var())
    true_amplitude = math.sqrt(true_tx.var() + true_ty.var())
    period = dominant_period(tx, fps)
    true_period = truth.get("sway", {}).get("period_s") or dominant_period(true_tx, fps)["period_s"]
    result = {
        "available": True,
        "amplitude": amplitude,
        "true_amplitude": true_amplitude,
        "amplitude_ratio": amplitude / true_amplitude if true_amplitude > 1e-9 else None,
        "period_s": period["period_s"],
        "period_strength": period["strength"],
        "true_period_s": true_period,
        "roll_amplitude": float(roll.std()),
        "true_roll_amplitude": float(true_roll.std()),
        "tx_correlation": _corr(tx, true_tx),
        "frozen_head": bool(amplitude < FROZEN_FRACTION * true_amplitude or amplitude < 1e-4),
    }
    if period["period_s"] is not None and true_period:
        result["period_error"] = abs(period["period_s"] - true_period) / true_period
    return result


def evaluate_video(
    frames: Any,
    fps: float,
    audio: Any = None,
    sample_rate: int | None = None,
    reference: Any = None,
    truth: dict | None = None,
    clip_length: int = 12,
    max_lag: int = 2,
    face_box=None,
) -> dict:
    """All metrics for one video.

    Args:
        frames: [T, H, W, 3] uint8 or float 0..1 (numpy or torch).
        fps: frame rate of `frames`.
        audio: waveform [N] or [C, N] that the video should be lip-synced to, or None.
        sample_rate: sample rate of `audio`.
        reference: reference image [H', W', 3] (any size; resized), or None (no identity drift).
        truth: ground truth of a synthetic-world video (`make_sample(...).truth` or its JSON), or None.
        clip_length: frames per generated clip, for seam jitter (12 in Loopy).
        max_lag: sync searches lags in [-max_lag, max_lag] frames.
        face_box: `(x, y, w, h)` in the frames' pixels for identity fidelity (default: found in the reference).
    Returns:
        JSON-ready dict with sections video, sync, motion, identity_drift, identity_fidelity, seam_jitter,
        smoothness.
    """
    # 1. inputs
    if not isinstance(frames, torch.Tensor):
        frames = torch.from_numpy(np.require(frames, requirements="CW"))
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 3:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 3, got {tuple(frames.shape)}")
    if not fps or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if audio is not None and (sample_rate is None or sample_rate <= 0):
        raise ValueError(f"sample_rate must be positive when audio is given, got {sample_rate}")
    if truth is not None:
        truth_fps = float(truth.get("fps", fps))
        if abs(truth_fps - fps) > 1e-3:
            raise ValueError(f"ground truth is at {truth_fps} fps but the video is at {fps} fps; resample first")
    num_frames = frames.shape[0]
    result: dict[str, Any] = {
        "video": {
            "frames": num_frames,
            "fps": float(fps),
            "seconds": num_frames / fps,
            "height": int(frames.shape[1]),
            "width": int(frames.shape[2]),
        }
    }
    # 2. world-specific: sync and motion from the pixel estimators
    if truth is None:
        result["sync"] = {"available": False, "reason": NEEDS_TRUTH}
        result["motion"] = {"available": False, "reason": NEEDS_TRUTH}
    else:
        measured = measure_faces(frames)
        if audio is None:
            result["sync"] = {"available": False, "reason": "needs the audio track"}
        else:
            envelope = speech_envelope(audio, int(sample_rate), fps, num_frames)
            result["sync"] = sync_metric(measured.mouth_open, envelope, fps, truth, max_lag)
        pose = {"tx": measured.tx, "ty": measured.ty, "roll": measured.roll}
        result["motion"] = motion_metric(pose, fps, truth)
        result["motion"]["valid_frames"] = float(measured.valid.mean())
    # 3. generic: drift, seams, smoothness
    if reference is None:
        for section in ("identity_drift", "identity_fidelity"):
            result[section] = {"available": False, "reason": "needs a reference image"}
    else:
        result["identity_drift"] = identity_drift(frames, reference, fps)
        result["identity_fidelity"] = identity_fidelity(frames, reference, fps, box=face_box)
    changes = _frame_changes(frames)
    result["seam_jitter"] = seam_jitter(frames, clip_length, changes=changes[0])
    result["smoothness"] = motion_smoothness(frames, changes=changes)
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_report(result: dict) -> str:
    """A readable multi-line summary of an `evaluate_video` result."""
    video = result["video"]
    lines = [
        f"video: {video['frames']} frames, {video['fps']:.3g} fps, {video['seconds']:.2f} s, "
        f"{video['width']}x{video['height']}"
    ]
    for section in ("sync", "motion", "identity_drift", "identity_fidelity", "seam_jitter", "smoothness"):
        data = result.get(section, {})
        if not data.get("available"):
            lines.append(f"{section}: n/a ({data.get('reason', 'not computed')})")
            continue
        items = [f"{k}={_fmt(v)}" for k, v in data.items() if k not in ("available", "windows", "seconds")]
        lines.append(f"{section}: " + ", ".join(items))
    return "\n".join(lines)
