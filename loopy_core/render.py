"""Render a talking video to an mp4: load the model and its audio encoder, check every input before any work, stream
the pipeline's clips into the video writer with a progress bar. Used by `loopy generate` and `loopy demo`.

Nothing half-written is left at the output path: the writer renders into a temp file and renames it when complete.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .pipeline import GenerationOptions, LoopyPipeline, make_scheduler

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SILENCE_PEAK = 1e-4  # audio whose peak stays below this is treated as silent


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def audio_encoder_search_paths(name: str, checkpoint: str | os.PathLike | None = None) -> list[Path]:
    """Folders where the audio encoder `name` is looked for when none is given explicitly."""
    paths = []
    if os.environ.get("LOOPY_AUDIO_ENCODER_DIR"):
        paths.append(Path(os.environ["LOOPY_AUDIO_ENCODER_DIR"]) / name)
    if checkpoint is not None:
        paths.append(Path(checkpoint).resolve().parent / name)
    paths.append(Path.cwd() / "models" / "audio_encoders" / name)
    return paths


def load_audio_encoder(config, checkpoint=None, path=None, device="cpu", dtype=torch.float32):
    """The model's wav2vec2: `path` if given, else the one embedded in the checkpoint, else found by name."""
    from .audio import load_wav2vec2
    from .checkpoint import load_embedded_audio_encoder

    if config.audio.kind == "logmel":
        return None  # weight-free features
    if path is not None:
        return load_wav2vec2(path, device, dtype)
    if checkpoint is not None:
        encoder = load_embedded_audio_encoder(checkpoint, device, dtype)
        if encoder is not None:
            return encoder
    candidates = audio_encoder_search_paths(config.audio.encoder, checkpoint)
    for folder in candidates:
        if (folder / "config.json").is_file():
            return load_wav2vec2(folder, device, dtype)
    raise FileNotFoundError(
        f"No audio encoder found: this model uses {config.audio.encoder!r} (a transformers wav2vec2 folder); looked in "
        + ", ".join(str(p) for p in candidates)
        + ". Pass --audio-encoder DIR or set LOOPY_AUDIO_ENCODER_DIR, or embed it in the checkpoint "
        "(`loopy init --audio-encoder DIR`)."
    )


def load_pipeline(model_path, base=None, audio_encoder=None, device=None, dtype="fp32") -> LoopyPipeline:
    from .checkpoint import load_checkpoint

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    device = resolve_device(device)
    model = load_checkpoint(model_path, device=device, dtype=DTYPES[dtype], base=base)
    encoder = load_audio_encoder(model.config, model_path, audio_encoder, device, DTYPES[dtype])
    return LoopyPipeline(model, encoder)


def check_audio(waveform: np.ndarray, sample_rate: int, max_seconds: float | None) -> float:
    """Refuse audio that can't make a video, before any work; returns its duration in seconds."""
    if waveform.size == 0 or waveform.shape[-1] == 0:
        raise ValueError("the audio is empty (0 samples)")
    duration = waveform.shape[-1] / sample_rate
    if max_seconds is not None and duration > max_seconds:
        raise ValueError(
            f"the audio is {duration:.1f} s long, over the limit of {max_seconds:g} s; raise it with --max-seconds"
        )
    if not np.isfinite(waveform).all():
        raise ValueError(f"the audio has {int((~np.isfinite(waveform)).sum())} NaN or infinite samples")
    if np.abs(waveform).max() < SILENCE_PEAK:
        raise ValueError("the audio is silent (peak below -80 dBFS); give a speech recording")
    return duration


def render_video(
    pipeline: LoopyPipeline,
    image: Any,
    waveform: np.ndarray,
    sample_rate: int,
    out: str | os.PathLike,
    options: GenerationOptions | None = None,
    max_seconds: float | None = 600.0,
    progress: bool = True,
    cancel: Callable[[], bool] | None = None,
    fps: float | None = None,
    crop: str = "none",
    desc: str = "loopy",
) -> dict:
    """Generate the video for `image` + `waveform` and write it, with the input audio, to `out` (H.264 + AAC).

    `crop="auto"`: detect the face, generate on a square crop around it and paste every clip back into the original
    image, colour-matched with one estimate for the whole video (the video then has the image's size, rounded down
    to even width and height; `result["crop"]` is the `CropInfo`, `found=False` for the centre-square fallback);
    `"none"`: the centre square at the model's resolution (`result["crop"]` is None). `desc` labels the progress
    bar."""
    from tqdm import tqdm

    from .image import prepare_reference, to_rgb_float
    from .video import VideoWriter

    options = options or GenerationOptions()
    # 1. check everything first
    options.check()
    if crop not in ("auto", "none"):
        raise ValueError(f"crop must be 'auto' or 'none', got {crop!r}")
    make_scheduler(options.scheduler, pipeline.config.noise)
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"the output must be an .mp4 file, got {str(out)!r}")
    if not out.resolve().parent.is_dir():
        raise FileNotFoundError(f"the output folder {str(out.resolve().parent)!r} does not exist")
    waveform = np.atleast_2d(np.asarray(waveform, dtype=np.float32))
    check_audio(waveform, sample_rate, max_seconds)
    prepare_reference(image, pipeline.config.resolution)
    paste, info = None, None
    if crop == "auto":
        from .face import colour_match, face_crop_info, paste_back
        from .face import crop as crop_image

        original = to_rgb_float(image)
        info = face_crop_info(original)
        logger.info("face crop: %s square at (%d, %d), %d px", "face" if info.found else "centre", info.left,
                    info.top, info.side)
        image = crop_image(original, info, pipeline.config.resolution).numpy()
        even_h, even_w = info.height // 2 * 2, info.width // 2 * 2
        match = None

        def paste(frames):  # the colour match is estimated on the first clip and kept: no jump between clips
            nonlocal match
            if match is None:
                match = colour_match(original, frames, info)
            return paste_back(original, frames, info, match=match)[:, :even_h, :even_w]
    # 2. audio features once
    fps = fps or pipeline.config.fps
    audio = pipeline.encode_audio(waveform, sample_rate, fps, max_seconds, streaming=True)
    clips = math.ceil(audio.num_frames / pipeline.config.frames_per_clip)
    # 3. stream the clips
    steps = options.steps or pipeline.config.guidance.steps
    bar = tqdm(total=clips * steps, unit="step", disable=not progress, desc=desc)

    def on_step(info: dict) -> None:
        bar.set_postfix_str(f"clip {info['clip'] + 1}/{info['clips']}")
        bar.update(1)

    mux = waveform if waveform.shape[0] <= 2 else waveform.mean(axis=0, keepdims=True)
    start = time.perf_counter()
    try:
        with VideoWriter(out, fps=fps, audio=mux, sample_rate=sample_rate) as writer:
            for frames in pipeline.clips(image, audio, options, callback=on_step, cancel=cancel):
                writer.write(frames if paste is None else paste(frames))
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    return {"path": str(out), "frames": audio.num_frames, "fps": fps, "seconds": audio.duration_s,
            "elapsed_s": elapsed, "crop": info}
