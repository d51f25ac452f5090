"""Tests for loopy_core.audio: waveform preparation, wav2vec2 encoding (chunked, saved/loaded, ComfyUI's output), frame
interpolation, windows and the end-to-end `AudioFeatures`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from loopy_core import audio as A
from loopy_core.config import AudioConfig, LoopyConfig

SR = 16_000


@pytest.fixture(scope="module")
def audio_config() -> AudioConfig:
    return LoopyConfig.tiny().audio


@pytest.fixture(scope="module")
def encoder(audio_config):
    return A.tiny_wav2vec2(audio_config, seed=0)


def speechlike(seconds: float, sample_rate: int = SR, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """[C, T] amplitude-modulated tones plus noise, with a quiet stretch in the middle."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * sample_rate)) / sample_rate
    rows = []
    for c in range(channels):
        tone = torch.sin(2 * math.pi * (180 + 40 * c) * t) * (1 + torch.sin(2 * math.pi * 3 * t))
        rows.append(0.3 * tone + 0.05 * torch.randn(t.numel(), generator=g))
    wave = torch.stack(rows)
    quiet = (t > seconds * 0.4) & (t < seconds * 0.55)
    wave[:, quiet] *= 0.02
    return wave


# ---------------------------------------------------------------- prepare_waveform


@pytest.mark.parametrize("sample_rate", [8_000, 44_100, 48_000])
def test_prepare_waveform_resamples_stereo_to_mono(sample_rate):
    stereo = speechlike(1.5, sample_rate, channels=2)
    wave = A.prepare_waveform(stereo, sample_rate)
    assert wave.shape == (math.ceil(stereo.shape[1] * SR / sample_rate),) == (24_000,)
    assert wave.dtype == torch.float32
    assert abs(float(wave.mean())) < 1e-6


def test_prepare_waveform_layouts_and_downmix():
    stereo = speechlike(0.5, channels=2)
    batch = torch.stack([stereo, torch.zeros_like(stereo)])  # ComfyUI [B, C, T]: item 0 is used
    expected = stereo.mean(0) - stereo.mean()
    torch.testing.assert_close(A.prepare_waveform(batch, SR), expected)
    torch.testing.assert_close(A.prepare_waveform(stereo.numpy(), SR), expected)
    torch.testing.assert_close(A.prepare_waveform(stereo.mean(0).double(), SR), expected)
    # opposite-phase channels cancel to silence
    left = stereo[0]
    assert A.prepare_waveform(torch.stack([left, -left]), SR).abs().max() < 1e-6
    # int16 PCM is scaled to [-1, 1]
    pcm = (stereo[0].numpy() * 32767).astype(np.int16)
    torch.testing.assert_close(A.prepare_waveform(pcm, SR), stereo[0] - stereo[0].mean(), atol=1e-4, rtol=0)


def test_prepare_waveform_removes_dc_offset():
    t = torch.arange(SR) / SR
    tone = 0.25 * torch.sin(2 * math.pi * 100 * t)  # whole number of periods: mean 0
    torch.testing.assert_close(A.prepare_waveform(tone + 0.5, SR), tone, atol=1e-6, rtol=0)
    assert abs(float(A.prepare_waveform(tone + 0.5, 48_000).mean())) < 1e-6


