"""A table of bad inputs across image, audio, checkpoint, config, node widget and CLI argument: each gets one clear
line naming the problem (no traceback from the CLI), and nothing is written or left half-written. Also the odd but
valid inputs (8 and 96 kHz, 6 channels, RGBA, grey, 16-bit) that must simply work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import save_file

from loopy_core.audio import tiny_wav2vec2
from loopy_core.checkpoint import save_checkpoint
from loopy_core.cli import main
from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel
from loopy_core.video import read_video

RATE = 16000


def tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 170 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every file of the corpus, written once."""
    d = tmp_path_factory.mktemp("corpus")
    torch.manual_seed(0)
    cfg = LoopyConfig.tiny()
    model = LoopyModel(cfg)
    good = save_checkpoint(model, d / "good.safetensors", audio_encoder=tiny_wav2vec2(cfg.audio))
    data = good.read_bytes()
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 3])
    (d / "text.safetensors").write_text("not weights\n" * 100)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4)}, str(d / "sd_like.safetensors"))
    wrong = cfg.replace(a2l={"num_tokens": 8})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "mismatch.safetensors"),
              metadata={"format": "loopy", "format_version": "1", "config": wrong.to_json()})
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((80, 60, 3)) * 255).astype(np.uint8)).save(d / "face.png")
    Image.fromarray((rng.random((64, 64, 4)) * 255).astype(np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8), "L").save(d / "grey.png")
    Image.fromarray((rng.random((64, 64)) * 65535).astype(np.uint16)).save(d / "deep16.png")
    Image.new("RGB", (1, 1)).save(d / "one_pixel.png")
    Image.new("1", (20000, 20000)).save(d / "huge.png")  # tiny file, 400 megapixels
    (d / "notes.png").write_text("hello")
    (d / "zero.png").write_bytes(b"")
    sf.write(d / "speech.wav", tone(0.4), RATE)
    sf.write(d / "empty.wav", np.zeros((0, 1), np.float32), RATE)
    sf.write(d / "one_sample.wav", np.full((1, 1), 0.5, np.float32), RATE)
    sf.write(d / "silence.wav", np.zeros((RATE, 1), np.float32), RATE)
    nan = tone(0.4)
    nan[100:110] = np.nan
    sf.write(d / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(d / "two_hours.wav", tone(7200, rate=100), 100)  # 2 h at 100 Hz: 720k samples, a small file
    (d / "text.wav").write_text("RIFF? no, just text\n" * 50)
    sf.write(d / "rate8k.wav", tone(0.4, 8000), 8000)
    sf.write(d / "rate96k.wav", tone(0.4, 96000), 96000)
    sf.write(d / "six_channels.wav", tone(0.4, channels=6), RATE)
    return d


def generate(corpus, tmp_path, **changes) -> list[str]:
    args = {"--image": corpus / "face.png", "--audio": corpus / "speech.wav", "--out": tmp_path / "out.mp4",
            "--model": corpus / "good.safetensors", "--steps": "1", "--device": "cpu"}
    args.update(changes)
    return ["generate", "--quiet"] + [str(x) for kv in args.items() for x in kv]


BAD_GENERATE = [
    # image
    ({"--image": "missing.png"}, "missing.png"),
    ({"--image": "notes.png"}, "not a readable image"),
    ({"--image": "zero.png"}, "not a readable image"),
    ({"--image": "one_pixel.png"}, "1x1 pixels"),
    ({"--image": "huge.png"}, "20000x20000 pixels; the limit is 16384"),
    # audio
    ({"--audio": "missing.wav"}, "missing.wav"),
    ({"--audio": "empty.wav"}, "no samples"),
    ({"--audio": "one_sample.wav"}, "shorter than one"),
    ({"--audio": "silence.wav"}, "silent"),
    ({"--audio": "nan.wav"}, "NaN"),
    ({"--audio": "two_hours.wav"}, "--max-seconds"),
    ({"--audio": "text.wav"}, "not an audio file"),
    # checkpoint
    ({"--model": "missing.safetensors"}, "not found"),
    ({"--model": "truncated.safetensors"}, "truncated"),
    ({"--model": "text.safetensors"}, "not a valid safetensors file"),
    ({"--model": "sd_like.safetensors"}, "not a Loopy checkpoint"),
    ({"--model": "mismatch.safetensors"}, "shape mismatches"),
    # arguments
    ({"--steps": "0"}, "steps must be"),
    ({"--scheduler": "warp"}, "Unknown scheduler"),
    ({"--audio-cfg": "loud"}, "not a number"),
    ({"--ref-cfg": "-1"}, "must not be negative"),
    ({"--out": "out.avi"}, "must be an .mp4"),
    ({"--out": "no_such_folder/out.mp4"}, "does not exist"),
    ({"--fps": "0"}, "--fps must be between 1 and 120"),
    ({"--dtype": "fp8"}, "invalid choice"),
]


@pytest.mark.parametrize("change,message", BAD_GENERATE, ids=[f"{list(c)[0]}={list(c.values())[0]}" for c, _ in BAD_GENERATE])
def test_bad_generate_inputs(corpus, tmp_path, monkeypatch, capsys, change, message):
    monkeypatch.chdir(tmp_path)
    change = {k: (corpus / v if k in ("--image", "--audio", "--model") and (corpus / v).exists() else v)
              for k, v in change.items()}
    try:
        code = main(generate(corpus, tmp_path, **change))
    except SystemExit as e:  # argparse rejects before our code runs
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err  # one line names it
    assert not list(tmp_path.rglob("*.mp4")) and not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("name", ["rate8k.wav", "rate96k.wav", "six_channels.wav"])
def test_odd_but_valid_audio_works(corpus, tmp_path, name):
    assert main(generate(corpus, tmp_path, **{"--audio": corpus / name})) == 0
    video = read_video(tmp_path / "out.mp4")
    assert video.frames.shape[0] == 10 and video.audio is not None  # 0.4 s at 25 fps


@pytest.mark.parametrize("name", ["rgba.png", "grey.png", "deep16.png"])
def test_odd_but_valid_images_work(corpus, tmp_path, name):
    assert main(generate(corpus, tmp_path, **{"--image": corpus / name})) == 0
    assert read_video(tmp_path / "out.mp4").frames.shape == (10, 64, 64, 3)


def test_bad_config_values():
    data = LoopyConfig.tiny().to_dict()
    data["unet"]["layers"] = 3
    with pytest.raises(ValueError, match=r"Unknown field\(s\) in config.unet: \['layers'\]"):
        LoopyConfig.from_dict(data)
    with pytest.raises(ValueError, match="a2l.width"):
        LoopyConfig.tiny().replace(a2l={"width": 16})
    with pytest.raises(ValueError, match="resolution 100 is not divisible"):
        LoopyConfig.tiny().replace(resolution=100)
    with pytest.raises(ValueError, match="not valid JSON"):
        LoopyConfig.from_json("{config")


@pytest.mark.parametrize("name", ["../escape.safetensors", "/etc/passwd", "a/../../b.safetensors"])
def test_node_widgets_refuse_paths_outside_model_folders(name):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("loopy_pack", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["loopy_pack"] = pack
    spec.loader.exec_module(pack)
    loader = pack.NODE_CLASS_MAPPINGS["LoopyModelLoader"]
    result = loader.VALIDATE_INPUTS(model_name=name, base_model="none")
    assert isinstance(result, str) and ("outside" in result or ".." in result or "absolute" in result), result


def test_bad_training_inputs(tmp_path, capsys):
    from training.preprocess import main as preprocess
    from training.train import main as train

    (tmp_path / "empty").mkdir()
    assert preprocess(["--videos", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--model", "x"]) == 2
    assert "no videos" in capsys.readouterr().err
    assert train(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    (tmp_path / "t.yaml").write_text(json.dumps({"learning_rate": 1e-4, "stage": 5}))
    assert train(["--config", str(tmp_path / "t.yaml")]) == 2
    assert "stage must be 1 or 2" in capsys.readouterr().err


def test_exif_rotation_is_applied(tmp_path):
    from loopy_core.image import load_image

    img = Image.fromarray(np.zeros((40, 80, 3), np.uint8))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the photo is portrait
    img.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").shape == (80, 40, 3)


def test_clipped_and_offset_audio_still_works(corpus, tmp_path):
    wave = np.clip(tone(0.4) * 8.0, -1.0, 1.0) + 0.2  # hard clipping and a DC offset
    sf.write(tmp_path / "clipped.wav", np.clip(wave, -1, 1), RATE, subtype="FLOAT")
    assert main(generate(corpus, tmp_path, **{"--audio": tmp_path / "clipped.wav", "--crop": "none"})) == 0
    assert read_video(tmp_path / "out.mp4").frames.shape[0] == 10
