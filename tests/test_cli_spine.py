"""`loopy inspect` and `loopy init` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from loopy_core.checkpoint import load_checkpoint, read_metadata
from loopy_core.cli import main
from loopy_core.config import SD15_UNET_PARAMETERS


def test_inspect_sd15_json(capsys):
    assert main(["inspect", "--config", "sd15", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["parameters"]["denoiser_spatial"] == SD15_UNET_PARAMETERS == 859_520_964
    assert card["tsm"]["history_frames"] == 124 and card["tsm"]["motion_latents"] == 20
    groups = card["tsm"]["groups"]
    assert len(groups) == 20 and groups[-1] == [-1] and groups[0] == list(range(-124, -108))
    shapes = card["clip_shapes"]
    assert shapes["sample"] == [1, 4, 12, 64, 64]
    assert shapes["motion_frame_latents"] == [1, 4, 20, 64, 64]
    assert shapes["audio_feats"] == [1, 12, 5, 12, 768]
    assert shapes["motion_tokens"] == [1, 12, 32, 768]
    assert shapes["ref_tokens"]["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == [1, 4096, 320]
    assert len(shapes["motion_feats"]) == 21  # AnimateDiff's motion-module positions
    assert set(card["parameters"]) >= {"reference_net", "denoiser_spatial", "inter_clip", "intra_clip", "audio_to_latents"}


def test_inspect_table(capsys):
    assert main(["inspect", "--config", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "124 frames -> 20 latents" in out and "denoiser_spatial" in out


def test_init_then_load(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(["init", "--config", "tiny", "--seed", "7", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    model = load_checkpoint(out)
    assert model.config.name == "tiny"
    assert "seed" in read_metadata(out)["init"]
    out2 = tmp_path / "m2.safetensors"
    main(["init", "--config", "tiny", "--seed", "7", "--out", str(out2)])
    again = load_checkpoint(out2).state_dict()
    assert all(torch.equal(v, again[k]) for k, v in model.state_dict().items())  # same seed, same weights
    assert read_metadata(out) == read_metadata(out2)
    assert main(["inspect", "--checkpoint", str(out), "--json"]) == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["init", "--config", "tiny", "--out", "m.pt"], "must end in .safetensors"),
        (["init", "--config", "tiny", "--base", "missing_dir", "--out", "m.safetensors"], "--base: 'missing_dir' not found"),
        (["inspect", "--checkpoint", "missing.safetensors"], "not found"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


def test_inspect_flops(capsys):
    assert main(["inspect", "--config", "tiny", "--json", "--flops"]) == 0
    f = json.loads(capsys.readouterr().out)["flops"]
    assert f["reference_net"] > 0 and f["denoiser_step"] > 0 and f["steps"] == 25 and f["branches"] == 3
    assert f["clip_total"] == f["reference_net"] + f["audio_to_latents"] + 25 * f["denoiser_step"]
    assert f["denoiser_per_frame_evaluation"] == f["denoiser_step"] // 36


# ---- init -> generate with nothing else (issue #21, part 1)


def _inputs(folder):
    from PIL import Image

    from loopy_core.video import save_wav

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((72, 64, 3)) * 255).astype(np.uint8)).save(folder / "ref.png")
    t = np.arange(4000) / 16000  # 0.25 s: one clip
    save_wav(folder / "a.wav", (0.3 * (1 + np.sin(8 * np.pi * t)) * np.sin(300 * np.pi * t)).astype(np.float32), 16000)
    return folder / "ref.png", folder / "a.wav"


@pytest.mark.parametrize("config", ["tiny", "demo"])
def test_init_then_generate_and_the_nodes_need_no_other_file(config, tmp_path, monkeypatch, capsys):
    """The first steps of a new user: `init` then `generate` in an empty folder, no audio-encoder folder, no
    LOOPY_* variables; the nodes load the same file and encode audio with what it holds."""
    from loopy_core.audio import tiny_wav2vec2
    from loopy_core.checkpoint import load_embedded_audio_encoder
    from loopy_core.config import LoopyConfig
    from loopy_core.video import read_video

    for name in [k for k in os.environ if k.startswith("LOOPY_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "models" / "loopy" / "t.safetensors"
    assert main(["init", "--config", config, "--seed", "3", "--out", str(model)]) == 0
    out = capsys.readouterr()
    assert "note:" not in out.err
    encoder = load_embedded_audio_encoder(model)
    if config == "tiny":
        assert "audio encoder embedded (random)" in out.out
        expected = tiny_wav2vec2(LoopyConfig.tiny().audio, seed=3).state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in encoder.state_dict().items())
    else:  # log-mel features: nothing to embed
        assert encoder is None and LoopyConfig.demo().audio.kind == "logmel"
    image, wav = _inputs(tmp_path)
    video = tmp_path / "o.mp4"
    assert main(["generate", "--model", str(model), "--image", str(image), "--audio", str(wav), "--out", str(video),
                 "--steps", "1", "--device", "cpu", "--quiet", "--crop", "none"]) == 0, capsys.readouterr().err
    assert read_video(video).frames.shape[0] == 7  # ceil(0.25 s * 25)

    sys.path.insert(0, str(Path(__file__).parent))
    try:
        import comfy_graph as cg
    finally:
        sys.path.pop(0)
    nodes = cg.load_pack().NODE_CLASS_MAPPINGS
    loaded = nodes["LoopyModelLoader"]().load("t.safetensors", "none", "auto", "auto")[0]
    assert (loaded.audio_encoder is None) == (config == "demo")
    speech = {"waveform": torch.from_numpy(cg.speech(0.5))[None, None], "sample_rate": 16000}
    features = nodes["LoopyAudioEncode"]().encode(model=loaded, audio=speech, fps=25.0, max_seconds=0.0)[0]
    assert features.features.num_frames == 13  # ceil(0.5 s * 25)


def test_init_embeds_a_given_audio_encoder_and_checks_its_size(tmp_path, capsys):
    from loopy_core.audio import tiny_wav2vec2
    from loopy_core.checkpoint import load_embedded_audio_encoder
    from loopy_core.config import AudioConfig, LoopyConfig

    folder = tmp_path / "w2v"
    given = tiny_wav2vec2(LoopyConfig.tiny().audio, seed=11)
    given.save_pretrained(folder)
    out = tmp_path / "m.safetensors"
    assert main(["init", "--config", "tiny", "--audio-encoder", str(folder), "--out", str(out)]) == 0
    embedded = load_embedded_audio_encoder(out).state_dict()
    assert all(torch.equal(v, embedded[k]) for k, v in given.state_dict().items())

    tiny_wav2vec2(AudioConfig(num_layers=3, feature_dim=48)).save_pretrained(tmp_path / "wide")
    bad = tmp_path / "bad.safetensors"
    assert main(["init", "--config", "tiny", "--audio-encoder", str(tmp_path / "wide"), "--out", str(bad)]) == 2
    assert "3 layers of width 48 but this Loopy model expects 2 x 32" in capsys.readouterr().err
    assert main(["init", "--config", "demo", "--audio-encoder", str(folder), "--out", str(bad)]) == 2
    assert "'logmel' features, which need no audio encoder" in capsys.readouterr().err
    assert not bad.exists()


def test_init_says_what_to_pass_for_a_pretrained_audio_encoder(tmp_path, monkeypatch, capsys):
    """sd15 expects a pretrained wav2vec2, which can't be made up: init says which flag embeds it. (A tiny model
    whose config names wav2vec2-base-960h stands in for sd15, which is too big to build here.)"""
    import dataclasses

    from loopy_core.checkpoint import load_embedded_audio_encoder
    from loopy_core.commands.init import init_audio_encoder
    from loopy_core.config import LoopyConfig

    assert init_audio_encoder(LoopyConfig.sd15(), None, 0) is None
    tiny = LoopyConfig.tiny()
    named = dataclasses.replace(tiny, audio=dataclasses.replace(tiny.audio, encoder="wav2vec2-base-960h"))
    monkeypatch.setattr(LoopyConfig, "preset", classmethod(lambda cls, name: named))
    out = tmp_path / "m.safetensors"
    assert main(["init", "--config", "sd15", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no audio encoder embedded" in err
    assert "--audio-encoder DIR" in err and "models/audio_encoders/wav2vec2-base-960h" in err
    assert load_embedded_audio_encoder(out) is None
