"""Video and audio file I/O: streaming H.264 + AAC mp4 writing, mp4 reading, audio loading and WAV saving.

Layouts (the same as ComfyUI's, without the batch axis):
    frames   [T, H, W, 3]  uint8 0..255, or float 0..1 (numpy or torch; floats are clipped and rounded)
    waveform [C, N]        float32 in -1..1 (a 1-D [N] waveform is taken as mono)

`VideoWriter` streams frames into an mp4 (H.264, yuv420p) and interleaves the AAC audio with them as the video
grows, so memory stays flat however long the video is. The audio track is cut (or padded with silence) to the
video's duration, `num_frames / fps`. The file is written under a temporary name in the target folder and renamed
onto `path` only when the writer closes without error; an exception inside the `with` block, or `abort()`,
deletes the temporary file, so nothing half-written ever sits at `path`.

yuv420p needs even frame sizes: odd widths or heights raise ValueError (crop or pad the frames first) rather than
being silently changed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Sample rates the AAC encoder accepts; other rates are resampled to 48 kHz before muxing.
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)

__all__ = [
    "VideoData",
    "VideoWriter",
    "load_audio",
    "make_temp_path",
    "read_video",
    "resample_frames",
    "save_wav",
    "to_uint8_frames",
]


def to_uint8_frames(frames: Any) -> np.ndarray:
    """Frames as uint8 numpy [T, H, W, 3]: uint8 input passes through, float input (0..1) is clipped and rounded."""
    if hasattr(frames, "detach"):  # torch tensor
        frames = frames.detach().cpu()
        frames = (frames.float() if frames.is_floating_point() else frames).numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3] (or [H, W, 3]), got {tuple(frames.shape)}")
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in 0..1, got dtype {frames.dtype}")
    return np.ascontiguousarray((np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def _as_channels_first(waveform: Any, what: str) -> np.ndarray:
    """A waveform as float32 [C, N]; 1-D input is mono."""
    if hasattr(waveform, "detach"):
        waveform = waveform.detach().cpu().numpy()
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 1:
        waveform = waveform[None]
    if waveform.ndim != 2 or waveform.shape[0] > 8:
        raise ValueError(f"{what} must be [C, N] or [N] with at most 8 channels, got shape {tuple(waveform.shape)}")
    return waveform


def make_temp_path(path: str, suffix: str) -> str:
    """A new empty file beside `path` (same folder, so the final rename is atomic), readable like a normal file."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the final file the usual permissions
    return tmp


def _fps_fraction(fps: float) -> Fraction:
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps}")
    return Fraction(fps).limit_denominator(1001)


