"""The procedural talking-face world (DESIGN.md section 7): speech, faces, ground-truth dynamics and datasets.

- `speech`: babble synthesiser, espeak-ng speech, `speech_envelope` (the per-frame loudness the mouth follows);
- `face`: `FaceIdentity`, `FaceState` and the torch renderer `render_faces`;
- `world`: ground-truth dynamics (`make_dynamics`), `render_video`, and `make_sample(seed, seconds, size)`;
- `dataset`: `write_dataset` / `read_index` / `read_truth` for the on-disk format read by training and `loopy eval`.
"""

from __future__ import annotations

from .dataset import FORMAT, read_index, read_truth, write_dataset
from .face import APPEARANCES, FaceIdentity, FaceState, neutral_face, render_faces
from .speech import SAMPLE_RATE, babble, espeak_available, espeak_speech, make_speech, speech_envelope
from .world import SyntheticSample, make_dynamics, make_sample, render_video

__all__ = [
    "FORMAT",
    "SAMPLE_RATE",
    "FaceIdentity",
    "FaceState",
    "SyntheticSample",
    "babble",
    "espeak_available",
    "espeak_speech",
    "make_dynamics",
    "make_sample",
    "make_speech",
    "neutral_face",
    "read_index",
    "read_truth",
    "render_faces",
    "render_video",
    "speech_envelope",
    "write_dataset",
]
