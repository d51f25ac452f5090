"""The synthetic world: speech sources, envelope, renderer, ground-truth dynamics, dataset files and `loopy synth`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from loopy_core.synthetic import (
    FaceIdentity,
    FaceState,
    babble,
    espeak_speech,
    make_dynamics,
    make_sample,
    neutral_face,
    read_index,
    read_truth,
    render_faces,
    speech_envelope,
    write_dataset,
)
from loopy_core.synthetic.speech import TARGET_RMS, make_speech, normalize_loudness
from loopy_core.synthetic.world import MOUTH_LAG_FRAMES, child_seeds, mouth_from_envelope, speech_activity
from loopy_core.video import read_video

SR = 16000
FPS = 25

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def sample():
    return make_sample(7, 6.0, 64)


# --- speech -------------------------------------------------------------------------------------------------------
def test_babble_is_deterministic_speech_like_and_normalised():
    wave, info = babble(6.0, seed=3)
    again, _ = babble(6.0, seed=3)
    other, _ = babble(6.0, seed=4)
    assert wave.dtype == np.float32 and wave.shape == (6 * SR,)
    assert np.array_equal(wave, again) and not np.array_equal(wave, other)
    assert info["source"] == "babble" and 95 <= info["f0_hz"] <= 230
    assert np.abs(wave).max() < 1.0
    env = speech_envelope(wave, SR, FPS)
    assert env.shape == (150,) and env.min() >= 0 and env.max() == pytest.approx(1.0)
    speaking = (env > 0.15).mean()
    assert 0.3 < speaking < 0.9  # syllables and pauses
    # syllables: the envelope moves at a few Hz (its 1-frame autocorrelation is far from 1)
    assert np.corrcoef(env[:-1], env[1:])[0, 1] < 0.9
    active = env > 0.15
    hop = SR // FPS
    rms = np.sqrt(np.mean(wave[: len(env) * hop].reshape(-1, hop)[active] ** 2))
    assert 0.5 * TARGET_RMS < rms < 2.0 * TARGET_RMS


def test_speech_envelope_on_known_signals():
    t = np.arange(SR) / SR
    tone = 0.5 * np.sin(2 * np.pi * 200 * t)
    tone[SR // 2 :] *= 0.25  # second half quieter
    env = speech_envelope(tone, SR, FPS)
    assert env.shape == (25,)
    assert env[:12] == pytest.approx(np.ones(12), abs=1e-3)
    assert env[13:] == pytest.approx(np.full(12, 0.25), abs=1e-3)
    assert np.array_equal(speech_envelope(np.zeros((2, SR)), SR, FPS, num_frames=30), np.zeros(30, np.float32))
    assert speech_envelope(tone, SR, FPS, num_frames=40)[30:].max() == 0.0  # past the end of the audio
    with pytest.raises(ValueError, match="shape"):
        speech_envelope(np.zeros((2, 2, 10)), SR)
    with pytest.raises(ValueError, match="positive"):
        speech_envelope(tone, SR, fps=0)


def test_normalize_loudness_leaves_silence_alone():
    assert np.array_equal(normalize_loudness(np.zeros(1000)), np.zeros(1000, np.float32))


def test_speech_kind_is_checked():
    with pytest.raises(ValueError, match="speech must be one of"):
        make_speech("opera", 1.0)
    with pytest.raises(ValueError, match="seconds"):
        babble(0.0)


@needs_espeak
def test_espeak_speech_is_deterministic_and_varied():
    wave, info = espeak_speech(3.0, seed=5)
    again, info_again = espeak_speech(3.0, seed=5)
    assert wave.shape == (3 * SR,) and wave.dtype == np.float32
    assert np.array_equal(wave, again) and info == info_again
    assert info["source"] == "espeak" and 130 <= info["rate"] <= 190 and info["sentences"]
    env = speech_envelope(wave, SR, FPS)
    assert (env > 0.15).mean() > 0.3 and np.corrcoef(env[:-1], env[1:])[0, 1] < 0.95
    voices = {espeak_speech(0.5, seed=s)[1]["voice"] for s in range(6)}
    assert len(voices) >= 3  # several languages / voice variants


# --- faces --------------------------------------------------------------------------------------------------------
def test_renderer_is_deterministic_at_any_size():
    identity = FaceIdentity.random(np.random.default_rng(0))
    state = FaceState.neutral(4)
    state.mouth_open[:] = [0.0, 0.3, 0.6, 1.0]
    a = render_faces(identity, state, 48)
    assert a.shape == (4, 48, 48, 3) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, render_faces(identity, state, 48))
    assert torch.equal(a, render_faces(identity, state, 48, chunk=1))  # chunking changes nothing
    big = render_faces(identity, state, 96)
    down = torch.nn.functional.avg_pool2d(big.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    assert (down - a).abs().mean() < 0.01  # the same picture at another resolution
    # a wider-open mouth shows more mouth colour
    reddish = ((a[..., 0] - a[..., 1]) > 0.4).sum((1, 2))
    assert reddish.tolist() == sorted(reddish.tolist()) and reddish[-1] > reddish[0] + 10
    corner = a[0, 0, 0]
    assert torch.allclose(corner, torch.tensor(identity.background), atol=1e-6)


def test_identity_colours_stay_apart_and_round_trip():
    for seed in range(30):
        identity = FaceIdentity.random(np.random.default_rng(seed))
        skin, hair, bg = (np.array(c) for c in (identity.skin, identity.hair, identity.background))
        assert min(np.linalg.norm(skin - hair), np.linalg.norm(skin - bg), np.linalg.norm(hair - bg)) > 0.3
        assert FaceIdentity.from_dict(json.loads(json.dumps(identity.to_dict()))) == identity
    with pytest.raises(ValueError, match="nose"):
        FaceIdentity.from_dict({"nose": 1.0})


def test_wide_appearance_draws_textured_lit_identities_and_leaves_plain_unchanged():
    # the default space draws what it drew before `appearance` existed (seed 1's identity, pinned from then)
    plain = FaceIdentity.random(np.random.default_rng(child_seeds(1, 3)[1]))
    assert plain.texture == 0.0 and plain.light == (0.0, 0.0)
    assert (plain.skin, plain.hair, plain.background, plain.face_width) == (
        (0.9393, 0.8311, 0.7293), (0.832, 0.6924, 0.4777), (0.2197, 0.5939, 0.4981), 0.2409)
    wide = [FaceIdentity.random(np.random.default_rng(seed), "wide") for seed in range(40)]
    for identity in wide:
        skin, hair, bg = (np.array(c) for c in (identity.skin, identity.hair, identity.background))
        assert min(np.linalg.norm(skin - hair), np.linalg.norm(skin - bg), np.linalg.norm(hair - bg)) > 0.3
        assert 0.01 <= identity.texture <= 0.04 and np.hypot(*identity.light) <= 0.08 + 1e-6
        assert FaceIdentity.from_dict(json.loads(json.dumps(identity.to_dict()))) == identity
    # the backgrounds leave the plain palette's neighbourhood: a wider space than the five jittered entries
    palette = np.array([FaceIdentity.random(np.random.default_rng(s)).background for s in range(200)])
    far = [min(np.linalg.norm(palette - np.array(i.background), axis=1)) for i in wide]
    assert max(far) > 0.15
    # texture and light vary brightness inside the skin and the background, and the texture moves with the head
    identity = wide[0]
    state = FaceState.neutral(2)
    state.tx[1] = 0.06
    frames = render_faces(identity, state, 64)
    flat = render_faces(FaceIdentity.from_dict({**identity.to_dict(), "texture": 0.0, "light": [0.0, 0.0]}), state, 64)
    assert (frames - flat).abs().amax() > 0.005 and torch.equal(flat[0, 0, 0], torch.tensor(identity.background))
    cheek = (slice(34, 40), slice(24, 30))  # on the face in both frames
    moved = (slice(34, 40), slice(28, 34))  # the same skin, 0.06 * 64 = 3.8 px to the right
    skin_gain = frames[..., 1] / flat[..., 1]
    assert (skin_gain[0][cheek] - skin_gain[1][moved]).abs().mean() < (skin_gain[0][cheek] - skin_gain[1][cheek]).abs().mean()
    with pytest.raises(ValueError, match="appearance"):
        FaceIdentity.random(np.random.default_rng(0), "photo")


def test_face_state_and_render_checks():
    with pytest.raises(ValueError, match="same length"):
        FaceState(np.zeros(3), np.ones(3), np.zeros(2), np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="size"):
        render_faces(FaceIdentity(), FaceState.neutral(1), 8)


# --- dynamics -----------------------------------------------------------------------------------------------------
def test_mouth_follows_the_envelope_with_a_fixed_lag(sample):
    truth = sample.truth["frames"]
    assert truth["mouth_open"] == pytest.approx(mouth_from_envelope(truth["envelope"]), abs=1e-6)
    env, mouth = truth["envelope"], truth["mouth_open"]
    lag = MOUTH_LAG_FRAMES
    corr = {k: np.corrcoef(mouth[k:], env[: len(env) - k])[0, 1] for k in range(0, 4)}
    assert max(corr, key=corr.get) == lag and corr[lag] > 0.9
    assert truth["mouth_width"] == pytest.approx(1.0 - 0.25 * mouth, abs=1e-6)


def test_sway_amplitude_rises_with_speech_activity():
    silent, talking = np.zeros(500), np.tile([0.0, 0.5, 1.0, 0.5], 125)
    quiet_state, sway = make_dynamics(silent, FPS, np.random.default_rng(1))
    loud_state, sway_again = make_dynamics(talking, FPS, np.random.default_rng(1))
    assert sway["period_s"] == sway_again["period_s"] and 3.0 <= sway["period_s"] <= 6.0
    tail = slice(100, None)  # after the 3 s activity window has filled
    ratio = loud_state.tx[tail].std() / quiet_state.tx[tail].std()
    assert ratio == pytest.approx((0.35 + 0.65 * 0.75) / 0.35, rel=0.01)  # 3 of 4 frames count as speaking
    activity = speech_activity(talking, FPS)
    assert activity[0] == 0.0 and activity[-1] == pytest.approx(0.75, abs=0.015)  # 3 s window of 75 frames


def test_sway_period_and_phase_persist_over_the_video():
    from loopy_core.eval.metrics import dominant_period

    sample = make_sample(11, 12.0, 32)
    truth = sample.truth
    period = truth["sway"]["period_s"]
    gain = 0.35 + 0.65 * truth["frames"]["activity"]
    phase_track = truth["frames"]["tx"] / gain  # the oscillator itself
    for start in (0, 125):  # any 5 s of history reveals the same period
        found = dominant_period(phase_track[start : start + 125], FPS)["period_s"]
        assert found == pytest.approx(period, rel=0.03)
    t = np.arange(len(phase_track)) / FPS
    expected = truth["sway"]["amplitude"] * np.sin(2 * np.pi * t / period + truth["sway"]["phase"])
    assert phase_track == pytest.approx(expected, abs=1e-5)


def test_blinks_come_at_random_intervals(sample):
    blink = sample.truth["frames"]["blink"]
    assert blink.min() == 0.0 and 0.9 < blink.max() <= 1.0
    starts = np.flatnonzero((blink[1:] > 0) & (blink[:-1] == 0))
    assert len(starts) >= 1 and np.all(np.diff(starts) >= 0.4 * FPS)


def test_make_sample_shapes_and_determinism(sample):
    again = make_sample(7, 6.0, 64)
    other = make_sample(8, 6.0, 64)
    assert sample.frames.shape == (150, 64, 64, 3) and sample.audio.shape == (150 * SR // FPS,)
    assert torch.equal(sample.frames, again.frames) and np.array_equal(sample.audio, again.audio)
    assert json.dumps(sample.identity.to_dict()) == json.dumps(again.identity.to_dict())
    assert not torch.equal(sample.frames, other.frames)
    for name, track in sample.truth["frames"].items():
        assert track.shape == (150,), name
        assert np.array_equal(track, again.truth["frames"][name]), name
    assert torch.equal(sample.reference, neutral_face(sample.identity, 64))
    with pytest.raises(ValueError, match="seconds"):
        make_sample(0, -1.0)


# --- dataset ------------------------------------------------------------------------------------------------------
def test_write_dataset_is_deterministic_and_readable(tmp_path):
    a = write_dataset(tmp_path / "a", videos=2, seconds=2.0, size=32, seed=4)
    b = write_dataset(tmp_path / "b", videos=2, seconds=2.0, size=32, seed=4)
    assert a == b and read_index(tmp_path / "a") == json.loads(json.dumps(a))
    assert [v["id"] for v in a["videos"]] == ["000000", "000001"]
    for entry in a["videos"]:
        ta = (tmp_path / "a" / entry["truth"]).read_text()
        assert ta == (tmp_path / "b" / entry["truth"]).read_text()
        truth = read_truth(tmp_path / "a" / entry["truth"])
        assert truth["format"] == "loopy-synthetic-v1" and truth["num_frames"] == 50 == entry["num_frames"]
        assert set(truth["frames"]) >= {"mouth_open", "tx", "ty", "roll", "yaw", "blink"}
        assert all(len(v) == 50 for v in truth["frames"].values())
        va, vb = read_video(tmp_path / "a" / entry["video"]), read_video(tmp_path / "b" / entry["video"])
        assert va.frames.shape == (50, 32, 32, 3)
        # same pixels; a rounding flip of threaded float reductions may move a value by one level (seen once)
        assert np.abs(va.frames.astype(int) - vb.frames.astype(int)).max() <= 1
        assert va.sample_rate == SR and abs(va.audio.shape[1] / SR - 2.0) <= 1 / FPS
        assert (tmp_path / "a" / entry["reference"]).is_file()
    # the stored truth is the truth of the sample with the stored seed
    first = make_sample(a["videos"][0]["seed"], 2.0, 32)
    stored = read_truth(tmp_path / "a" / "000000.json")
    assert stored["frames"]["tx"] == pytest.approx(first.truth["frames"]["tx"], abs=1e-5)


def test_write_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="videos"):
        write_dataset(tmp_path, videos=0, seconds=1.0)
    with pytest.raises(ValueError, match="even"):
        write_dataset(tmp_path, videos=1, seconds=1.0, size=33)
    with pytest.raises(ValueError, match="speech"):
        write_dataset(tmp_path, videos=1, seconds=1.0, speech="opera")
    with pytest.raises(FileNotFoundError, match="index.json"):
        read_index(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_truth(tmp_path / "bad.json")


def test_cli_synth(tmp_path, capsys):
    from loopy_core.cli import main

    assert main(["synth", "--out", str(tmp_path / "ds"), "--videos", "1", "--seconds", "1", "--size", "32"]) == 0
    assert "wrote 1 video(s)" in capsys.readouterr().out
    index = read_index(tmp_path / "ds")
    assert index["size"] == 32 and index["speech"] == "babble" and len(index["videos"]) == 1
    assert main(["synth", "--out", str(tmp_path / "x"), "--videos", "1", "--seconds", "1", "--size", "31"]) == 2
    assert "size must be an even integer" in capsys.readouterr().err


@needs_espeak
def test_cli_synth_with_espeak(tmp_path):
    from loopy_core.cli import main

    assert main(["synth", "--out", str(tmp_path), "--videos", "1", "--seconds", "1.5", "--speech", "espeak"]) == 0
    truth = read_truth(tmp_path / "000000.json")
    assert truth["speech"]["source"] == "espeak" and truth["speech"]["voice"]
    assert truth["frames"]["envelope"].max() == pytest.approx(1.0)


def test_write_dataset_records_the_appearance(tmp_path):
    index = write_dataset(tmp_path / "wide", 1, 0.4, size=32, seed=3, appearance="wide")
    assert index["appearance"] == "wide"
    truth = read_truth(tmp_path / "wide" / index["videos"][0]["truth"])
    assert truth["identity"]["texture"] > 0
    with pytest.raises(ValueError, match="appearance must be one of"):
        write_dataset(tmp_path / "bad", 1, 0.4, size=32, appearance="photo")
    assert not (tmp_path / "bad").exists()
