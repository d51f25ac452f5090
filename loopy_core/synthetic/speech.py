"""Speech for the synthetic world: a built-in babble synthesiser, espeak-ng speech, and the frame-rate envelope.

Two sources, both mono float32 at `SAMPLE_RATE` (16 kHz, what wav2vec2 wants), loudness-normalised to the same RMS:

- `babble`: procedural speech-like sound with no outside dependency. Phrases of 3-14 syllables at 3.5-6
  syllables/s, separated by pauses (sometimes long ones, so speech activity varies over seconds). Each syllable is a
  consonant onset (none, plosive burst or fricative noise) and a vowel: a harmonic source on a pitch contour
  (declination over the phrase, an accent per syllable, slight vibrato) shaped by three formant resonances
  interpolated between vowel targets (standard adult formant averages, scaled by a per-speaker vocal-tract factor).
- `espeak_speech`: real synthetic speech from the `espeak-ng` program (a Debian package), random sentences from
  small word lists in several languages, with a random voice variant, rate and pitch per utterance.

`speech_envelope` turns any waveform into the per-video-frame loudness the synthetic mouth follows: the RMS of the
samples heard during each frame, divided by a robust per-utterance peak (95th percentile of the active frames) and
clipped to 0..1. It is used both to build the ground truth and to score lip sync (`loopy_core.eval`).
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
TARGET_RMS = 0.08  # loudness of every synthetic utterance, measured over its active frames
SPEECH_KINDS = ("babble", "espeak")

# Formant targets F1, F2, F3 in Hz (classic adult averages).
_VOWELS = {
    "a": (730.0, 1090.0, 2440.0),
    "ae": (660.0, 1720.0, 2410.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
    "er": (490.0, 1350.0, 1690.0),
}
_BANDWIDTHS = (90.0, 110.0, 170.0)


def _check_seconds(seconds: float) -> float:
    if not np.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a positive number, got {seconds}")
    return float(seconds)


def normalize_loudness(waveform: np.ndarray, target_rms: float = TARGET_RMS, sample_rate: int = SAMPLE_RATE):
    """Scale a mono waveform so that its RMS over active 20 ms frames is `target_rms`; silence stays silence."""
    hop = max(1, sample_rate // 50)
    n = len(waveform) // hop * hop
    if n == 0:
        return waveform.astype(np.float32)
    rms = np.sqrt(np.mean(waveform[:n].reshape(-1, hop) ** 2, axis=1))
    active = rms > 0.05 * rms.max() if rms.max() > 0 else np.zeros_like(rms, bool)
    if not active.any():
        return waveform.astype(np.float32)
    level = np.sqrt(np.mean(rms[active] ** 2))
    return np.clip(waveform * (target_rms / level), -0.99, 0.99).astype(np.float32)


def _raised_edges(n: int, attack: int, release: int) -> np.ndarray:
    """A 0..1 envelope of length n with half-cosine attack and release ramps."""
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    if release > 0:
        env[n - release :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 0.5) / release)
    return env


def babble(seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, dict]:
    """Procedural speech-like babble: (float32 waveform [N], info dict). Deterministic per seed."""
    seconds = _check_seconds(seconds)
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    # 1. speaker: pitch, vocal-tract scale, speaking rate
    f0_base = float(rng.uniform(95.0, 230.0))
    tract = float(rng.uniform(0.92, 1.2))
    rate = float(rng.uniform(3.5, 6.0))
    # 2. timeline of syllables: per-sample vowel amplitude, pitch factor, formant targets, consonant noise
    amp = np.zeros(n)
    noise_amp = np.zeros(n)
    pitch = np.ones(n)
    centres, targets = [0], [np.array(_VOWELS["er"]) * tract]
    t = int(rng.uniform(0.1, 0.6) * sample_rate)
    vowel_names = list(_VOWELS)
    while t < n:
        n_syll = int(rng.integers(3, 15))
        phrase_start = t
        for _ in range(n_syll):
            dur = int(sample_rate / rate * rng.uniform(0.7, 1.3))
            onset = rng.choice(3, p=[0.35, 0.35, 0.3])  # none, plosive, fricative
            cons = int(rng.uniform(0.03, 0.07) * sample_rate) if onset else 0
            if onset == 1:  # plosive: closure gap, then a short burst
                burst = int(0.012 * sample_rate)
                noise_amp[t + cons - burst : t + cons] = rng.uniform(0.3, 0.6)
            elif onset == 2:
                noise_amp[t : t + cons] = rng.uniform(0.15, 0.35) * _raised_edges(len(noise_amp[t : t + cons]), 40, 40)
            v0, v1 = t + cons, t + dur
            if v1 > v0:
                seg = amp[v0:v1]
                seg[:] = rng.uniform(0.45, 1.0) * _raised_edges(len(seg), int(0.25 * (v1 - v0)), int(0.35 * (v1 - v0)))
                # pitch: declination over the phrase, an accent on some syllables
                progress = (np.arange(v0, v1) - phrase_start) / max(1, n_syll * sample_rate / rate)
                accent = rng.uniform(1.0, 1.25) if rng.random() < 0.3 else 1.0
                pitch[v0 : min(v1, n)] = (1.12 - 0.25 * progress[: len(seg)]) * accent
                centres.append((v0 + v1) // 2)
                targets.append(np.array(_VOWELS[vowel_names[rng.integers(len(vowel_names))]]) * tract)
            t += dur
        t += int(rng.uniform(0.25, 1.2) * sample_rate)
        if rng.random() < 0.2:  # a long pause, so speech activity varies on the scale of seconds
            t += int(rng.uniform(1.0, 2.5) * sample_rate)
    # 3. smooth trajectories: formants interpolated between syllable targets, vibrato on the pitch
    samples = np.arange(n)
    centres_arr, targets_arr = np.array(centres), np.stack(targets)
    formants = [np.interp(samples, centres_arr, targets_arr[:, i]) for i in range(3)]
    vibrato = 1.0 + 0.012 * np.sin(2 * np.pi * rng.uniform(4.5, 6.0) * samples / sample_rate)
    f0 = f0_base * pitch * vibrato
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    # 4. harmonic source shaped by the formant resonances (Lorentzian gain around each formant), in chunks
    voiced = np.zeros(n)
    n_harm = int(0.45 * sample_rate / (f0_base * 0.8))
    k = np.arange(1, n_harm + 1)[:, None]  # harmonic number, [K, 1]
    for s in range(0, n, 16000):
        sl = slice(s, min(n, s + 16000))
        if not amp[sl].any():
            continue
        freq = k * f0[sl][None]  # [K, n]
        gain = sum(
            1.0 / (1.0 + ((freq - formants[i][sl][None]) / (0.5 * _BANDWIDTHS[i])) ** 2) * (0.9**i) for i in range(3)
        )
        gain = gain / k**0.9 * (freq < 0.45 * sample_rate)
        voiced[sl] = (gain * np.sin(k * phase[sl][None])).sum(0) * amp[sl]
    hiss = np.diff(rng.standard_normal(n + 1)) * noise_amp * 0.5
    wave = normalize_loudness(voiced + hiss, sample_rate=sample_rate)
    info = {
        "source": "babble",
        "f0_hz": round(f0_base, 2),
        "vocal_tract": round(tract, 3),
        "syllable_rate": round(rate, 3),
    }
    return wave, info


# ---------------------------------------------------------------------------------------------------------------
# espeak-ng
# ---------------------------------------------------------------------------------------------------------------
_WORDS = {
    "en-us": "the a cat dog sun house river little green quickly never always people morning window water "
    "bright tomorrow garden music yellow paper running story simple happy",
    "en-gb": "the my old road rain tea city letter summer evening table friend better nothing quiet over "
    "under open garden autumn pocket kettle number",
    "de": "der die das hund katze sonne haus wasser morgen immer schnell kleine grosse garten musik "
    "heute abend freund buch fenster strasse",
    "fr": "le la chat chien soleil maison eau matin toujours petit grand jardin musique demain soir "
    "ami livre fenetre rue heureux",
    "es": "el la gato perro sol casa agua manana siempre pequeno grande jardin musica noche amigo libro "
    "ventana calle feliz rapido",
    "it": "il la gatto cane sole casa acqua mattina sempre piccolo grande giardino musica sera amico "
    "libro finestra strada felice",
}
_VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f4")


def espeak_available() -> bool:
    """True when the `espeak-ng` program is on PATH."""
    return shutil.which("espeak-ng") is not None


def random_sentence(rng: np.random.Generator, language: str = "en-us") -> str:
    """A random sentence of 4-10 words from a small word list of `language` (one of the keys of the word lists)."""
    if language not in _WORDS:
        raise ValueError(f"language must be one of {sorted(_WORDS)}, got {language!r}")
    words = _WORDS[language].split()
    picked = [words[i] for i in rng.integers(0, len(words), int(rng.integers(4, 11)))]
    return " ".join(picked).capitalize() + "."


def espeak_say(
    text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Speak `text` with espeak-ng; returns a float32 mono waveform at `sample_rate`."""
    import soundfile as sf
    import torch
    import torchaudio

    if not espeak_available():
        raise FileNotFoundError(
            "espeak-ng is not on PATH: install it (apt-get install espeak-ng) or use speech='babble'"
        )
    cmd = ["espeak-ng", "--stdout", "-v", voice, "-s", str(int(rate)), "-p", str(int(pitch)), text]
    result = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    if result.returncode != 0 or not result.stdout:
        raise ValueError(f"espeak-ng failed for voice {voice!r}: {result.stderr.decode(errors='replace').strip()}")
    data, sr = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(1)))
    if sr != sample_rate:
        wave = torchaudio.functional.resample(wave, sr, sample_rate)
    return wave.numpy().astype(np.float32)