def test_prepare_waveform_rejects_garbage():
    wave = torch.randn(SR)
    wave[[3, 10, 99]] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    with pytest.raises(ValueError, match=r"3 NaN/Inf sample\(s\) out of 16000"):
        A.prepare_waveform(wave, SR)
    with pytest.raises(ValueError, match="empty"):
        A.prepare_waveform(torch.zeros(0), SR)
    with pytest.raises(ValueError, match="empty"):
        A.prepare_waveform(np.zeros((2, 0), dtype=np.float32), SR)
    with pytest.raises(ValueError, match=r"1 sample\(s\) at 16000 Hz.*one 25 fps video frame"):
        A.prepare_waveform(torch.zeros(1), SR)
    with pytest.raises(ValueError, match="639 sample"):
        A.prepare_waveform(torch.zeros(639), SR)
    assert A.prepare_waveform(torch.zeros(640), SR).shape == (640,)  # exactly one frame is enough
    for bad_rate in (0, -16_000, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            A.prepare_waveform(torch.zeros(SR), bad_rate)
    with pytest.raises(ValueError, match="whole number"):
        A.prepare_waveform(torch.zeros(SR), 22_050.5)
    with pytest.raises(ValueError, match=r"\[T\], \[C, T\] or \[B, C, T\]"):
        A.prepare_waveform(torch.zeros(1, 1, 2, SR), SR)
    with pytest.raises(ValueError, match=r"\[T, C\].*waveform\.T"):
        A.prepare_waveform(np.zeros((SR, 2), dtype=np.float32), SR)
    with pytest.raises(TypeError, match="AUDIO is a dict"):
        A.prepare_waveform({"waveform": torch.zeros(1, 1, SR), "sample_rate": SR}, SR)


# ---------------------------------------------------------------- frames, interpolation, windows, rms


@pytest.mark.parametrize(
    ("num_samples", "sample_rate", "fps", "frames"),
    [
        (16_000, 16_000, 25, 25),
        (16_001, 16_000, 25, 26),
        (15_999, 16_000, 25, 25),
        (1, 16_000, 25, 1),
        (0, 16_000, 25, 0),
        (88_200, 44_100, 25, 50),
        (48_000 * 3, 48_000, 30, 90),
        (160_000, 16_000, 29.97, 300),
        (100_000, 16_000, 12.5, 79),
    ],
)
def test_frames_for_duration(num_samples, sample_rate, fps, frames):
    assert A.frames_for_duration(num_samples, sample_rate, fps) == frames


def test_window_features_clamps_edges_exactly():
    feats = torch.arange(4.0)[:, None, None].expand(4, 2, 3)  # feats[f] == f
    out = A.window_features(feats, window=2)
    assert out.shape == (4, 5, 2, 3)
    expected = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 3], [1, 2, 3, 3, 3]]).float()
    torch.testing.assert_close(out[:, :, 0, 0], expected, rtol=0, atol=0)
    assert torch.equal(out, expected[:, :, None, None].expand(4, 5, 2, 3))
    assert torch.equal(A.window_features(feats, window=0)[:, 0], feats)
    single = A.window_features(feats[:1], window=2)
    assert torch.equal(single, feats[:1, None].expand(1, 5, 2, 3))


def test_resample_to_fps_is_exact_for_a_linear_ramp():
    steps, frames = 100, 50
    slope = torch.randn(3, 4)
    offset = torch.randn(3, 4)
    t = torch.arange(steps, dtype=torch.float32)
    feats = t[:, None, None] * slope + offset  # [T50, L, D]
    out = A.resample_to_fps(feats, frames)
    assert out.shape == (frames, 3, 4)
    ft = torch.arange(frames, dtype=torch.float32) * (steps - 1) / (frames - 1)  # endpoints aligned
    torch.testing.assert_close(out, ft[:, None, None] * slope + offset, atol=1e-4, rtol=1e-5)
    assert torch.equal(A.resample_to_fps(feats, steps), feats)
    assert torch.equal(A.resample_to_fps(feats[:1], 3), feats[:1].expand(3, 3, 4))
    with pytest.raises(ValueError, match="num_frames"):
        A.resample_to_fps(feats, 0)


