"""Audio features: waveform -> 16 kHz mono -> wav2vec2 all layers -> interpolate to fps -> [F, 5, L, D] windows.

Paper: Loopy (Jiang et al., ICLR 2025) Sec. 3.3 conditions every video frame on wav2vec2 features of the frames
around it. `DESIGN.md` section 2 fixes the details used here:

1. `prepare_waveform`: any ComfyUI `AUDIO` / numpy / torch waveform -> float32 mono at 16 kHz, DC offset removed,
   garbage (empty, NaN/Inf, shorter than one 25 fps frame, bad sample rate) refused with a `ValueError`.
2. `encode_wav2vec2`: the hidden states of every transformer layer, `[T50, L, D]` at 50 Hz (16 kHz / 320), run in
   overlapping chunks so a long file does not need attention memory quadratic in its length.
3. `resample_to_fps`: linear interpolation along time to the video's `F` frames, *after* the transformer, so that
   our transformers encoder and ComfyUI's built-in audio encoder (`from_comfy_encoder_output`) give the same features.
4. `window_features`: each frame gets itself and +-`window` neighbours (edge frames clamped): `[F, 2w+1, L, D]`.

Shapes use the project's axis letters: `T` audio samples, `T50` wav2vec2 frames, `F` video frames, `L` wav2vec2
layers (12 for base), `D` feature width (768 for base).

*Reconstructed* choices (the paper does not pin them down):
- the interpolation maps the first and last wav2vec2 frame onto the first and last video frame (`align_corners=True`),
  the convention of open talking-head pipelines; it is exact for features that change linearly in time;
- the number of video frames is `ceil(duration * fps)`, so every audio sample belongs to a frame;
- the waveform is standardised (zero mean, unit variance over the whole file) only for wav2vec2 models with a
  layer-norm feature encoder (the "large" family), as ComfyUI does (`do_normalize` in its loader); base models start
  with a per-channel group norm, which makes that standardisation a no-op for them.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import AudioConfig

if TYPE_CHECKING:
    from transformers import Wav2Vec2Model

logger = logging.getLogger(__name__)

WAV2VEC2_SAMPLE_RATE = 16_000  # every public wav2vec2 checkpoint is trained on 16 kHz audio
COMFY_ENCODER_SAMPLE_RATE = 16_000  # ComfyUI's AudioEncoderModel.model_sample_rate for wav2vec2
MIN_VIDEO_FPS = 25  # audio shorter than one frame at this rate is refused
PEAK_WARNING = 2.0  # float audio is expected in [-1, 1]; far above that is usually unscaled integer PCM
_NORMALIZE_EPS = 1e-7  # ComfyUI's and transformers' wav2vec2 input standardisation epsilon


# ----------------------------------------------------------------------------------------------------------------
# 1. waveform -> 16 kHz mono


def _as_float_tensor(waveform: Any) -> torch.Tensor:
    """numpy/torch audio -> float32 CPU tensor; integer PCM is scaled to [-1, 1]."""
    if isinstance(waveform, np.ndarray):
        if waveform.dtype == np.int16:
            return torch.from_numpy(waveform.astype(np.float32) / 32768.0)
        if waveform.dtype == np.int32:
            return torch.from_numpy((waveform.astype(np.float64) / 2147483648.0).astype(np.float32))
        if waveform.dtype == np.uint8:
            return torch.from_numpy((waveform.astype(np.float32) - 128.0) / 128.0)
        if not np.issubdtype(waveform.dtype, np.floating):
            raise TypeError(
                f"audio waveform has numpy dtype {waveform.dtype}; expected float samples in [-1, 1] "
                "(or int16/int32/uint8 PCM, which are scaled automatically)"
            )
        return torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
    if isinstance(waveform, torch.Tensor):
        if waveform.dtype == torch.int16:
            return waveform.detach().cpu().float() / 32768.0
        if waveform.dtype == torch.int32:
            return (waveform.detach().cpu().double() / 2147483648.0).float()
        if waveform.dtype == torch.uint8:
            return (waveform.detach().cpu().float() - 128.0) / 128.0
        if not waveform.is_floating_point():
            raise TypeError(
                f"audio waveform has torch dtype {waveform.dtype}; expected float samples in [-1, 1] "
                "(or int16/int32/uint8 PCM, which are scaled automatically)"
            )
        return waveform.detach().cpu().float()
    raise TypeError(
        f"audio waveform must be a numpy array or a torch tensor, got {type(waveform).__name__}; "
        "a ComfyUI AUDIO is a dict: pass audio['waveform'] and audio['sample_rate']"
    )


def _check_sample_rate(sample_rate: Any, what: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number of samples per second, got {sample_rate!r}")
    if not math.isfinite(float(sample_rate)) or sample_rate <= 0:
        raise ValueError(f"{what} must be a positive number of samples per second, got {sample_rate!r}")
    if float(sample_rate) != int(sample_rate):
        raise ValueError(f"{what} must be a whole number of samples per second, got {sample_rate!r}")
    return int(sample_rate)


def _check_fps(fps: Any) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)):
        raise TypeError(f"fps must be a number of video frames per second, got {fps!r}")
    if not math.isfinite(float(fps)) or fps <= 0:
        raise ValueError(f"fps must be a positive number of video frames per second, got {fps!r}")
    return float(fps)


def _mono_source(waveform: Any, sample_rate: Any) -> tuple[torch.Tensor, int]:
    """Validate and downmix to mono at the source rate: ([T] float32, sample_rate)."""
    sample_rate = _check_sample_rate(sample_rate)
    wave = _as_float_tensor(waveform)
    # 1. layout: [T], [C, T] or ComfyUI's [B, C, T] (batch item 0)
    if wave.ndim == 3:
        if wave.shape[0] == 0:
            raise ValueError(f"audio batch is empty (waveform shape {tuple(wave.shape)})")
        if wave.shape[0] > 1:
            logger.info("audio batch has %d items; using item 0", wave.shape[0])
        wave = wave[0]
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise ValueError(
            f"audio waveform must have shape [T], [C, T] or [B, C, T], got {tuple(wave.shape)} ({wave.ndim} dims)"
        )
    channels, num_samples = wave.shape
    if channels == 0 or num_samples == 0:
        raise ValueError(f"audio is empty: waveform shape {tuple(wave.shape)} has no samples")
    if channels > 64 and num_samples <= 64:
        raise ValueError(
            f"audio waveform of shape {tuple(wave.shape)} reads as {channels} channels of {num_samples} samples; "
            "it looks like a [T, C] array (soundfile's layout): pass waveform.T"
        )
    # 2. garbage: non-finite samples, too short, unscaled PCM
    bad = int((~torch.isfinite(wave)).sum())
    if bad:
        raise ValueError(
            f"audio contains {bad} NaN/Inf sample(s) out of {wave.numel()}; the file is corrupt or was decoded "
            "wrongly, so re-export or re-decode it"
        )
    if num_samples * MIN_VIDEO_FPS < sample_rate:
        raise ValueError(
            f"audio has {num_samples} sample(s) at {sample_rate} Hz ({1000 * num_samples / sample_rate:.2f} ms), "
            f"shorter than one {MIN_VIDEO_FPS} fps video frame ({1000 / MIN_VIDEO_FPS:.0f} ms); give longer audio"
        )
    peak = float(wave.abs().max())
    if peak > PEAK_WARNING:
        logger.warning(
            "audio peak is %.1f, far outside [-1, 1]; if it is integer PCM stored as float, divide it by 32768", peak
        )
    # 3. downmix
    return wave.mean(dim=0), sample_rate


def _resample(wave: torch.Tensor, orig_rate: int, target_rate: int) -> torch.Tensor:
    if orig_rate == target_rate:
        return wave
    try:
        import torchaudio.functional as AF
    except ImportError as e:  # newer ComfyUI no longer requires torchaudio
        raise ImportError(
            f"resampling audio from {orig_rate} Hz to {target_rate} Hz needs torchaudio; install it "
            f"(`pip install torchaudio` matching your torch) or pass audio already at {target_rate} Hz"
        ) from e
    return AF.resample(wave, orig_rate, target_rate)


def prepare_waveform(waveform: Any, sample_rate: int, target_rate: int = WAV2VEC2_SAMPLE_RATE) -> torch.Tensor:
    """Any waveform -> float32 mono `[T]` at `target_rate` with the DC offset removed.

    Args:
        waveform: numpy array or torch tensor `[T]`, `[C, T]` or `[B, C, T]` (ComfyUI's `AUDIO["waveform"]`; batch
            item 0 is used). Float samples in [-1, 1]; int16/int32/uint8 PCM is scaled.
        sample_rate: samples per second of `waveform`.
        target_rate: output rate (wav2vec2: 16 kHz).

    Returns:
        `[T']` float32 CPU tensor, `T' = ceil(T * target_rate / sample_rate)` (torchaudio's resampler length).

    Raises:
        ValueError: empty audio, NaN/Inf samples, fewer samples than one 25 fps frame, a non-positive rate.
    """
    target_rate = _check_sample_rate(target_rate, "target_rate")
    wave, sample_rate = _mono_source(waveform, sample_rate)
    return _mono_to_target(wave, sample_rate, target_rate)


def _mono_to_target(wave: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    """Validated mono `[T]` -> `[T']` at `target_rate`, DC offset removed."""
    wave = wave - wave.mean()  # before resampling: a DC step at the edges would ring through the filter
    wave = _resample(wave, sample_rate, target_rate)
    return (wave - wave.mean()).contiguous()


LOGMEL_HOP = 320  # 16 kHz / 320 = 50 Hz, the same frame rate as wav2vec2
LOGMEL_FLOOR = 1e-5


def logmel_features(wave16k: torch.Tensor, n_mels: int, sample_rate: int = WAV2VEC2_SAMPLE_RATE) -> torch.Tensor:
    """Weight-free audio features: a log-mel spectrogram at 50 Hz, `[T50, 1, n_mels]` (one "layer").

    25 ms windows (400 samples) every 20 ms, 40-bin mel scale up to 8 kHz by default; log with a floor, then shifted
    and scaled to roughly unit range (a fixed affine map, the same for every file, so loudness still shows)."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=400, win_length=400, hop_length=LOGMEL_HOP, n_mels=n_mels, center=True
    )(wave16k.float()[None])[0]  # [n_mels, T50 + 1]
    logmel = (torch.log(mel + LOGMEL_FLOOR) + 5.0) / 5.0
    return logmel.T[:-1, None, :].contiguous() if logmel.shape[1] > 1 else logmel.T[:, None, :].contiguous()


