"""`loopy inspect` and `loopy init` through the real CLI entry point."""

from __future__ import annotations

import json

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
    assert f["reference_net"] > 0 and f["denoiser_step_3_branches"] > 0 and f["steps"] == 25
    assert f["clip_total"] == f["reference_net"] + f["audio_to_latents"] + 25 * f["denoiser_step_3_branches"]
    assert f["denoiser_per_frame_evaluation"] == f["denoiser_step_3_branches"] // 36
