"""Temporal segment module: groups, averages, padding, ablations."""

from __future__ import annotations

import pytest
import torch

from loopy_core.config import LoopyConfig, TSMConfig
from loopy_core.models.tsm import TemporalSegmentModule, tsm_groups


def ramp_history(T: int) -> torch.Tensor:
    """History whose frame t (oldest first) has value t everywhere: `[1, 1, T, 2, 2]`."""
    return torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1).expand(1, 1, T, 2, 2).clone()


def test_paper_setting_maps_124_frames_to_20_latents():
    tsm = TemporalSegmentModule(TSMConfig())
    assert tsm.span == 124 and tsm.num_latents == 20
    assert LoopyConfig.sd15().history_frames == 124 and LoopyConfig.sd15().num_motion_frames == 20


def test_groups_hand_computed_small_case():
    # s=2, r=2, K=3: segment 0 = frames -1, -2 (groups of 1); segment 1 = -3..-6 (groups of 2);
    # segment 2 = -7..-14 (groups of 4). Oldest first.
    assert tsm_groups(2, 2, 3) == [[-14, -13, -12, -11], [-10, -9, -8, -7], [-6, -5], [-4, -3], [-2], [-1]]


def test_mean_reduction_values():
    tsm = TemporalSegmentModule(TSMConfig(s=2, r=2, K=3))
    hist = ramp_history(14)  # frame index t has value t; offset -k is value 14 - k
    out = tsm(hist, torch.zeros(1, 1, 2, 2))
    expected = torch.tensor([1.5, 5.5, 8.5, 10.5, 12.0, 13.0])  # means of 0..3, 4..7, 8..9, 10..11, 12, 13
    assert out.shape == (1, 1, 6, 2, 2)
    torch.testing.assert_close(out[0, 0, :, 0, 0], expected)


def test_middle_reduction_picks_middle_frame():
    tsm = TemporalSegmentModule(TSMConfig(s=2, r=2, K=3, reduce="middle"))
    out = tsm(ramp_history(14), torch.zeros(1, 1, 2, 2))
    torch.testing.assert_close(out[0, 0, :, 0, 0], torch.tensor([2.0, 6.0, 9.0, 11.0, 12.0, 13.0]))


def test_r1_gives_last_sK_frames():
    tsm = TemporalSegmentModule(TSMConfig(s=4, r=1, K=5))
    assert tsm.span == 20
    out = tsm(ramp_history(50), torch.zeros(1, 1, 2, 2))
    torch.testing.assert_close(out[0, 0, :, 0, 0], torch.arange(30, 50, dtype=torch.float32))


def test_classic_four_motion_frames():
    tsm = TemporalSegmentModule(TSMConfig(s=4, r=1, K=1))
    out = tsm(ramp_history(9), torch.zeros(1, 1, 2, 2))
    torch.testing.assert_close(out[0, 0, :, 0, 0], torch.tensor([5.0, 6.0, 7.0, 8.0]))


@pytest.mark.parametrize(
    "pad,fill", [("reference", -1.0), ("zeros", 0.0), ("first", 100.0)]
)
def test_padding_at_video_start(pad, fill):
    tsm = TemporalSegmentModule(TSMConfig(s=2, r=2, K=2, pad=pad))  # span 6
    hist = ramp_history(2) + 100.0  # two real frames: 100, 101
    ref = torch.full((1, 1, 2, 2), -1.0)
    padded = tsm.pad_history(hist, ref)
    assert padded.shape[2] == 6
    torch.testing.assert_close(padded[0, 0, :, 0, 0], torch.tensor([fill] * 4 + [100.0, 101.0]))


def test_empty_history_is_all_reference():
    tsm = TemporalSegmentModule(TSMConfig())
    ref = torch.randn(2, 4, 3, 3)
    out = tsm(None, ref)
    torch.testing.assert_close(out, ref[:, :, None].expand(2, 4, 20, 3, 3))


def test_long_history_uses_only_the_span():
    tsm = TemporalSegmentModule(TSMConfig())
    hist = torch.randn(1, 2, 300, 2, 2)
    torch.testing.assert_close(tsm(hist, torch.zeros(1, 2, 2, 2)), tsm(hist[:, :, -124:], torch.zeros(1, 2, 2, 2)))


def test_bad_history_shape_is_reported():
    tsm = TemporalSegmentModule(TSMConfig())
    with pytest.raises(ValueError, match="history must be"):
        tsm(torch.zeros(1, 3, 5, 2, 2), torch.zeros(1, 4, 2, 2))
