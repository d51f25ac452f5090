"""Loopy checkpoint format: exact round trip, self-describing config, clear errors on bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from loopy_core.checkpoint import load_checkpoint, read_config, read_metadata, save_checkpoint
from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(3)
    model = LoopyModel(LoopyConfig.tiny())
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(model, path, metadata={"note": "test"})
    return model, path


def test_round_trip_reproduces_every_tensor(saved):
    model, path = saved
    loaded = load_checkpoint(path)
    a, b = model.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.config == model.config


def test_config_is_read_from_metadata_alone(saved):
    _, path = saved
    assert read_config(path) == LoopyConfig.tiny()
    meta = read_metadata(path)
    assert meta["format"] == "loopy" and meta["note"] == "test"
    assert json.loads(meta["config"])["name"] == "tiny"


def test_changed_config_round_trips():
    cfg = LoopyConfig.tiny().replace(tsm={"r": 1, "reduce": "middle"}, guidance={"audio_scale": 1.5})
    assert LoopyConfig.from_json(cfg.to_json()) == cfg
    assert cfg.tsm.r == 1 and cfg.guidance.audio_scale == 1.5


def test_fp16_save_halves_floats(tmp_path, saved):
    model, _ = saved
    path = save_checkpoint(model, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_checkpoint(path)
    w = model.denoiser.unet.conv_in.weight
    torch.testing.assert_close(loaded.denoiser.unet.conv_in.weight, w.half().float())


def test_truncated_file_is_named(tmp_path, saved):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors.*truncated"):
        load_checkpoint(bad)
    tiny = tmp_path / "tiny_bytes.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_config(tiny)


def test_text_file_is_rejected(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello, this is not a checkpoint at all " * 10)
    with pytest.raises(ValueError, match="notes.safetensors"):
        load_checkpoint(bad)


def test_file_of_another_model_is_refused(tmp_path):
    other = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(ValueError, match="not a Loopy checkpoint.*--base"):
        load_checkpoint(other)


def test_config_that_does_not_match_tensors_names_keys(tmp_path, saved):
    model, _ = saved
    wrong = tmp_path / "wrong.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    big = LoopyConfig.tiny().replace(a2l={"num_tokens": 8})  # query count differs from the tensors
    save_file(state, str(wrong), metadata={"format": "loopy", "format_version": "1", "config": big.to_json()})
    with pytest.raises(ValueError, match=r"audio_to_latents\.queries \(file \(4, 32\), model \(8, 32\)\)"):
        load_checkpoint(wrong)


def test_missing_and_unexpected_keys_are_listed(tmp_path, saved):
    model, _ = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("audio_to_latents.")}
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.safetensors"
    meta = {"format": "loopy", "format_version": "1", "config": LoopyConfig.tiny().to_json()}
    save_file(state, str(path), metadata=meta)
    with pytest.raises(ValueError) as e:
        load_checkpoint(path)
    assert "missing keys: audio_to_latents." in str(e.value) and "unexpected keys: extra.weight" in str(e.value)
    assert "partial.safetensors" in str(e.value)


def test_checkpoint_without_vae_needs_base(tmp_path, saved):
    model, _ = saved
    path = save_checkpoint(model, tmp_path / "novae.safetensors", include_vae=False)
    with pytest.raises(ValueError, match="no VAE weights.*--base"):
        load_checkpoint(path)


def test_missing_file_names_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors.*not found in"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_atomic_save_leaves_nothing_on_failure(tmp_path, saved, monkeypatch):
    model, _ = saved
    import loopy_core.checkpoint as ck

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(RuntimeError):
        save_checkpoint(model, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_unknown_config_field_is_named():
    data = LoopyConfig.tiny().to_dict()
    data["tsm"]["ratio"] = 2
    with pytest.raises(ValueError, match=r"Unknown field\(s\) in config.tsm: \['ratio'\]"):
        LoopyConfig.from_dict(data)
    with pytest.raises(ValueError, match="a2l.width"):
        LoopyConfig.tiny().replace(a2l={"width": 48})
    with pytest.raises(ValueError, match="Unknown config preset"):
        LoopyConfig.preset("sdxl")


def test_config_changes_add_and_drop_parts_by_name(saved, caplog):
    _, path = saved
    plain = load_checkpoint(path)
    with caplog.at_level("INFO", logger="loopy_core.checkpoint"):
        grown = load_checkpoint(path, config_changes={"a2l": {"keep_level": True}, "temporal": {"intra_clip": False}})
    assert grown.config.a2l.keep_level and not grown.config.temporal.intra_clip
    assert grown.denoiser.intra_clip is None and grown.audio_to_latents.level_proj is not None
    assert "4 new tensors initialised" in caplog.text and "dropped (denoiser.intra_clip." in caplog.text
    state = grown.state_dict()
    for key, value in plain.state_dict().items():  # every kept tensor is the file's
        if not key.startswith("denoiser.intra_clip."):
            assert torch.equal(state[key], value), key
    audio = torch.randn(1, 12, 5, 2, 32)
    torch.testing.assert_close(grown.audio_to_latents(audio), plain.audio_to_latents(audio))  # zero-init path
    with pytest.raises(ValueError, match="shape mismatches"):  # a change that reshapes kept tensors still fails
        load_checkpoint(path, config_changes={"a2l": {"num_tokens": 5}})