def test_frame_rms():
    wave = torch.full((SR,), 0.5)
    wave[::2] = -0.5
    wave[: SR // 2] = 0.0  # first half silent
    rms = A.frame_rms(wave, 30, 25)  # 25 frames of audio, then 5 past the end
    assert rms.shape == (30,) and rms.dtype == torch.float32
    torch.testing.assert_close(rms[:12], torch.zeros(12))
    torch.testing.assert_close(rms[13:25], torch.full((12,), 0.5))
    torch.testing.assert_close(rms[25:], torch.zeros(5))
    assert 0.0 < float(rms[12]) < 0.5  # straddles the onset (samples 7680..8320)


# ---------------------------------------------------------------- wav2vec2


def test_tiny_wav2vec2_is_deterministic_and_50hz(audio_config, encoder):
    state = torch.random.get_rng_state()
    again = A.tiny_wav2vec2(audio_config, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    other = A.tiny_wav2vec2(audio_config, seed=1)
    for (name, a), b, c in zip(
        encoder.state_dict().items(), again.state_dict().values(), other.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(encoder.state_dict().values(), other.state_dict().values()))
    assert A.encoder_frame_rate(encoder) == 50
    feats = A.encode_wav2vec2(encoder, torch.randn(SR))
    assert feats.shape == (49, audio_config.num_layers, audio_config.feature_dim)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()


def _zero_attention(model):
    for layer in model.encoder.layers:
        layer.attention.out_proj.weight.data.zero_()
        layer.attention.out_proj.bias.data.zero_()
    return model


def test_chunked_encoding_matches_unchunked(audio_config, encoder):
    wave = A.prepare_waveform(speechlike(7.3), SR)  # quiet stretch: per-chunk group-norm statistics would differ
    kwargs = {"chunk_seconds": 2.0, "context_seconds": 0.5}
    # without attention every frame sees < 0.5 s of audio, so chunking must be exact everywhere
    local = _zero_attention(A.tiny_wav2vec2(audio_config, seed=0))
    full = A.encode_wav2vec2(local, wave, chunk_seconds=math.inf)
    torch.testing.assert_close(A.encode_wav2vec2(local, wave, **kwargs), full, atol=1e-4, rtol=1e-4)
    norm = local.feature_extractor.conv_layers[0].layer_norm
    assert not norm._forward_hooks  # the whole-file statistics hook is removed again
    # with (random, hence diffuse) attention: only what attention sees beyond the context differs
    full = A.encode_wav2vec2(encoder, wave, chunk_seconds=math.inf)
    chunked = A.encode_wav2vec2(encoder, wave, **kwargs)
    assert chunked.shape == full.shape == (364, audio_config.num_layers, audio_config.feature_dim)
    assert float((chunked - full).norm() / full.norm()) < 1e-2
    assert float((chunked - full).abs().max()) < 0.05 * float(full.std())
    # a layer-norm ("large") feature encoder standardises the whole file before chunking
    large = _zero_attention(A.tiny_wav2vec2(audio_config, feat_extract_norm="layer", do_stable_layer_norm=True))
    torch.testing.assert_close(
        A.encode_wav2vec2(large, 3 * wave, **kwargs), A.encode_wav2vec2(large, wave, chunk_seconds=math.inf)
    )
    with pytest.raises(ValueError, match="must exceed"):
        A.encode_wav2vec2(encoder, wave, chunk_seconds=1.0, context_seconds=0.5)


def test_save_pretrained_then_load(tmp_path, encoder):
    folder = tmp_path / "tiny-wav2vec2"
    encoder.save_pretrained(folder)
    loaded = A.load_wav2vec2(folder)
    assert not loaded.training
    wave = A.prepare_waveform(speechlike(1.0), SR)
    torch.testing.assert_close(A.encode_wav2vec2(loaded, wave), A.encode_wav2vec2(encoder, wave), rtol=0, atol=0)
    half = A.load_wav2vec2(folder, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    assert A.encode_wav2vec2(half, wave).dtype == torch.float32


def test_load_wav2vec2_errors(tmp_path):
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(FileNotFoundError, match="no-such-encoder"):
        A.load_wav2vec2(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty has no config\.json"):
        A.load_wav2vec2(empty)
    single = tmp_path / "wav2vec2.safetensors"
    single.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="AudioEncoderLoader"):
        A.load_wav2vec2(single)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' model, not wav2vec2"):
        A.load_wav2vec2(bert)
    no_weights = tmp_path / "no-weights"
    A.tiny_wav2vec2(AudioConfig(num_layers=1, feature_dim=8)).config.save_pretrained(no_weights)
    with pytest.raises(FileNotFoundError, match="no-weights"):
        A.load_wav2vec2(no_weights)


# ---------------------------------------------------------------- end to end, ComfyUI's encoder output


def test_extract_audio_features(audio_config, encoder):
    stereo = speechlike(2.0, 44_100, channels=2)
    features = A.extract_audio_features(stereo[None], 44_100, 25, encoder, audio_config)
    assert features.feats.shape == (50, 2 * audio_config.window + 1, audio_config.num_layers, audio_config.feature_dim)
    assert features.feats.dtype == torch.float32 and features.feats.device.type == "cpu"
    assert (features.num_frames, features.fps, features.duration_s, features.sample_rate) == (50, 25.0, 2.0, 44_100)
    assert features.rms is not None and features.rms.shape == (50,)
    assert features.window == audio_config.window
    # the middle slot of every window is the frame itself
    torch.testing.assert_close(features.feats[1:, audio_config.window - 1], features.feats[:-1, audio_config.window])


def test_extract_audio_features_checks_encoder_and_length(audio_config, encoder):
    wave = speechlike(2.0)
    wide = A.tiny_wav2vec2(AudioConfig(num_layers=3, feature_dim=48))
    with pytest.raises(ValueError, match="3 layers of width 48 but this Loopy model expects 2 x 32"):
        A.extract_audio_features(wave, SR, 25, wide, audio_config)
    with pytest.raises(ValueError, match=r"2\.0 s long.*max_seconds=1\.5; raise max_seconds"):
        A.extract_audio_features(wave, SR, 25, encoder, audio_config, max_seconds=1.5)
    with pytest.raises(TypeError, match="Wav2Vec2Model"):
        A.extract_audio_features(wave, SR, 25, torch.nn.Linear(2, 2), audio_config)
    with pytest.raises(ValueError, match="fps"):
        A.extract_audio_features(wave, SR, 0, encoder, audio_config)


def comfy_encoder_output(model, wave16k: torch.Tensor, batch: int = 1) -> dict:
    """The dict ComfyUI's AudioEncoderModel.encode_audio returns (comfy/audio_encoders/audio_encoders.py), built
    from the transformers model: a tuple of L + 1 tensors [B, T50, D] (entry 0 = transformer input)."""
    waves = torch.stack([wave16k] + [torch.randn_like(wave16k) for _ in range(batch - 1)])  # [B, T]
    with torch.no_grad():
        out = model(waves, output_hidden_states=True)
    all_layers = (*out.hidden_states[:-1], out.last_hidden_state)
    return {
        "encoded_audio": out.last_hidden_state,
        "encoded_audio_all_layers": all_layers,
        "audio_samples": wave16k.numel(),
    }


def test_comfy_encoder_output_gives_identical_features(audio_config, encoder):
    stereo = speechlike(2.0, 44_100, channels=2)
    audio = {"waveform": stereo[None], "sample_rate": 44_100}  # ComfyUI AUDIO
    wave16k = A.prepare_waveform(audio["waveform"], audio["sample_rate"])
    assert wave16k.numel() == 32_000
    output = comfy_encoder_output(encoder, wave16k)
    ours50 = A.encode_wav2vec2(encoder, wave16k)
    assert torch.equal(A.from_comfy_encoder_output(output), ours50)
    batched = comfy_encoder_output(encoder, wave16k, batch=2)  # batch item 0 is used
    torch.testing.assert_close(A.from_comfy_encoder_output(batched), ours50, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(A.from_comfy_encoder_output(batched, batch_index=1), ours50, atol=1e-2)
    ours = A.extract_audio_features(audio["waveform"], audio["sample_rate"], 25, encoder, audio_config)
    for theirs in (
        A.audio_features_from_comfy(output, 25, audio_config),
        A.audio_features_from_comfy(output, 25, audio_config, audio=audio),
    ):
        assert theirs.num_frames == ours.num_frames
        assert torch.equal(theirs.feats, ours.feats)
    assert torch.equal(A.audio_features_from_comfy(output, 25, audio_config, audio=audio).rms, ours.rms)


def test_comfy_encoder_output_errors(audio_config, encoder):
    output = comfy_encoder_output(encoder, torch.randn(SR))
    old = {"encoded_audio": output["encoded_audio"]}
    with pytest.raises(ValueError, match="no 'encoded_audio_all_layers'.*AudioEncoderEncode"):
        A.from_comfy_encoder_output(old)
    with pytest.raises(ValueError, match="tuple of L \\+ 1 tensors"):
        A.from_comfy_encoder_output({"encoded_audio_all_layers": torch.stack(output["encoded_audio_all_layers"])})
    with pytest.raises(TypeError, match="AUDIO_ENCODER_OUTPUT"):
        A.from_comfy_encoder_output(output["encoded_audio"])
    no_samples = {k: v for k, v in output.items() if k != "audio_samples"}
    with pytest.raises(ValueError, match="no 'audio_samples'"):
        A.audio_features_from_comfy(no_samples, 25, audio_config)
    with pytest.raises(ValueError, match="2 layers of width 32 but this Loopy model expects 12 x 768"):
        A.audio_features_from_comfy(output, 25, AudioConfig())
    other = {"waveform": speechlike(3.0)[None], "sample_rate": SR}
    with pytest.raises(ValueError, match="pass the same AUDIO that was encoded"):
        A.audio_features_from_comfy(output, 25, audio_config, audio=other)


def test_encoder_in_training_mode_is_refused(audio_config):
    model = A.tiny_wav2vec2(audio_config).train()
    with pytest.raises(ValueError, match=r"training mode.*eval\(\)"):
        A.encode_wav2vec2(model, torch.randn(SR))


def test_audio_features_validates_shapes():
    with pytest.raises(ValueError, match=r"\[F=3, 2w\+1, L, D\]"):
        A.AudioFeatures(feats=torch.zeros(4, 5, 2, 8), num_frames=3, fps=25, duration_s=0.12, sample_rate=SR)
    with pytest.raises(ValueError, match=r"rms must be \[F=4\]"):
        A.AudioFeatures(torch.zeros(4, 5, 2, 8), 4, 25, 0.16, SR, rms=torch.zeros(5))


@pytest.mark.parametrize("kind", ["logmel", "wav2vec2"])
def test_streaming_features_match_whole_file_features(kind):
    """Clip-by-clip features (flat memory) equal the whole-file ones: exactly for log-mel, and for wav2vec2 up to
    the attention beyond the 1 s context (a random tiny model attends everywhere; trained ones mostly nearby)."""
    from loopy_core.audio import StreamingAudioFeatures, extract_audio_features, tiny_wav2vec2

    config = LoopyConfig.demo().audio if kind == "logmel" else LoopyConfig.tiny().audio
    encoder = None if kind == "logmel" else tiny_wav2vec2(config)
    wave = (0.2 * np.random.default_rng(0).standard_normal(16000 * 7)).astype(np.float32)
    full = extract_audio_features(wave, 16000, 25, encoder, config)
    stream = extract_audio_features(wave, 16000, 25, encoder, config, streaming=True)
    assert isinstance(stream, StreamingAudioFeatures) and stream.num_frames == full.num_frames == 175
    for start in (0, 12, 84, 168):  # the last clip runs past the end: the last frame repeats
        a, b = full.frames(start, 12), stream.frames(start, 12)
        assert a.shape == b.shape == (12, 5, config.num_layers, config.feature_dim)
        assert ((a - b).norm() / a.norm()).item() < (1e-5 if kind == "logmel" else 5e-3)
