"""`python -m training.probe_audio`: teacher-forced audio sensitivity of a model, per noise level and per block."""

from __future__ import annotations

import json

import pytest
import torch

from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel
from training.probe_audio import audio_modules, held_out_batch, main, probe, ridge_correlation


@pytest.fixture(scope="module")
def shards(tmp_path_factory, make_tiny_world):
    root = tmp_path_factory.mktemp("probe")
    return root, make_tiny_world(root, videos=2, seconds=1.2, seed=3)


def _model(seed: int = 0) -> LoopyModel:
    torch.manual_seed(seed)
    model = LoopyModel(LoopyConfig.tiny())
    # random cross-attention weights are small; make the audio path matter as a trained one would
    for name, module in audio_modules(model.denoiser).items():
        module.to_out[0].weight.data.mul_(20)
    return model.eval()


def test_a_live_audio_path_moves_the_mouth_and_a_zeroed_one_does_not(shards):
    root, _ = shards
    model = _model()
    batch = held_out_batch(root / "shards", model.config, clips=3, seed=0)
    live = probe(model, batch, levels=(999, 300))
    assert [r["timestep"] for r in live["rows"]] == [999, 300]
    names = list(audio_modules(model.denoiser))
    assert names and all(n.endswith("attn2") for n in names)  # the tiny config has no timestep path
    for row in live["rows"]:
        assert row["change_none"] > 1e-4 and row["change_swap"] > 1e-4
        assert set(row["blocks"]) == set(names)
        assert all(b["reach"] > 0 and b["knockout"] > 0 for b in row["blocks"].values())
        assert row["audio_gain"] == pytest.approx(1 - row["error_true"] / row["error_none"])

    # the same model with its audio path zeroed: the motion tokens no longer depend on the audio
    model.audio_to_latents.norm_out.weight.data.zero_()
    model.audio_to_latents.norm_out.bias.data.zero_()
    dead = probe(model, batch, levels=(999, 300))
    for row in dead["rows"]:
        assert row["change_none"] == 0 and row["change_swap"] == 0 and row["audio_gain"] == 0
        assert all(b["reach"] == 0 for b in row["blocks"].values())
        assert row["error_true"] == pytest.approx(row["error_none"])


def test_knocking_out_every_block_at_once_is_the_no_audio_prediction(shards):
    """The knockout replaces one block's attn2 output by its no-audio output; doing it at every block must give
    exactly the no-audio x0 (the hooks touch nothing else)."""
    from training.probe_audio import hooks

    root, _ = shards
    model = _model(1)
    batch = held_out_batch(root / "shards", model.config, clips=2, seed=1)
    ref_tokens, motion_feats = model.reference_net(batch["ref"], batch["motion"])
    on = torch.ones(2, dtype=torch.bool)
    true_tokens = model.audio_to_latents(batch["audio"], on)
    none_tokens = model.audio_to_latents(batch["audio"], ~on)
    x, t, modules = torch.randn_like(batch["target"]), torch.tensor([500, 500]), audio_modules(model.denoiser)
    with torch.no_grad():
        record = {}
        with hooks(modules, record=record):
            none = model.denoiser(x, t, none_tokens, ref_tokens, motion_feats)
        with hooks(modules, replace={k: out for k, (_, out) in record.items()}):
            knocked = model.denoiser(x, t, true_tokens, ref_tokens, motion_feats)
        live = model.denoiser(x, t, true_tokens, ref_tokens, motion_feats)
    assert torch.allclose(knocked, none, atol=1e-5)
    assert not torch.allclose(live, none, atol=1e-3)


def test_ridge_read_out_finds_a_linear_signal_and_not_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g).double().numpy()
    y = x[:, 2] * 2 - x[:, 4]
    train = torch.arange(400).numpy() < 200
    assert ridge_correlation(x, y, train) > 0.99
    noise = torch.randn(400, generator=g).double().numpy()
    assert abs(ridge_correlation(x, noise, train)) < 0.2


def test_command_line_report(shards, tmp_path, capsys):
    root, ckpt = shards
    out = tmp_path / "probe.json"
    assert main(["--model", str(ckpt), "--data", str(root / "shards"), "--clips", "2", "--levels", "999",
                 "--no-depth", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["clips"] == 2 and len(report["rows"]) == 1 and "blocks" not in report["rows"][0]
    assert set(report["readout"]) == {"features", "feature_mean", "a2l_input", "motion_tokens"}
    assert all(-1 <= v <= 1 for v in report["readout"].values())
    assert "mouth region" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--model", str(ckpt), "--data", str(root / "shards"), "--levels", "1000"])
    with pytest.raises(SystemExit):
        main(["--model", str(ckpt), "--data", str(root / "shards"), "--clips", "1"])
