"""`python -m training.probe_reference`: whether a model's output takes its appearance from the reference given."""

from __future__ import annotations

import json

import pytest
import torch

from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel
from training.probe_audio import held_out_batch
from training.probe_reference import FIRST_CLIP, MID_VIDEO, appearance, follow, main, probe


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_tiny_world):
    root = tmp_path_factory.mktemp("probe_ref")
    return root, make_tiny_world(root, videos=3, seconds=1.2, seed=4)


def _batch(root, model, clips=4):
    batch = held_out_batch(root / "shards", model.config, clips=clips, seed=2)
    assert not torch.equal(batch["ref"], batch["ref"].roll(1, dims=0))  # clips of different videos
    return batch


def test_follow_measures_the_share_of_the_other_source_taken():
    g = torch.Generator().manual_seed(0)
    source, other = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    base = torch.randn(3, 4, 12, 8, 8, generator=g)
    step = (other - source)[:, :, None]
    assert follow(base, base, source, other) == 0.0
    assert follow(base + 0.5 * step, base, source, other) == pytest.approx(0.5, abs=1e-5)
    assert follow(base + step, base, source, other) == pytest.approx(1.0, abs=1e-5)
    assert follow(base - 0.25 * step, base, source, other) == pytest.approx(-0.25, abs=1e-5)
    # fine detail that pooling removes does not count as appearance
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1.0
    assert follow(base + checker, base, source, other) == pytest.approx(0.0, abs=1e-5)
    assert appearance(base).shape == (3, 12, 4 * 4 * 4)
    with pytest.raises(ValueError, match="same appearance"):
        follow(base, base, source, source)


def _model() -> LoopyModel:
    torch.manual_seed(0)
    model = LoopyModel(LoopyConfig.tiny()).eval()
    # the temporal layers start as identities (zero output projections); open them as training would
    for name, param in model.denoiser.named_parameters():
        if name.endswith("temporal_transformer.proj_out.weight"):
            torch.nn.init.normal_(param, std=0.2)
    return model


def test_swapping_the_reference_moves_the_output_and_a_constant_reference_does_not(shards, monkeypatch):
    root, _ = shards
    model = _model()
    batch = _batch(root, model)
    live = probe(model, batch, levels=(999, 300))
    assert [r["timestep"] for r in live["rows"]] == [999, 300] and live["clips"] == 4
    for row in live["rows"]:
        assert {f"error_{c}" for c in MID_VIDEO + FIRST_CLIP} <= set(row)
        assert row["change_ref_swap"] > 1e-4 and row["change_ref_none"] > 1e-4 and row["change_motion_swap"] > 1e-4
        assert row["follow_ref"] != 0 and row["follow_motion"] != 0
        assert row["ref_gain"] == pytest.approx(1 - row["error_true"] / row["error_ref_none"])

    # the same model fed one constant reference whatever it is given: swapping the reference changes nothing
    # mid-video, while the first clip still changes through the motion frames the TSM makes from the reference
    real = type(model.reference_net).forward

    def constant_reference(self, ref_latents, motion_latents=None):
        return real(self, None if ref_latents is None else torch.ones_like(ref_latents), motion_latents)

    monkeypatch.setattr(type(model.reference_net), "forward", constant_reference)
    dead = probe(model, batch, levels=(999, 300))
    for row in dead["rows"]:
        assert row["change_ref_swap"] == 0 and row["follow_ref"] == 0 and row["error_ref_swap"] == row["error_true"]
        assert row["change_start_swap"] > 1e-4 and row["change_motion_swap"] > 1e-4


def test_command_line_report(shards, tmp_path, capsys):
    root, ckpt = shards
    out = tmp_path / "probe.json"
    assert main(["--model", str(ckpt), "--data", str(root / "shards"), "--clips", "3", "--levels", "999",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["clips"] == 3 and len(report["rows"]) == 1
    assert {"follow_start", "follow_ref", "follow_motion", "ref_gain"} <= set(report["rows"][0])
    assert "reference swap" in capsys.readouterr().out
    for bad in (["--levels", "1000"], ["--clips", "1"], ["--levels", "x"]):
        with pytest.raises(SystemExit):
            main(["--model", str(ckpt), "--data", str(root / "shards"), *bad])
