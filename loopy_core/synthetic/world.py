"""Ground-truth dynamics of the synthetic talking face, and whole samples (frames + audio + truth) from one seed.

The dynamics carry a long-term dependency on purpose (DESIGN.md section 7): a model that sees more history can
predict them better.

- **Mouth**: `mouth_open[t] = smooth(envelope)[t - MOUTH_LAG_FRAMES]`, where `envelope` is
  `speech.speech_envelope` of the audio at the video fps and `smooth` is a [1/4, 1/2, 1/4] kernel; the mouth
  narrows as it opens, `mouth_width = 1 - 0.25 * mouth_open`.
- **Head sway**: one oscillator per video, `theta(t) = 2 pi t / P + phi`, with the period P in 3-6 s and the phase
  phi drawn once per video, so 12 frames (0.48 s) can't reveal them and 5 s of history can. Its gain
  `g(t) = 0.35 + 0.65 * activity(t)` rises with the speech activity of the last `ACTIVITY_SECONDS` (the fraction of
  frames whose envelope exceeds `ACTIVITY_THRESHOLD`). With per-video amplitudes A (image fractions), R (radians),
  Y (yaw units) and fixed phase offsets:
  `tx = A g sin(theta)`, `ty = 0.5 A g sin(2 theta + phi_y)` (a figure-eight nod), `roll = R g sin(theta + phi_r)`,
  `yaw = Y g sin(theta + phi_w)`.
- **Blinks**: at random intervals of 2-5.5 s (sometimes a quick double blink), each lasting 0.2 s.

`make_sample(seed, seconds, size)` draws speech, an identity and the dynamics from independent child seeds of
`seed` and renders the frames. Its `truth` dict is what `dataset.write_dataset` stores as JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .face import FaceIdentity, FaceState, neutral_face, render_faces
from .speech import SAMPLE_RATE, make_speech, speech_envelope

MOUTH_LAG_FRAMES = 1  # the mouth follows the speech envelope this many frames later
ACTIVITY_SECONDS = 3.0  # window of past speech whose activity raises the sway amplitude
ACTIVITY_THRESHOLD = 0.15  # envelope level above which a frame counts as speaking
SWAY_PERIOD_RANGE = (3.0, 6.0)  # seconds
TRUTH_FRAME_KEYS = ("mouth_open", "mouth_width", "blink", "tx", "ty", "roll", "yaw", "envelope", "activity")


def speech_activity(envelope: np.ndarray, fps: float, seconds: float = ACTIVITY_SECONDS) -> np.ndarray:
    """Causal fraction of speaking frames over the last `seconds` (fewer at the start of the video): [F] in 0..1."""
    speaking = (np.asarray(envelope) > ACTIVITY_THRESHOLD).astype(np.float64)
    window = max(1, int(round(seconds * fps)))
    csum = np.concatenate([[0.0], np.cumsum(speaking)])
    idx = np.arange(1, len(speaking) + 1)
    start = np.maximum(idx - window, 0)
    return (csum[idx] - csum[start]) / (idx - start)


def mouth_from_envelope(envelope: np.ndarray, lag: int = MOUTH_LAG_FRAMES) -> np.ndarray:
    """The ground-truth mouth opening: the envelope smoothed by [1/4, 1/2, 1/4] and delayed by `lag` frames."""
    env = np.asarray(envelope, dtype=np.float64)
    padded = np.pad(env, 1, mode="edge")
    smooth = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    return np.clip(np.concatenate([np.zeros(lag), smooth])[: len(env)], 0.0, 1.0)


def blink_track(num_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure per frame (0 open, 1 closed): blinks of 0.2 s at random 2-5.5 s intervals."""
    blink = np.zeros(num_frames)
    n = max(3, int(round(0.2 * fps)))
    profile = np.sin(np.pi * (np.arange(n) + 0.5) / n)
    t = rng.uniform(0.3, 3.0)
    while t * fps < num_frames:
        start = int(round(t * fps))
        seg = blink[start : start + n]
        seg[:] = np.maximum(seg, profile[: len(seg)])
        t += 0.45 if rng.random() < 0.12 else rng.uniform(2.0, 5.5)
    return blink