LANGUAGES = tuple(sorted(_WORDS))
VARIANTS = _VARIANTS


def espeak_speech(
    seconds: float,
    seed: int = 0,
    sample_rate: int = SAMPLE_RATE,
    languages: tuple[str, ...] | None = None,
    variants: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, dict]:
    """Random sentences from one random espeak-ng voice, with pauses, cut to `seconds`: (waveform [N], info).

    `languages` / `variants` restrict the draw (e.g. to hold a language or voice out of a training set)."""
    seconds = _check_seconds(seconds)
    languages = tuple(languages or LANGUAGES)
    variants = tuple(variants if variants is not None else _VARIANTS)
    unknown = sorted(set(languages) - set(_WORDS)) + sorted(set(variants) - set(_VARIANTS))
    if unknown or not languages or not variants:
        raise ValueError(f"unknown or empty languages/variants {unknown}; languages: {LANGUAGES}, variants: {_VARIANTS}")
    rng = np.random.default_rng(seed)
    language = sorted(languages)[rng.integers(len(languages))]
    voice = language + variants[rng.integers(len(variants))]
    rate, pitch = int(rng.integers(130, 191)), int(rng.integers(25, 76))
    n = int(round(seconds * sample_rate))
    pieces = [np.zeros(int(rng.uniform(0.1, 0.5) * sample_rate), np.float32)]
    sentences = []
    while sum(len(p) for p in pieces) < n:
        sentences.append(random_sentence(rng, language))
        pieces.append(espeak_say(sentences[-1], voice, rate, pitch, sample_rate))
        pieces.append(np.zeros(int(rng.uniform(0.2, 1.0) * sample_rate), np.float32))
    wave = normalize_loudness(np.concatenate(pieces)[:n], sample_rate=sample_rate)
    info = {"source": "espeak", "voice": voice, "rate": rate, "pitch": pitch, "sentences": sentences}
    return wave, info