def frames_for_duration(num_samples: int, sample_rate: int, fps: float) -> int:
    """Video frames that cover `num_samples` of audio: `ceil(duration * fps)`.

    The product is rounded to 1e-6 of a frame first, so float noise (`2.0000000001 * 25`) adds no frame.
    """
    if int(num_samples) != num_samples or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative whole number, got {num_samples!r}")
    sample_rate = _check_sample_rate(sample_rate)
    fps = _check_fps(fps)
    exact = int(num_samples) * fps / sample_rate
    return max(0, math.ceil(round(exact, 6)))


def frame_rms(
    wave16k: torch.Tensor, num_frames: int, fps: float, sample_rate: int = WAV2VEC2_SAMPLE_RATE
) -> torch.Tensor:
    """RMS energy of the audio under each video frame: `[F]` float32.

    Frame `f` covers samples `[round(f * sr / fps), round((f + 1) * sr / fps))`; samples past the end count as
    silence, so a frame entirely after the audio has RMS 0.
    """
    if wave16k.ndim != 1:
        raise ValueError(f"frame_rms expects a mono waveform [T], got shape {tuple(wave16k.shape)}")
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    sample_rate = _check_sample_rate(sample_rate)
    fps = _check_fps(fps)
    x = wave16k.detach().to("cpu", torch.float64)
    energy = F.pad(torch.cumsum(x * x, dim=0), (1, 0))  # energy[i] = sum of squares of the first i samples
    bounds = torch.round(torch.arange(num_frames + 1, dtype=torch.float64) * (sample_rate / fps)).long()
    span = (bounds[1:] - bounds[:-1]).clamp(min=1)  # samples per frame, counting those past the end as zeros
    bounds = bounds.clamp(max=x.numel())
    return torch.sqrt((energy[bounds[1:]] - energy[bounds[:-1]]).clamp(min=0) / span).float()


