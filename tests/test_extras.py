"""Smaller parts: log-mel features, motion statistics, the demo preset, espeak voice selection, the bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from loopy_core.audio import extract_audio_features, logmel_features
from loopy_core.cli import main
from loopy_core.config import LoopyConfig
from loopy_core.motion import intensity_to_statistics, motion_statistics


def test_logmel_features_shape_and_loudness():
    cfg = LoopyConfig.demo().audio
    t = np.arange(16000) / 16000
    loud = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    feats = extract_audio_features(loud, 16000, 25, None, cfg)
    assert feats.feats.shape == (25, 5, 1, 40)
    quiet = extract_audio_features(loud * 0.01, 16000, 25, None, cfg)
    assert feats.feats.amax() > quiet.feats.amax() + 1.5  # 40 dB quieter: ln(1e4) / 5 = 1.84 lower at the tone
    raw = logmel_features(torch.from_numpy(loud), 40)
    assert raw.shape == (50, 1, 40)  # 50 Hz, like wav2vec2


def test_motion_statistics():
    still = motion_statistics(np.zeros((12, 3)), np.zeros((12, 2)))
    torch.testing.assert_close(still, torch.tensor([-6.0, -6.0]))
    moving = motion_statistics(np.random.default_rng(0).normal(0, 0.1, (12, 3)), np.zeros((12, 2)))
    assert moving[0] > -2.5 and moving[1] == -6.0
    torch.testing.assert_close(intensity_to_statistics(1.0, 0.0), torch.tensor([-1.0, -6.0]))
    with pytest.raises(ValueError, match="head_intensity"):
        intensity_to_statistics(1.5, 0.0)
    with pytest.raises(ValueError, match="T >= 2"):
        motion_statistics(np.zeros((1, 3)), np.zeros((1, 2)))


def test_demo_preset(capsys):
    cfg = LoopyConfig.demo()
    assert cfg.latent_channels == 48 and cfg.latent_size == 16 and cfg.a2l.add_to_timestep
    assert main(["inspect", "--config", "demo", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["clip_shapes"]["audio_feats"] == [1, 12, 5, 1, 40]
    assert card["parameters"]["vae"] == 0
    with pytest.raises(ValueError, match="single feature layer"):
        cfg.replace(audio={"num_layers": 2})


@pytest.mark.skipif(not __import__("shutil").which("espeak-ng"), reason="espeak-ng not installed")
def test_espeak_voices_can_be_held_out():
    from loopy_core.synthetic.speech import espeak_speech

    wave, info = espeak_speech(1.0, seed=3, languages=("it",), variants=("+f4",))
    assert info["voice"] == "it+f4" and wave.shape == (16000,)
    with pytest.raises(ValueError, match="unknown or empty"):
        espeak_speech(1.0, languages=("xx",))


def test_bench_runs_and_reports_ratios(capsys):
    assert main(["bench", "--config", "tiny", "--steps", "1", "--only", "clip,tsm,diffusers", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for label in ("seconds per 12-frame clip", "TSM 124 frames / 4 motion frames", "diffusers UNetMotionModel / ours"):
        assert label in out
    assert main(["bench", "--only", "warp"]) == 2