def make_speech(
    kind: str, seconds: float, seed: int = 0, sample_rate: int = SAMPLE_RATE, **espeak_options
) -> tuple[np.ndarray, dict]:
    """Speech of the given kind ('babble' or 'espeak'): (float32 waveform [N], info dict with 'source').
    `espeak_options` (languages, variants) go to `espeak_speech`."""
    if kind == "babble":
        return babble(seconds, seed, sample_rate)
    if kind == "espeak":
        return espeak_speech(seconds, seed, sample_rate, **espeak_options)
    raise ValueError(f"speech must be one of {SPEECH_KINDS}, got {kind!r}")


def speech_envelope(waveform: Any, sample_rate: int, fps: float = 25.0, num_frames: int | None = None) -> np.ndarray:
    """Per-video-frame loudness in 0..1: float32 [F] (see the module docstring).

    Args:
        waveform: [N] or [C, N] float samples (channels are averaged).
        sample_rate: samples per second of `waveform`.
        fps: video frame rate; frame i hears samples [i * sr / fps, (i + 1) * sr / fps).
        num_frames: F; defaults to the number of whole frames in the audio. Frames past the audio's end are 0.
    """
    if hasattr(waveform, "detach"):
        waveform = waveform.detach().cpu().numpy()
    wave = np.asarray(waveform, dtype=np.float64)
    if wave.ndim == 2:
        wave = wave.mean(0)
    if wave.ndim != 1:
        raise ValueError(f"waveform must be [N] or [C, N], got shape {tuple(np.shape(waveform))}")
    if sample_rate <= 0 or fps <= 0:
        raise ValueError(f"sample_rate and fps must be positive, got {sample_rate} and {fps}")
    hop = sample_rate / fps
    if num_frames is None:
        num_frames = int(len(wave) // hop)
    bounds = np.round(np.arange(num_frames + 1) * hop).astype(np.int64)
    cumsq = np.concatenate([[0.0], np.cumsum(wave**2)])
    lo, hi = np.minimum(bounds[:-1], len(wave)), np.minimum(bounds[1:], len(wave))
    rms = np.sqrt((cumsq[hi] - cumsq[lo]) / np.maximum(bounds[1:] - bounds[:-1], 1))
    active = rms > 1e-4
    if not active.any():
        return np.zeros(num_frames, np.float32)
    peak = np.percentile(rms[active], 95)
    return np.clip(rms / peak, 0.0, 1.0).astype(np.float32)