# ----------------------------------------------------------------------------------------------------------------
# 2. wav2vec2: load, build tiny, encode


def load_wav2vec2(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A transformers `Wav2Vec2Model` from a local folder (`config.json` + weights), in eval mode.

    A `Wav2Vec2ForCTC` checkpoint such as `facebook/wav2vec2-base-960h` loads too (its CTC head is dropped). Nothing
    is downloaded. Missing weights are an error, not a silent random init.
    """
    from transformers import Wav2Vec2Model

    folder = Path(path)
    if folder.is_file():
        raise FileNotFoundError(
            f"wav2vec2 path {folder} is a file; expected a transformers model folder (config.json + "
            "model.safetensors). A single-file ComfyUI audio encoder is used through ComfyUI's AudioEncoderLoader "
            "and AudioEncoderEncode nodes instead"
        )
    if not folder.is_dir():
        raise FileNotFoundError(
            f"wav2vec2 folder not found: {folder}. Download a transformers wav2vec2 model (e.g. "
            "facebook/wav2vec2-base-960h) into that folder"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        found = sorted(p.name for p in folder.iterdir())[:20]
        raise FileNotFoundError(
            f"wav2vec2 folder {folder} has no config.json (it contains {found}); expected a transformers model folder"
        )
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{config_file} is not a valid transformers config: {e}") from e
    if model_type != "wav2vec2":
        raise ValueError(
            f"{folder} holds a {model_type!r} model, not wav2vec2 (config.json model_type); Loopy's audio features "
            "come from a wav2vec2 model such as facebook/wav2vec2-base-960h"
        )
    try:
        model, info = Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except OSError as e:
        raise FileNotFoundError(f"could not load wav2vec2 weights from {folder}: {e}") from e
    missing = [k for k in info.get("missing_keys", []) if k != "masked_spec_embed"]  # training-only parameter
    if missing:
        raise ValueError(
            f"wav2vec2 weights in {folder} lack {len(missing)} tensor(s), e.g. {missing[:5]}; the checkpoint does "
            "not match its config.json"
        )
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    logger.info(
        "loaded wav2vec2 from %s: %d layers x %d on %s/%s",
        folder,
        model.config.num_hidden_layers,
        model.config.hidden_size,
        device,
        dtype,
    )
    return model


def tiny_wav2vec2(config: AudioConfig, seed: int = 0, **config_overrides: Any) -> Wav2Vec2Model:
    """A random wav2vec2 with `config.num_layers` layers of width `config.feature_dim`, for tests and demos.

    It keeps the standard 7-layer conv feature encoder (kernel 10/3/3/3/3/2/2, stride 5/2/2/2/2/2/2: 400-sample
    receptive field, 320x downsampling, 16 kHz -> 50 Hz) and base's layout (group-norm conv, post-norm transformer)
    at toy widths. The same seed gives the same weights; the global RNG is left untouched.
    `config_overrides` go to `transformers.Wav2Vec2Config`.
    """
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    width = config.feature_dim
    heads = next(h for h in (4, 2, 1) if width % h == 0)
    kwargs: dict[str, Any] = {
        "hidden_size": width,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": heads,
        "intermediate_size": 4 * width,
        "conv_dim": (16,) * 7,
        "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
        "conv_stride": (5, 2, 2, 2, 2, 2, 2),
        "conv_bias": False,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": heads,
        "apply_spec_augment": False,
        "vocab_size": 8,
    }
    kwargs.update(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Vec2Model(Wav2Vec2Config(**kwargs))
    model.eval()
    model.requires_grad_(False)
    return model


def _conv_geometry(model_config: Any) -> tuple[int, int]:
    """(receptive field, stride) in samples of the conv feature encoder."""
    field, stride = 1, 1
    for kernel, step in zip(model_config.conv_kernel, model_config.conv_stride):
        field += (kernel - 1) * stride
        stride *= step
    return field, stride


def _num_feature_frames(model_config: Any, num_samples: int) -> int:
    for kernel, step in zip(model_config.conv_kernel, model_config.conv_stride):
        num_samples = (num_samples - kernel) // step + 1
    return max(0, num_samples)


def encoder_frame_rate(model: Any, sample_rate: int = WAV2VEC2_SAMPLE_RATE) -> float:
    """wav2vec2 frames per second (50 for the standard 320x conv encoder at 16 kHz)."""
    return sample_rate / _conv_geometry(model.config)[1]


def _check_is_wav2vec2(model: Any) -> None:
    if getattr(getattr(model, "config", None), "model_type", None) != "wav2vec2":
        raise TypeError(
            f"audio encoder must be a transformers Wav2Vec2Model (see load_wav2vec2), got {type(model).__name__}"
        )


@torch.no_grad()
def _encode_span(model: Any, wave: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One forward over `wave [T]` -> `[T50, L, D]` float32 CPU."""
    out = model(wave.to(device=device, dtype=dtype)[None], output_hidden_states=True)
    # hidden_states[0] is the input of the first transformer layer (conv features + positions): dropped. The last
    # layer is taken from last_hidden_state: for "stable layer norm" (large) models it is after the final layer
    # norm, as ComfyUI returns it, while transformers 5's hidden_states[-1] is before it (4.x: after).
    layers = [*out.hidden_states[1:-1], out.last_hidden_state]
    return torch.stack([h[0] for h in layers], dim=1).float().cpu()  # L x [T50, D] -> [T50, L, D]


@torch.no_grad()
def _group_norm_statistics(model: Any, wave: torch.Tensor, block_samples: int):
    """Whole-file per-channel mean and variance of base wav2vec2's first conv layer, gathered block by block (no
    whole-file activation is held); None for models without that layer (layer-norm feature encoders)."""
    first = model.feature_extractor.conv_layers[0]
    norm = getattr(first, "layer_norm", None)
    if not isinstance(norm, torch.nn.GroupNorm) or norm.num_groups != norm.num_channels:
        return None
    param = next(model.parameters())
    kernel, step = first.conv.kernel_size[0], first.conv.stride[0]
    total = (wave.numel() - kernel) // step + 1
    block = max(1, block_samples // step)
    sums = torch.zeros(norm.num_channels, dtype=torch.float64)
    squares = torch.zeros(norm.num_channels, dtype=torch.float64)
    for start in range(0, total, block):
        end = min(total, start + block)  # conv outputs [start, end) need samples [start*step, (end-1)*step+kernel)
        span = wave[start * step : (end - 1) * step + kernel].to(device=param.device, dtype=param.dtype)
        y = first.conv(span[None, None])[0].double()  # [C, end - start]
        sums += y.sum(dim=1).cpu()
        squares += (y * y).sum(dim=1).cpu()
    mean = sums / total
    return mean, (squares / total - mean * mean).clamp(min=0)  # biased, as GroupNorm


def _use_statistics(model: Any, stats) -> Any:
    """Make the first conv layer's group norm use `stats` (see `_group_norm_statistics`); returns the hook handle."""
    if stats is None:
        return None
    mean, var = stats
    norm = model.feature_extractor.conv_layers[0].layer_norm

    def use_file_statistics(module: torch.nn.GroupNorm, inputs: tuple[torch.Tensor, ...], output: torch.Tensor):
        x = inputs[0].float()  # [B, C, T]
        y = (x - mean.to(x)[:, None]) / torch.sqrt(var.to(x)[:, None] + module.eps)
        if module.affine:
            y = y * module.weight.float()[:, None] + module.bias.float()[:, None]
        return y.to(output.dtype)

    return norm.register_forward_hook(use_file_statistics)


def _hold_group_norm_statistics(model: Any, wave: torch.Tensor, block_samples: int) -> Any:
    """Make the first conv layer's per-channel group norm use whole-file statistics; returns the hook handle.

    Base wav2vec2 normalises each channel of its first conv layer over *all* time steps of the input, so a chunk
    would otherwise be normalised with its own statistics and its features would depend on where the seams fall.
    Returns None for models without that layer (layer-norm feature encoders).
    """
    return _use_statistics(model, _group_norm_statistics(model, wave, block_samples))


@torch.no_grad()
def encode_wav2vec2(
    model: Any,
    wave16k: torch.Tensor,
    chunk_seconds: float = 20.0,
    context_seconds: float = 1.0,
    normalize: bool | None = None,
) -> torch.Tensor:
    """Hidden states of every transformer layer of `model` for a 16 kHz mono waveform: `[T50, L, D]` float32 CPU.

    `L = num_hidden_layers`: the output of each transformer layer (transformers' `hidden_states[1:]`), where for
    "stable layer norm" (large) models the last one is taken after the final layer norm (`last_hidden_state`), as
    ComfyUI returns it.

    Long audio runs in chunks: the frames are split into equal cores of at most `chunk_seconds - 2 *
    context_seconds`; each core is encoded together with `context_seconds` of audio on both sides and only the core
    is kept (chunks start on the conv stride, so frames line up exactly with the unchunked run). Attention memory is
    then bounded by the chunk length. Base models' first conv layer normalises each channel over the whole input;
    chunks use whole-file statistics for it (gathered in a first, cheap pass), so the only difference from the
    unchunked run is what attention farther than `context_seconds` would have contributed (small for trained
    models, largest next to the seams). `chunk_seconds=math.inf` disables chunking.

    Args:
        model: a transformers `Wav2Vec2Model` (`load_wav2vec2`, `tiny_wav2vec2`); runs in its own dtype and device.
        wave16k: `[T]` mono waveform at 16 kHz (`prepare_waveform`).
        normalize: standardise the whole waveform first. `None`: only for layer-norm ("large") feature encoders,
            as ComfyUI does.
    """
    _check_is_wav2vec2(model)
    if wave16k.ndim != 1:
        raise ValueError(f"encode_wav2vec2 expects a mono waveform [T], got shape {tuple(wave16k.shape)}")
    if not chunk_seconds > 2 * context_seconds >= 0:
        raise ValueError(
            f"chunk_seconds ({chunk_seconds}) must exceed 2 * context_seconds ({2 * context_seconds}), and "
            "context_seconds must be >= 0"
        )
    if model.training:
        raise ValueError(
            "the wav2vec2 encoder is in training mode (dropout on); call encoder.eval() first (load_wav2vec2 does)"
        )
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    field, stride = _conv_geometry(model.config)
    num_samples = wave16k.numel()
    total = _num_feature_frames(model.config, num_samples)
    if total < 1:
        raise ValueError(
            f"audio of {num_samples} samples is shorter than wav2vec2's receptive field ({field} samples at 16 kHz)"
        )
    wave = wave16k.detach().float().cpu()
    if normalize is None:
        normalize = getattr(model.config, "feat_extract_norm", "group") == "layer"
    if normalize:
        wave = (wave - wave.mean()) / torch.sqrt(wave.var() + _NORMALIZE_EPS)

    # 1. plan: equal cores that tile [0, total), each with `context` frames of audio either side
    rate = WAV2VEC2_SAMPLE_RATE / stride
    chunk = total if math.isinf(chunk_seconds) else max(1, int(chunk_seconds * rate))
    if total <= chunk:
        return _encode_span(model, wave, device, dtype)
    context = round(context_seconds * rate)
    num_chunks = math.ceil(total / (chunk - 2 * context))
    edges = [round(i * total / num_chunks) for i in range(num_chunks + 1)]

    # 2. whole-file statistics for base models' first-layer group norm
    hook = _hold_group_norm_statistics(model, wave, chunk * stride)

    # 3. encode each core with its context, keep the core
    pieces = []
    try:
        for start, end in itertools.pairwise(edges):
            first, last = max(0, start - context), min(total, end + context)  # frames [first, last) are computed
            span = wave[first * stride : (last - 1) * stride + field]
            feats = _encode_span(model, span, device, dtype)
            if feats.shape[0] != last - first:
                raise RuntimeError(f"wav2vec2 chunk gave {feats.shape[0]} frames, expected {last - first}")
            pieces.append(feats[start - first : end - first])
    finally:
        if hook is not None:
            hook.remove()
    logger.debug("encoded %d wav2vec2 frames in %d chunks", total, num_chunks)
    return torch.cat(pieces, dim=0)


# ----------------------------------------------------------------------------------------------------------------
# 3. ComfyUI's audio encoder output


def from_comfy_encoder_output(output: Mapping[str, Any], batch_index: int = 0) -> torch.Tensor:
    """ComfyUI's `AUDIO_ENCODER_OUTPUT` -> `[T50, L, D]` float32 CPU, the layout `encode_wav2vec2` returns.

    What ComfyUI produces (read from Comfy-Org/ComfyUI v0.3.64, `comfy/audio_encoders/audio_encoders.py`
    `AudioEncoderModel.encode_audio`, `comfy/audio_encoders/wav2vec2.py`, `comfy_extras/nodes_audio_encoder.py`
    node `AudioEncoderEncode`): a plain dict

    - `"encoded_audio"`: `[B, T50, D]`, the last layer's output (the same tensor as the last entry below);
    - `"encoded_audio_all_layers"`: a *tuple* of `L + 1` tensors `[B, T50, D]`. Entry 0 is the input of the first
      transformer layer (CNN features -> feature projection -> + positional conv embedding, then the encoder's
      layer norm for base models); entry `i >= 1` is the output of transformer layer `i`, in depth order, and for
      large ("stable layer norm") models the last one is after the final layer norm. This is transformers'
      `hidden_states` (4.x; 5.x leaves the final norm out of `hidden_states[-1]`), so we drop entry 0 and stack the
      rest on a layer axis: `L x [B, T50, D] -> [T50, L, D]` for batch item `batch_index`;
    - `"audio_samples"`: int, the number of 16 kHz samples after ComfyUI resampled the audio (added in v0.3.60).

    ComfyUI resamples `AUDIO["waveform"]` `[B, C, T]` to 16 kHz (torchaudio; newer versions `comfy.audio.resample`,
    same dict), averages the channels inside the model and, for large models only, standardises the waveform. Its
    tensors are in the text-encoder dtype on its load device. `encoded_audio_all_layers` exists since the audio
    encoder nodes were added (v0.3.53). Checked here by loading a tiny transformers model's weights into ComfyUI's
    own `Wav2Vec2Model` (base and large layouts): every entry matched transformers, and the features equal ours to
    float precision, except the first ~3 frames when the source has a DC offset (we remove it before resampling,
    ComfyUI does not, so its resampler rings at the start).
    """
    if not isinstance(output, Mapping):
        raise TypeError(
            f"expected ComfyUI's AUDIO_ENCODER_OUTPUT (a dict from the AudioEncoderEncode node), got "
            f"{type(output).__name__}"
        )
    layers = output.get("encoded_audio_all_layers")
    if layers is None:
        raise ValueError(
            f"this audio encoder output has no 'encoded_audio_all_layers' (its keys: {sorted(output)}); Loopy needs "
            "every wav2vec2 layer. Produce it with ComfyUI's AudioEncoderLoader + AudioEncoderEncode nodes "
            "(ComfyUI 0.3.53 or newer; update ComfyUI), or use Loopy's own wav2vec2 loader"
        )
    if isinstance(layers, torch.Tensor) or not isinstance(layers, Sequence) or len(layers) < 2:
        raise ValueError(
            "'encoded_audio_all_layers' must be a tuple of L + 1 tensors [B, T50, D] (the input of the first "
            f"transformer layer, then each layer's output), got {type(layers).__name__}"
            + (f" of length {len(layers)}" if isinstance(layers, Sequence) else "")
        )
    shapes = {tuple(h.shape) for h in layers}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"'encoded_audio_all_layers' tensors must all be [B, T50, D], got shapes {sorted(shapes)}")
    batch = layers[0].shape[0]
    if not 0 <= batch_index < batch:
        raise ValueError(f"batch_index {batch_index} is out of range for an audio encoder output of batch {batch}")
    return torch.stack([h[batch_index] for h in layers[1:]], dim=1).float().cpu()  # L x [T50, D] -> [T50, L, D]


# ----------------------------------------------------------------------------------------------------------------
# 4. 50 Hz -> video frames -> windows


def resample_to_fps(feats: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linear interpolation along time: `[T50, L, D]` -> `[F, L, D]` (first/last frames aligned, see module doc)."""
    if feats.ndim != 3:
        raise ValueError(f"resample_to_fps expects features [T50, L, D], got shape {tuple(feats.shape)}")
    if feats.shape[0] == 0:
        raise ValueError("resample_to_fps got no audio feature frames (T50 = 0)")
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive whole number, got {num_frames!r}")
    num_frames = int(num_frames)
    steps, layers, width = feats.shape
    if steps == num_frames:
        return feats.clone()
    x = feats.reshape(steps, layers * width).T[None]  # [1, L*D, T50]
    if steps == 1:
        return feats.expand(num_frames, layers, width).clone()
    y = F.interpolate(x, size=num_frames, mode="linear", align_corners=True)  # [1, L*D, F]
    return y[0].T.reshape(num_frames, layers, width)


def window_features(feats: torch.Tensor, window: int = 2) -> torch.Tensor:
    """Each frame with its +-`window` neighbours, indices clamped at the ends: `[F, L, D]` -> `[F, 2w+1, L, D]`.

    `out[f, k] = feats[clamp(f + k - window, 0, F - 1)]`.
    """
    if feats.ndim != 3:
        raise ValueError(f"window_features expects features [F, L, D], got shape {tuple(feats.shape)}")
    if int(window) != window or window < 0:
        raise ValueError(f"window must be a non-negative whole number, got {window!r}")
    num_frames = feats.shape[0]
    if num_frames == 0:
        raise ValueError("window_features got no frames (F = 0)")
    offsets = torch.arange(-int(window), int(window) + 1)
    index = (torch.arange(num_frames)[:, None] + offsets[None]).clamp(0, num_frames - 1)  # [F, 2w+1]
    return feats[index.to(feats.device)]  # [F, 2w+1, L, D]


# ----------------------------------------------------------------------------------------------------------------
# 5. all together


@dataclass
class AudioFeatures:
    """Per-frame audio conditioning of one video.

    Attributes:
        feats: `[F, 2w+1, L, D]` float32 CPU wav2vec2 windows (base at 25 fps: about 4.6 MB per second of audio,
            2.8 GB for 10 minutes).
        num_frames: `F`.
        fps: video frames per second the features were made for.
        duration_s: length of the source audio in seconds.
        sample_rate: sample rate of the source audio.
        rms: `[F]` float32 RMS energy of each frame's audio, or None when the waveform was not available.
    """

    feats: torch.Tensor
    num_frames: int
    fps: float
    duration_s: float
    sample_rate: int
    rms: torch.Tensor | None = None

    def __post_init__(self):
        if self.feats.ndim != 4 or self.feats.shape[0] != self.num_frames or self.feats.shape[1] % 2 != 1:
            raise ValueError(
                f"AudioFeatures.feats must be [F={self.num_frames}, 2w+1, L, D], got shape {tuple(self.feats.shape)}"
            )
        if self.rms is not None and tuple(self.rms.shape) != (self.num_frames,):
            raise ValueError(f"AudioFeatures.rms must be [F={self.num_frames}], got shape {tuple(self.rms.shape)}")

    @property
    def window(self) -> int:
        return (self.feats.shape[1] - 1) // 2

    def frames(self, start: int, count: int) -> torch.Tensor:
        """Windows of frames `start .. start+count-1` (past the end: the last frame repeated): `[count, 2w+1, L, D]`."""
        idx = torch.arange(start, start + count).clamp(0, self.num_frames - 1)
        return self.feats[idx]

    @property
    def num_layers(self) -> int:
        return self.feats.shape[2]

    @property
    def feature_dim(self) -> int:
        return self.feats.shape[3]


class StreamingAudioFeatures:
    """Audio features computed clip by clip from the 16 kHz waveform, so memory does not grow with the audio's length.

    `frames(start, count)` gives what `AudioFeatures.frames` would: each video frame's position on the 50 Hz feature
    grid is the same as in `resample_to_fps` over the whole file, and wav2vec2 runs on just the needed span plus
    `context_seconds` of audio either side, with whole-file statistics for base models' first group norm (as in
    chunked `encode_wav2vec2`). The only difference from encoding the whole file at once is what attention farther
    than `context_seconds` would have added. Log-mel features are cheap and tiny, so they are computed once.
    """

    def __init__(self, wave16k: torch.Tensor, num_frames: int, fps: float, duration_s: float, sample_rate: int,
                 encoder: Any, config: AudioConfig, context_seconds: float = 1.0):
        self.num_frames, self.fps, self.duration_s, self.sample_rate = num_frames, fps, duration_s, sample_rate
        self.config, self.encoder, self.wave = config, encoder, wave16k
        self.rms = None
        if config.kind == "logmel":
            self._feats50 = logmel_features(wave16k, config.feature_dim, config.sample_rate)
            self.total = self._feats50.shape[0]
        else:
            self.field, self.stride = _conv_geometry(encoder.config)
            self.total = _num_feature_frames(encoder.config, wave16k.numel())
            self._stats = _group_norm_statistics(encoder, wave16k, int(20 * config.sample_rate))
        self.context = round(context_seconds * config.sample_rate / LOGMEL_HOP)

    @property
    def window(self) -> int:
        return self.config.window

    def _span(self, first: int, last: int) -> torch.Tensor:
        """50 Hz features `[first, last)` -> `[last - first, L, D]`."""
        if self.config.kind == "logmel":
            return self._feats50[first:last]
        span = self.wave[first * self.stride : (last - 1) * self.stride + self.field]
        param = next(self.encoder.parameters())
        hook = _use_statistics(self.encoder, self._stats)
        try:
            feats = _encode_span(self.encoder, span, param.device, param.dtype)
        finally:
            if hook is not None:
                hook.remove()
        return feats

    def frames(self, start: int, count: int) -> torch.Tensor:
        w = self.config.window
        centres = torch.arange(start, start + count).clamp(0, self.num_frames - 1)  # past the end: the last frame
        idx = (centres[:, None] + torch.arange(-w, w + 1)[None]).clamp(0, self.num_frames - 1)
        scale = (self.total - 1) / (self.num_frames - 1) if self.num_frames > 1 else 0.0
        pos = idx.double() * scale  # the same grid as resample_to_fps (align_corners=True)
        lo = pos.floor().long().clamp(0, self.total - 1)
        first = max(0, int(lo.min()) - self.context)
        last = min(self.total, int(lo.max()) + 2 + self.context)
        feats = self._span(first, last)
        hi = (lo + 1).clamp(max=self.total - 1)
        frac = (pos - lo.double()).float()[..., None, None]
        return feats[lo - first] * (1 - frac) + feats[hi - first] * frac  # [count, 2w+1, L, D]


def check_encoder_shape(num_layers: int, width: int, config: AudioConfig) -> None:
    """Raise if an encoder's `num_layers x width` differs from what the Loopy model was trained on."""
    if (num_layers, width) != (config.num_layers, config.feature_dim):
        raise ValueError(
            f"the audio encoder has {num_layers} layers of width {width} but this Loopy model expects "
            f"{config.num_layers} x {config.feature_dim} (its audio encoder is {config.encoder!r}); load that encoder"
        )


def _check_max_seconds(duration_s: float, max_seconds: float | None) -> None:
    if max_seconds is not None and duration_s > max_seconds:
        raise ValueError(
            f"audio is {duration_s:.1f} s long, over the limit max_seconds={max_seconds:g}; raise max_seconds "
            "(or trim the audio) to process it"
        )


def _build_features(
    feats50: torch.Tensor,
    num_frames: int,
    fps: float,
    duration_s: float,
    sample_rate: int,
    config: AudioConfig,
    wave16k: torch.Tensor | None,
) -> AudioFeatures:
    frame_feats = resample_to_fps(feats50, num_frames)  # [F, L, D]
    rms = None if wave16k is None else frame_rms(wave16k, num_frames, fps, config.sample_rate)
    return AudioFeatures(
        feats=window_features(frame_feats, config.window).contiguous(),
        num_frames=num_frames,
        fps=fps,
        duration_s=duration_s,
        sample_rate=sample_rate,
        rms=rms,
    )


def extract_audio_features(
    waveform: Any,
    sample_rate: int,
    fps: float,
    encoder: Any,
    config: AudioConfig,
    max_seconds: float | None = None,
    chunk_seconds: float = 20.0,
    streaming: bool = False,
) -> AudioFeatures | StreamingAudioFeatures:
    """Waveform -> `AudioFeatures` with `F = ceil(duration * fps)` frames, using a transformers wav2vec2 `encoder`
    (or log-mel features when `config.kind == "logmel"`). `streaming=True` returns `StreamingAudioFeatures`, which
    computes each clip's features when asked, so memory stays flat however long the audio is.

    Raises `ValueError` when the encoder's layers/width differ from `config`, when the audio is longer than
    `max_seconds`, or when the waveform is unusable (see `prepare_waveform`).
    """
    # 1. inputs
    if config.kind == "wav2vec2":
        _check_is_wav2vec2(encoder)
        check_encoder_shape(encoder.config.num_hidden_layers, encoder.config.hidden_size, config)
    fps = _check_fps(fps)
    mono, sample_rate = _mono_source(waveform, sample_rate)
    duration_s = mono.numel() / sample_rate
    _check_max_seconds(duration_s, max_seconds)
    num_frames = frames_for_duration(mono.numel(), sample_rate, fps)
    # 2. 16 kHz mono, DC removed
    wave16k = _mono_to_target(mono, sample_rate, _check_sample_rate(config.sample_rate, "config.sample_rate"))
    # 3. wav2vec2 (or log-mel) -> frames -> windows
    if streaming:
        return StreamingAudioFeatures(wave16k, num_frames, fps, duration_s, sample_rate, encoder, config)
    if config.kind == "logmel":
        feats50 = logmel_features(wave16k, config.feature_dim, config.sample_rate)
    else:
        feats50 = encode_wav2vec2(encoder, wave16k, chunk_seconds=chunk_seconds)
    features = _build_features(feats50, num_frames, fps, duration_s, sample_rate, config, wave16k)
    logger.info(
        "audio %.2f s at %d Hz -> %d wav2vec2 frames -> %d video frames at %g fps (%d layers x %d)",
        duration_s,
        sample_rate,
        feats50.shape[0],
        num_frames,
        fps,
        config.num_layers,
        config.feature_dim,
    )
    return features


def audio_features_from_comfy(
    output: Mapping[str, Any],
    fps: float,
    config: AudioConfig,
    audio: Mapping[str, Any] | None = None,
    max_seconds: float | None = None,
) -> AudioFeatures:
    """ComfyUI's `AUDIO_ENCODER_OUTPUT` (+ optionally the `AUDIO` it came from) -> `AudioFeatures`.

    With `audio` the duration and frame count come from the source waveform, exactly as in `extract_audio_features`,
    and the per-frame RMS is filled in; without it they come from `output["audio_samples"]` (16 kHz samples).
    """
    fps = _check_fps(fps)
    feats50 = from_comfy_encoder_output(output)
    check_encoder_shape(feats50.shape[1], feats50.shape[2], config)
    wave16k = None
    if audio is not None:
        if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
            raise TypeError("audio must be a ComfyUI AUDIO dict with 'waveform' [B, C, T] and 'sample_rate'")
        mono, sample_rate = _mono_source(audio["waveform"], audio["sample_rate"])
        num_samples = mono.numel()
        wave16k = _mono_to_target(mono, sample_rate, _check_sample_rate(config.sample_rate, "config.sample_rate"))
    elif "audio_samples" in output:
        num_samples, sample_rate = int(output["audio_samples"]), COMFY_ENCODER_SAMPLE_RATE
    else:
        raise ValueError(
            "this audio encoder output has no 'audio_samples' (ComfyUI older than 0.3.60), so its duration is "
            "unknown; pass the AUDIO it was made from as `audio`, or update ComfyUI"
        )
    duration_s = num_samples / sample_rate
    expected = duration_s * COMFY_ENCODER_SAMPLE_RATE / 320  # wav2vec2 frames (50 Hz) for that duration
    if abs(feats50.shape[0] - expected) > 2 + 0.01 * expected:
        raise ValueError(
            f"the audio encoder output has {feats50.shape[0]} frames, but {duration_s:.2f} s of audio gives about "
            f"{expected:.0f}; pass the same AUDIO that was encoded"
        )
    _check_max_seconds(duration_s, max_seconds)
    num_frames = frames_for_duration(num_samples, sample_rate, fps)
    if num_frames < 1:
        raise ValueError(f"audio of {num_samples} samples at {sample_rate} Hz gives no video frame at {fps:g} fps")
    return _build_features(feats50, num_frames, fps, duration_s, sample_rate, config, wave16k)


__all__ = [
    "AudioFeatures",
    "audio_features_from_comfy",
    "check_encoder_shape",
    "encode_wav2vec2",
    "encoder_frame_rate",
    "extract_audio_features",
    "frame_rms",
    "frames_for_duration",
    "from_comfy_encoder_output",
    "load_wav2vec2",
    "prepare_waveform",
    "resample_to_fps",
    "tiny_wav2vec2",
    "window_features",
]