def make_dynamics(envelope: np.ndarray, fps: float, rng: np.random.Generator) -> tuple[FaceState, dict]:
    """Face state for every frame from the speech envelope [F]: (FaceState, sway parameters dict)."""
    num_frames = len(envelope)
    t = np.arange(num_frames) / fps
    # 1. mouth
    mouth = mouth_from_envelope(envelope)
    # 2. head sway: a per-video oscillator whose gain follows recent speech activity
    activity = speech_activity(envelope, fps)
    sway = {
        "period_s": float(rng.uniform(*SWAY_PERIOD_RANGE)),
        "phase": float(rng.uniform(0.0, 2 * math.pi)),
        "amplitude": float(rng.uniform(0.02, 0.04)),
        "roll_amplitude": float(rng.uniform(0.05, 0.1)),
        "yaw_amplitude": float(rng.uniform(0.15, 0.3)),
        "ty_phase": float(rng.uniform(0.0, 2 * math.pi)),
        "roll_phase": float(rng.uniform(-0.6, 0.6)),
        "yaw_phase": float(rng.uniform(math.pi / 2 - 0.6, math.pi / 2 + 0.6)),
    }
    theta = 2 * math.pi * t / sway["period_s"] + sway["phase"]
    gain = 0.35 + 0.65 * activity
    state = FaceState(
        mouth_open=mouth,
        mouth_width=1.0 - 0.25 * mouth,
        blink=blink_track(num_frames, fps, rng),
        tx=sway["amplitude"] * gain * np.sin(theta),
        ty=0.5 * sway["amplitude"] * gain * np.sin(2 * theta + sway["ty_phase"]),
        roll=sway["roll_amplitude"] * gain * np.sin(theta + sway["roll_phase"]),
        yaw=sway["yaw_amplitude"] * gain * np.sin(theta + sway["yaw_phase"]),
    )
    return state, {**sway, "activity": activity}


def render_video(
    identity: FaceIdentity, state: FaceState, size: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, dict]:
    """Render `state` for `identity`: (frames float [T, size, size, 3] in 0..1, per-frame truth dict of [T] arrays)."""
    frames = render_faces(identity, state, size, device=device)
    truth = {name: np.asarray(getattr(state, name), dtype=np.float32) for name in TRUTH_FRAME_KEYS[:7]}
    return frames, truth


@dataclass
class SyntheticSample:
    """One synthetic talking-face video: frames float [T, H, W, 3], mono audio float32 [N] at `sample_rate`, and
    `truth` (the JSON-ready ground truth, see `dataset`), plus the identity and face state that made it."""

    frames: torch.Tensor
    audio: np.ndarray
    sample_rate: int
    fps: float
    truth: dict
    identity: FaceIdentity
    state: FaceState

    @property
    def reference(self) -> torch.Tensor:
        """The identity's neutral portrait at the video's size: float [H, W, 3]."""
        return neutral_face(self.identity, self.frames.shape[1])


def child_seeds(seed: int, count: int) -> list[int]:
    """`count` independent 32-bit seeds derived from `seed`."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed)).spawn(count)]


def make_sample(
    seed: int,
    seconds: float,
    size: int = 64,
    fps: float = 25.0,
    speech: str = "babble",
    device: str | torch.device = "cpu",
    appearance: str = "plain",
    **espeak_options,
) -> SyntheticSample:
    """A whole synthetic sample from one seed: speech, identity, dynamics, rendered frames. Deterministic per seed.
    `appearance` picks the identity's space (`plain` or `wide`, see `face`); speech and dynamics do not depend on it."""
    if not np.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a positive number, got {seconds}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    speech_seed, identity_seed, dynamics_seed = child_seeds(seed, 3)
    # 1. audio, exactly as long as the whole frames
    num_frames = max(1, int(round(seconds * fps)))
    num_samples = int(round(num_frames * SAMPLE_RATE / fps))
    audio, speech_info = make_speech(speech, num_samples / SAMPLE_RATE, speech_seed, **espeak_options)
    audio = np.pad(audio, (0, max(0, num_samples - len(audio))))[:num_samples]
    # 2. identity and dynamics
    identity = FaceIdentity.random(np.random.default_rng(identity_seed), appearance)
    envelope = speech_envelope(audio, SAMPLE_RATE, fps, num_frames)
    state, sway = make_dynamics(envelope, fps, np.random.default_rng(dynamics_seed))
    # 3. pixels and truth
    frames, per_frame = render_video(identity, state, size, device=device)
    per_frame["envelope"] = envelope
    per_frame["activity"] = sway.pop("activity").astype(np.float32)
    truth = {
        "fps": float(fps),
        "num_frames": num_frames,
        "size": int(size),
        "sample_rate": SAMPLE_RATE,
        "seed": int(seed),
        "mouth_lag_frames": MOUTH_LAG_FRAMES,
        "speech": speech_info,
        "identity": identity.to_dict(),
        "sway": sway,
        "frames": per_frame,
    }
    return SyntheticSample(frames, audio, SAMPLE_RATE, float(fps), truth, identity, state)
