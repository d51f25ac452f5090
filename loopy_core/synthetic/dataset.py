"""Writing and reading synthetic talking-face datasets (`loopy synth`): mp4 + ground-truth JSON + reference PNG.

Layout of a dataset folder (format tag `loopy-synthetic-v1`; all paths relative to the folder)::

    index.json        {"format": "loopy-synthetic-v1", "fps": 25.0, "size": 64, "seconds": 10.0, "seed": 0,
                       "speech": "babble", "sample_rate": 16000,
                       "videos": [{"id": "000000", "video": "000000.mp4", "truth": "000000.json",
                                   "reference": "000000.png", "num_frames": 250, "seed": 123456789}, ...]}
    000000.mp4        H.264 yuv420p video, size x size at fps, with the speech as a mono AAC track
    000000.png        the identity's neutral portrait (mouth closed, eyes open, head centred), size x size RGB
    000000.json       the ground truth, below

`<id>.json`::

    {"format": "loopy-synthetic-v1", "id": "000000",
     "fps": 25.0, "num_frames": 250, "size": 64, "sample_rate": 16000, "seed": 123456789,
     "mouth_lag_frames": 1,
     "speech": {"source": "babble" | "espeak", ...source details (voice, rate, pitch, sentences | f0_hz, ...)},
     "identity": {"skin": [r, g, b], "hair": [...], "background": [...], "face_width": ..., "face_aspect": ...,
                  "squareness": ..., "chin_taper": ..., "hair_volume": ..., "eye_spacing": ..., "eye_size": ...,
                  "mouth_width": ...},
     "sway": {"period_s": ..., "phase": ..., "amplitude": ..., "roll_amplitude": ..., "yaw_amplitude": ...,
              "ty_phase": ..., "roll_phase": ..., "yaw_phase": ...},
     "frames": {"mouth_open": [F floats 0..1], "mouth_width": [F], "blink": [F 0..1], "tx": [F], "ty": [F],
                "roll": [F radians], "yaw": [F], "envelope": [F 0..1], "activity": [F 0..1]}}

Units follow `loopy_core.synthetic.face`: tx, ty are offsets of the head pivot from its neutral position in
fractions of the image size (x right, y down); roll is clockwise on screen; yaw is the renderer's hint units.
Index k of every per-frame list is video frame k. The same seed always gives the same dataset (per-video seeds come
from `np.random.SeedSequence(seed)`). Files are written atomically, the index last.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from ..video import VideoWriter, make_temp_path
from .face import APPEARANCES
from .speech import SPEECH_KINDS, espeak_available
from .world import child_seeds, make_sample

logger = logging.getLogger(__name__)

FORMAT = "loopy-synthetic-v1"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [round(float(v), 6) for v in value.reshape(-1)]
    if isinstance(value, (np.floating, float)):
        return round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_json(path: str, data: dict) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    tmp = make_temp_path(path, ".json")
    try:
        with open(tmp, "w") as f:
            json.dump(_jsonable(data), f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _save_png(path: str, image) -> None:
    from PIL import Image

    array = (image.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    tmp = make_temp_path(path, ".png")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_dataset(
    out_dir: str | os.PathLike,
    videos: int,
    seconds: float,
    size: int = 64,
    seed: int = 0,
    speech: str = "babble",
    fps: float = 25.0,
    crf: int = 18,
    appearance: str = "plain",
    **espeak_options,
) -> dict:
    """Render `videos` synthetic samples into `out_dir` (see the module docstring); returns the index dict.
    `appearance` is the identities' space (`plain` or `wide`, `face.FaceIdentity.random`); `espeak_options`
    (languages, variants) restrict the espeak voices."""
    if int(videos) < 1:
        raise ValueError(f"videos must be >= 1, got {videos}")
    if not np.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a positive number, got {seconds}")
    if int(size) < 16 or int(size) % 2:
        raise ValueError(f"size must be an even integer >= 16 (H.264 needs even sizes), got {size}")
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
    if speech not in SPEECH_KINDS:
        raise ValueError(f"speech must be one of {SPEECH_KINDS}, got {speech!r}")
    if speech == "espeak" and not espeak_available():
        raise FileNotFoundError(
            "espeak-ng is not on PATH: install it (apt-get install espeak-ng) or use --speech babble"
        )
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    index = {
        "format": FORMAT,
        "fps": float(fps),
        "size": int(size),
        "seconds": float(seconds),
        "seed": int(seed),
        "speech": speech,
        "appearance": appearance,
        "sample_rate": None,
        "videos": [],
    }
    for i, video_seed in enumerate(child_seeds(seed, int(videos))):
        vid = f"{i:06d}"
        sample = make_sample(video_seed, seconds, int(size), fps=fps, speech=speech, appearance=appearance,
                             **espeak_options)
        with VideoWriter(os.path.join(out_dir, f"{vid}.mp4"), fps, sample.audio, sample.sample_rate, crf) as writer:
            writer.write(sample.frames)
        _save_png(os.path.join(out_dir, f"{vid}.png"), sample.reference)
        _write_json(os.path.join(out_dir, f"{vid}.json"), {"format": FORMAT, "id": vid, **sample.truth})
        index["sample_rate"] = sample.sample_rate
        index["videos"].append(
            {
                "id": vid,
                "video": f"{vid}.mp4",
                "truth": f"{vid}.json",
                "reference": f"{vid}.png",
                "num_frames": sample.truth["num_frames"],
                "seed": video_seed,
            }
        )
        logger.info("synthetic video %s: %d frames, speech %s", vid, sample.truth["num_frames"], speech)
    _write_json(os.path.join(out_dir, "index.json"), index)
    return index


def read_index(out_dir: str | os.PathLike) -> dict:
    """Load `index.json` of a dataset folder, checking its format tag."""
    path = os.path.join(os.fspath(out_dir), "index.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no synthetic dataset index: {path} not found (write one with `loopy synth`)")
    with open(path) as f:
        index = json.load(f)
    if index.get("format") != FORMAT:
        raise ValueError(f"{path} has format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def read_truth(path: str | os.PathLike) -> dict:
    """Load one `<id>.json` ground truth; per-frame tracks come back as float32 numpy arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    try:
        with open(path) as f:
            truth = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"ground-truth file is not valid JSON: {path}: {e}") from e
    if not isinstance(truth, dict) or not isinstance(truth.get("frames"), dict):
        raise ValueError(f"ground-truth file {path} has no 'frames' section; is it a `loopy synth` <id>.json?")
    truth["frames"] = {k: np.asarray(v, dtype=np.float32) for k, v in truth["frames"].items()}
    return truth