class VideoWriter:
    """Streams frames (and optional audio) into an H.264 + AAC mp4; atomic on close (see the module docstring).

    Usage::

        with VideoWriter("out.mp4", fps=25, audio=wave, sample_rate=16000) as writer:
            for clip in clips:
                writer.write(clip)  # [F, H, W, 3] uint8, or float 0..1
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float,
        audio: Any = None,
        sample_rate: int | None = None,
        crf: int = 18,
    ) -> None:
        self.path = os.fspath(path)
        self.fps = _fps_fraction(float(fps))
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"crf must be in 0..51 (lower is better quality), got {crf}")
        self.crf = int(crf)
        self.audio = None
        self.sample_rate = None
        if audio is not None:
            if sample_rate is None or int(sample_rate) <= 0:
                raise ValueError(f"sample_rate must be a positive int when audio is given, got {sample_rate}")
            self.audio = _as_channels_first(audio, "audio")
            if self.audio.shape[0] > 2:
                raise ValueError(f"audio must be mono or stereo, got {self.audio.shape[0]} channels")
            self.sample_rate = int(sample_rate)
            if self.sample_rate not in _AAC_RATES:
                import torch
                import torchaudio

                logger.info("resampling the audio from %d Hz to 48000 Hz for AAC", self.sample_rate)
                resampled = torchaudio.functional.resample(torch.from_numpy(self.audio), self.sample_rate, 48000)
                self.audio, self.sample_rate = resampled.numpy(), 48000
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"output folder does not exist: {folder}")
        self.num_frames = 0
        self._audio_pos = 0
        self._size: tuple[int, int] | None = None
        self._container = None
        self._video_stream = None
        self._audio_stream = None
        self._closed = False
        self._tmp_path = make_temp_path(self.path, ".mp4")

    # context manager -------------------------------------------------------------------------------------------
    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer dropped without close() leaves no temp file behind
        if not getattr(self, "_closed", True):
            try:
                self.abort()
            except Exception:  # interpreter shutdown: modules may already be gone
                pass

    # writing ---------------------------------------------------------------------------------------------------
    def _open(self, height: int, width: int) -> None:
        import av

        if height % 2 or width % 2:
            raise ValueError(
                f"H.264 yuv420p needs even frame sizes, got {width}x{height} (width x height); crop or pad the frames"
            )
        # faststart moves the index to the front at close, so browsers (ComfyUI previews) play while downloading
        self._container = av.open(self._tmp_path, mode="w", format="mp4", options={"movflags": "+faststart"})
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(self.crf)}
        self._video_stream = stream
        if self.audio is not None:
            layout = "mono" if self.audio.shape[0] == 1 else "stereo"
            self._audio_stream = self._container.add_stream("aac", rate=self.sample_rate, layout=layout)
        self._size = (height, width)

    def _mux_audio_until(self, end: int) -> None:
        """Encode audio samples [audio_pos, end), padding with silence past the end of the waveform."""
        import av

        if self._audio_stream is None or end <= self._audio_pos:
            return
        chunk = self.audio[:, self._audio_pos : end]
        if chunk.shape[1] < end - self._audio_pos:
            chunk = np.pad(chunk, ((0, 0), (0, end - self._audio_pos - chunk.shape[1])))
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout=self._audio_stream.layout
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self._audio_pos
        frame.time_base = Fraction(1, self.sample_rate)
        for packet in self._audio_stream.encode(frame):
            self._container.mux(packet)
        self._audio_pos = end

    def write(self, frames: Any) -> None:
        """Append frames [T, H, W, 3] (or one [H, W, 3]): uint8, or float 0..1, numpy or torch."""
        import av

        if self._closed:
            raise ValueError(f"VideoWriter for {self.path} is already closed")
        frames = to_uint8_frames(frames)
        try:
            if self._size is None:
                self._open(frames.shape[1], frames.shape[2])
            if frames.shape[1:3] != self._size:
                raise ValueError(f"frame size changed from {self._size} to {frames.shape[1:3]} (height, width)")
            for image in frames:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = self.num_frames
                frame.time_base = 1 / self.fps
                for packet in self._video_stream.encode(frame):
                    self._container.mux(packet)
                self.num_frames += 1
                if self.audio is not None:
                    self._mux_audio_until(round(self.num_frames * self.sample_rate / self.fps))
        except BaseException:
            self.abort()
            raise

    def close(self) -> None:
        """Flush the encoders and move the finished file onto `path`."""
        if self._closed:
            return
        try:
            if self.num_frames == 0:
                raise ValueError(f"no frames were written to {self.path}")
            for packet in self._video_stream.encode():
                self._container.mux(packet)
            if self._audio_stream is not None:
                for packet in self._audio_stream.encode():
                    self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self._tmp_path, self.path)
            self._closed = True
            logger.info("wrote %s: %d frames at %s fps", self.path, self.num_frames, float(self.fps))
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop everything written so far; `path` is left untouched."""
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the container may be in a broken state; the file is deleted anyway
                pass
            self._container = None
        if os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)


@dataclass
class VideoData:
    """A decoded video: frames uint8 [T, H, W, 3], fps, and audio float32 [C, N] with its sample rate (or None)."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None
    sample_rate: int | None

    @property
    def seconds(self) -> float:
        return self.frames.shape[0] / self.fps


def _check_file(path: str | os.PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path} (looked in {os.path.dirname(os.path.abspath(path))})")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} is a folder, not a file: {path}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} is empty (0 bytes): {path}")
    return path


class _AudioCollector:
    """Gathers decoded audio frames of one stream as float32 [C, N], cut to the stream's declared duration."""

    def __init__(self, stream) -> None:
        import av

        self.stream = stream
        layout = stream.layout.name if stream.layout is not None else None
        self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=stream.rate)
        self.chunks: list[np.ndarray] = []

    def add(self, frame) -> None:
        self.chunks.extend(out.to_ndarray() for out in self.resampler.resample(frame))

    def finish(self) -> tuple[np.ndarray, int]:
        self.add(None)  # flush the resampler
        stream = self.stream
        sample_rate = int(stream.rate)
        channels = stream.channels or 1
        audio = np.concatenate(self.chunks, axis=1) if self.chunks else np.zeros((channels, 0), np.float32)
        if stream.duration is not None and stream.time_base is not None:
            # AAC pads its last frame; the container's duration says where the real signal ends
            declared = round(float(stream.duration * stream.time_base) * sample_rate)
            if 0 < declared < audio.shape[1]:
                audio = audio[:, :declared]
        return audio.astype(np.float32, copy=False), sample_rate


