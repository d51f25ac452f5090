"""The main job: `loopy demo` with the bundled model, portrait and speech, offline."""

from __future__ import annotations

import json

import numpy as np

from loopy_core.checkpoint import read_config, read_metadata
from loopy_core.cli import main
from loopy_core.commands.demo import DEMO_DIR, DEMO_MODEL
from loopy_core.video import read_video, save_wav


def test_bundled_assets_are_complete_and_small():
    assert DEMO_MODEL.stat().st_size <= 25 * 2**20
    config = read_config(DEMO_MODEL)
    assert config.name == "demo" and config.audio.kind == "logmel" and config.vae.kind == "pixel_unshuffle"
    assert config.noise.prediction_type == "sample" and config.noise.rescale_betas_zero_snr
    assert "model_card" in read_metadata(DEMO_MODEL)
    assert (DEMO_DIR / "MODEL_CARD.md").read_text().startswith("# Loopy demo model")
    truth = json.loads((DEMO_DIR / "speech_truth.json").read_text())
    assert truth["num_frames"] == 200 and len(truth["frames"]["mouth_open"]) == 200


def test_demo_runs_offline_and_reports_sync(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--steps", "1", "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "demo.mp4" in out and "lip sync" in out and "ground-truth video of this speech scores" in out
    video = read_video(tmp_path / "demo.mp4")
    assert video.frames.shape == (200, 64, 64, 3) and video.audio is not None


def test_demo_with_user_audio_and_errors(tmp_path, capsys):
    wav = tmp_path / "mine.wav"
    t = np.arange(8000) / 16000
    save_wav(wav, (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32), 16000)
    out = tmp_path / "mine.mp4"
    assert main(["demo", "--audio", str(wav), "--out", str(out), "--steps", "1", "--quiet", "--device", "cpu"]) == 0
    assert read_video(out).frames.shape[0] == 13
    assert "ground-truth" not in capsys.readouterr().out
    assert main(["demo", "--model", str(tmp_path / "none.safetensors"), "--out", str(out)]) == 2
    assert "not in" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "x.avi")]) == 2


def _speech(path, seconds=0.4):
    t = np.arange(int(seconds * 16000)) / 16000
    save_wav(path, (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32), 16000)
    return path


def test_demo_pastes_your_photo_back_at_its_size(tmp_path, capsys):
    """`--image` a non-square photo: the face's square is animated and pasted back, the video has the photo's
    size (161x121 rounded down to even) and the photo outside the face."""
    from PIL import Image

    from loopy_core.image import load_image

    canvas = np.full((121, 161, 3), 0.6, np.float32)
    canvas[30:94, 70:134] = load_image(DEMO_DIR / "portrait.png")  # Haar finds this face
    Image.fromarray((canvas * 255).round().astype(np.uint8)).save(tmp_path / "me.png")
    out = tmp_path / "me.mp4"
    argv = ["demo", "--image", str(tmp_path / "me.png"), "--audio", str(_speech(tmp_path / "me.wav")), "--out",
            str(out), "--steps", "1", "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "lip sync" in captured.out and "no face" not in captured.err
    frames = read_video(out).frames
    assert frames.shape == (10, 120, 160, 3)
    assert np.abs(frames[:, :8, :8].astype(np.float32) - 0.6 * 255).mean() < 8  # the photo, far from the face


def test_demo_photo_without_a_face_says_so_and_animates_the_centre(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((90, 130, 3)) * 255).astype(np.uint8)).save(tmp_path / "wall.png")
    out = tmp_path / "wall.mp4"
    argv = ["demo", "--image", str(tmp_path / "wall.png"), "--audio", str(_speech(tmp_path / "wall.wav")), "--out",
            str(out), "--steps", "1", "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "no face found in" in err and "wall.png (130x90)" in err and "centre square (90 px)" in err
    assert read_video(out).frames.shape == (10, 90, 130, 3)


def test_demo_model_recommended_settings_are_used():
    config = read_config(DEMO_MODEL)
    assert 1.0 <= config.guidance.audio_scale <= 2.0 and config.guidance.steps <= 12
