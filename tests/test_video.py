"""Video/audio file I/O: mp4 round trips, audio muxing to the video's length, atomic writes, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from loopy_core.video import VideoWriter, load_audio, read_video, save_wav, to_uint8_frames

FPS = 25
SR = 16000


def gradient_frames(num_frames: int, height: int = 64, width: int = 48) -> np.ndarray:
    """Smooth moving gradients (compress well, so decoded pixels can be compared): uint8 [T, H, W, 3]."""
    t = np.arange(num_frames)[:, None, None]
    y, x = np.mgrid[0:height, 0:width]
    r = 128 + 100 * np.sin(0.1 * x[None] + 0.2 * t)
    g = 128 + 100 * np.cos(0.08 * y[None] - 0.1 * t)
    b = np.broadcast_to(64 + 2 * t, r.shape)
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def noise_audio(seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((channels, int(seconds * SR)))).clip(-0.9, 0.9).astype(np.float32)


def leftovers(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.startswith(".tmp-"))


def test_mp4_round_trip_frames_fps_and_audio(tmp_path):
    frames = gradient_frames(30)
    audio = noise_audio(30 / FPS)
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, FPS, audio=audio, sample_rate=SR) as writer:
        writer.write(frames[:12])  # streamed in pieces, like clips
        writer.write(torch.from_numpy(frames[12:]).float() / 255.0)  # float torch input as well
    video = read_video(path)
    assert video.frames.shape == (30, 64, 48, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(FPS)
    assert np.abs(video.frames.astype(float) - frames).mean() < 3.0  # crf 18 on smooth content
    assert video.sample_rate == SR and video.audio.shape[0] == 1
    assert abs(video.audio.shape[1] / SR - 30 / FPS) <= 1 / FPS
    # the audio is the same signal, aligned (AAC is lossy but keeps the waveform on noise)
    n = min(video.audio.shape[1], audio.shape[1]) - 2000
    assert np.corrcoef(video.audio[0, 1000:n], audio[0, 1000:n])[0, 1] > 0.95
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("audio_seconds", [0.4, 3.0])
def test_audio_is_padded_or_cut_to_the_video(tmp_path, audio_seconds):
    path = tmp_path / "a.mp4"
    with VideoWriter(path, FPS, audio=noise_audio(audio_seconds, channels=2)[:, :], sample_rate=SR) as writer:
        writer.write(gradient_frames(40))  # 1.6 s of video
    video = read_video(path)
    assert video.audio.shape[0] == 2
    assert abs(video.audio.shape[1] / SR - 40 / FPS) <= 1 / FPS
    if audio_seconds < 1.6:  # padded with silence
        tail = video.audio[:, int(0.6 * SR) : int(1.5 * SR)]
        assert np.abs(tail).max() < 0.01


def test_uncommon_sample_rate_is_resampled_for_aac(tmp_path):
    path = tmp_path / "r.mp4"
    with VideoWriter(path, 30, audio=noise_audio(1.0)[0], sample_rate=17000) as writer:
        writer.write(gradient_frames(30, 32, 32))
    video = read_video(path)
    assert video.fps == pytest.approx(30) and video.sample_rate == 48000
    assert abs(video.audio.shape[1] / 48000 - 1.0) <= 1 / 30


def test_error_inside_the_block_leaves_nothing(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, FPS, audio=noise_audio(1.0), sample_rate=SR) as writer:
            writer.write(gradient_frames(10))
            raise RuntimeError("boom")
    assert not path.exists() and leftovers(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous version")
    with pytest.raises(ValueError, match="even"):
        with VideoWriter(path, FPS) as writer:
            writer.write(np.zeros((2, 63, 64, 3), np.uint8))
    assert path.read_bytes() == b"previous version" and leftovers(tmp_path) == []
    writer = VideoWriter(path, FPS)
    writer.write(gradient_frames(3))
    writer.abort()
    assert path.read_bytes() == b"previous version" and leftovers(tmp_path) == []


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "a.mp4", 0)
    with pytest.raises(ValueError, match="crf"):
        VideoWriter(tmp_path / "a.mp4", FPS, crf=99)
    with pytest.raises(ValueError, match="sample_rate"):
        VideoWriter(tmp_path / "a.mp4", FPS, audio=noise_audio(1.0))
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        VideoWriter(tmp_path / "no_such_folder" / "a.mp4", FPS)
    with VideoWriter(tmp_path / "b.mp4", FPS) as writer:
        writer.write(gradient_frames(2))
        with pytest.raises(ValueError, match="size changed"):
            writer.write(np.zeros((1, 32, 32, 3), np.uint8))
    assert not (tmp_path / "b.mp4").exists()  # the failed write aborted the file
    with pytest.raises(ValueError, match="no frames"):
        VideoWriter(tmp_path / "c.mp4", FPS).close()
    assert leftovers(tmp_path) == []


def test_to_uint8_frames_layouts():
    floats = torch.tensor([[[[0.0, 0.5, 1.2]]]])
    assert to_uint8_frames(floats).tolist() == [[[[0, 128, 255]]]]
    assert to_uint8_frames(np.zeros((4, 4, 3), np.uint8)).shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        to_uint8_frames(np.zeros((2, 4, 4), np.uint8))


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video at all" * 10)
    with pytest.raises(ValueError, match="not a video"):
        read_video(tmp_path / "junk.mp4")
    save_wav(tmp_path / "sound.wav", noise_audio(0.5), SR)
    with pytest.raises(ValueError, match="no video stream"):
        read_video(tmp_path / "sound.wav")


def test_save_and_load_wav_round_trip(tmp_path):
    stereo = noise_audio(0.5, channels=2)
    save_wav(tmp_path / "s.wav", stereo, SR)
    wave, sr = load_audio(tmp_path / "s.wav")
    assert sr == SR and wave.shape == stereo.shape and wave.dtype == np.float32
    assert np.abs(wave - stereo).max() < 1e-4  # 16-bit PCM
    save_wav(tmp_path / "m.wav", stereo[0], 22050, subtype="FLOAT")
    wave, sr = load_audio(tmp_path / "m.wav")
    assert sr == 22050 and wave.shape == (1, stereo.shape[1]) and np.array_equal(wave[0], stereo[0])


def test_load_audio_from_mp4_falls_back_to_pyav(tmp_path):
    audio = noise_audio(1.0)
    with VideoWriter(tmp_path / "v.mp4", FPS, audio=audio, sample_rate=SR) as writer:
        writer.write(gradient_frames(25, 32, 32))
    wave, sr = load_audio(tmp_path / "v.mp4")
    assert sr == SR and wave.shape[0] == 1 and abs(wave.shape[1] - SR) <= SR // FPS


def test_load_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.wav"):
        load_audio(tmp_path / "nothing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.wav"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.mp3").write_bytes(b"\x00\x01garbage" * 50)
    with pytest.raises(ValueError, match="junk.mp3"):
        load_audio(tmp_path / "junk.mp3")
    with VideoWriter(tmp_path / "silent.mp4", FPS) as writer:
        writer.write(gradient_frames(5, 32, 32))
    with pytest.raises(ValueError, match="no audio stream"):
        load_audio(tmp_path / "silent.mp4")
    save_wav(tmp_path / "zero.wav", np.zeros(0, np.float32), SR)
    with pytest.raises(ValueError, match="no samples"):
        load_audio(tmp_path / "zero.wav")