def _decode_audio(container, stream) -> tuple[np.ndarray, int]:
    collector = _AudioCollector(stream)
    for frame in container.decode(stream):
        collector.add(frame)
    return collector.finish()


def read_video(path: str | os.PathLike) -> VideoData:
    """Decode a whole video file (frames as RGB uint8) and its first audio stream, if any, in one pass."""
    import av

    path = _check_file(path, "video file")
    try:
        container = av.open(path)
    except (av.error.InvalidDataError, av.error.FFmpegError) as e:
        raise ValueError(f"not a video file (cannot be decoded): {path}: {e}") from e
    with container:
        if not container.streams.video:
            raise ValueError(f"not a video file (no video stream): {path}")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 25.0
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        collector = _AudioCollector(audio_stream) if audio_stream is not None else None
        frames = []
        try:
            for packet in container.demux(*[s for s in (stream, audio_stream) if s is not None]):
                for frame in packet.decode():
                    if packet.stream is stream:
                        frames.append(frame.to_ndarray(format="rgb24"))
                    else:
                        collector.add(frame)
        except av.error.FFmpegError as e:
            raise ValueError(f"not a video file (decoding failed): {path}: {e}") from e
        if not frames:
            raise ValueError(f"video file has no frames: {path}")
        audio, sample_rate = collector.finish() if collector is not None else (None, None)
    return VideoData(frames=np.stack(frames), fps=fps, audio=audio, sample_rate=sample_rate)


def resample_frames(frames: np.ndarray, src_fps: float, fps: float) -> np.ndarray:
    """Nearest-frame resampling of `[T, H, W, 3]` from `src_fps` to `fps` (the frame shown at each new time)."""
    duration = len(frames) / src_fps
    n = int(np.floor(duration * fps + 1e-6))
    idx = np.minimum(np.floor(np.arange(n) / fps * src_fps + 1e-6).astype(int), len(frames) - 1)
    return frames[idx]


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Load an audio file as (float32 waveform [C, N], sample_rate).

    soundfile reads WAV/FLAC/OGG; other containers (mp3, m4a, mp4, ...) are decoded with PyAV.
    """
    import soundfile as sf

    path = _check_file(path, "audio file")
    try:
        data, sample_rate = sf.read(path, dtype="float32", always_2d=True)  # [N, C]
        waveform = np.ascontiguousarray(data.T)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        waveform, sample_rate = _load_audio_av(path)
    if waveform.shape[1] == 0:
        raise ValueError(f"audio file has no samples: {path}")
    return waveform, int(sample_rate)


def _load_audio_av(path: str) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(path)
    except (av.error.InvalidDataError, av.error.FFmpegError) as e:
        raise ValueError(f"not an audio file (cannot be decoded): {path}: {e}") from e
    with container:
        if not container.streams.audio:
            raise ValueError(f"file has no audio stream: {path}")
        try:
            return _decode_audio(container, container.streams.audio[0])
        except av.error.FFmpegError as e:
            raise ValueError(f"not an audio file (decoding failed): {path}: {e}") from e


def save_wav(path: str | os.PathLike, waveform: Any, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write a waveform ([C, N] or [N], float in -1..1) as a WAV file (16-bit PCM by default)."""
    import soundfile as sf

    waveform = _as_channels_first(waveform, "waveform")
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    sf.write(os.fspath(path), np.clip(waveform, -1.0, 1.0).T, int(sample_rate), subtype=subtype, format="WAV")
