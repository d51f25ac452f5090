"""`python -m training.eval_synthetic`: generate held-out synthetic videos with the shared pipeline and score them."""

from __future__ import annotations

import json

import pytest
import torch

from loopy_core.audio import tiny_wav2vec2
from loopy_core.checkpoint import save_checkpoint
from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel
from loopy_core.pipeline import LoopyPipeline
from loopy_core.synthetic.dataset import write_dataset
from training.eval_synthetic import main, truth_motion_statistics


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsyn")
    write_dataset(root / "videos", videos=2, seconds=1.2, size=64, seed=5)
    torch.manual_seed(0)
    cfg = LoopyConfig.tiny()
    ckpt = save_checkpoint(LoopyModel(cfg), root / "tiny.safetensors", audio_encoder=tiny_wav2vec2(cfg.audio))
    return root, ckpt


def test_report_rows_and_sampling_options(setup, monkeypatch, capsys):
    root, ckpt = setup
    seen = []
    real = LoopyPipeline.__call__
    monkeypatch.setattr(LoopyPipeline, "__call__", lambda self, image, audio, options, **k: seen.append(options) or
                        real(self, image, audio, options, **k))
    out = root / "report.json"
    argv = ["--model", str(ckpt), "--videos", str(root / "videos"), "--seconds", "1.0", "--steps", "1",
            "--scheduler", "dpmpp_2m", "--guidance-interval", "0,0.5", "--motion-stats", "truth", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["id"] for r in report["rows"]] == ["000000", "000001"] and report["motion_stats"] == "truth"
    assert all(r["seconds"] == 1.0 and -1.0 <= r["sync"] <= 1.0 for r in report["rows"])
    assert set(report["mean"]) >= {"sync", "motion_amplitude_ratio", "drift_face", "seam_jitter", "identity_psnr16",
                                   "identity_error_ratio", "identity_error_ratio_last"}
    for r in report["rows"]:  # a random tiny model's face is not its portrait's; the truth's is
        assert len(r["identity_psnr16_curve"]) == len(r["identity_psnr16_curve_ground_truth"]) == 1
        assert r["identity_psnr16_ground_truth"] > 20 > r["identity_psnr16"] and r["identity_error_ratio"] > 10
        assert r["identity_psnr16_curve"][0] == pytest.approx(r["identity_psnr16"])
    assert [s for s, _ in report["identity_psnr16_curve"]["generated"]] == [0]
    assert [o.scheduler for o in seen] == ["dpmpp_2m"] * 2 and seen[0].guidance_interval == (0.0, 0.5)
    truth = json.loads((root / "videos" / "000000.json").read_text())
    expected = truth_motion_statistics(truth, 25, 25.0, 12)
    assert torch.equal(seen[0].motion_stats, expected) and not torch.equal(seen[0].motion_stats, seen[1].motion_stats)
    printed = capsys.readouterr().out
    assert "mean" in printed and "identity: face-box 16x16 PSNR" in printed


def test_truth_statistics_need_one_clip(setup):
    root, _ = setup
    truth = json.loads((root / "videos" / "000000.json").read_text())
    assert truth_motion_statistics(truth, 24, 25.0, 12).shape == (2,)
    with pytest.raises(ValueError, match="at least 12 frames"):
        truth_motion_statistics(truth, 11, 25.0, 12)
