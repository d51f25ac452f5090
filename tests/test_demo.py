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


def test_demo_model_recommended_settings_are_used():
    config = read_config(DEMO_MODEL)
    assert 1.0 <= config.guidance.audio_scale <= 2.0 and config.guidance.steps <= 12
