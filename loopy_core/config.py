"""Configs for every part of Loopy as frozen dataclasses, with the `sd15` (paper) and `tiny` presets.

`LoopyConfig` nests one dataclass per component; each model constructor takes its own section. The whole config
round-trips through JSON (`to_json`/`from_json`) and travels inside every Loopy checkpoint's safetensors metadata,
so a checkpoint file is self-describing.

Fields marked *reconstructed* are choices the paper (Jiang et al., ICLR 2025) does not pin down; their defaults
follow `DESIGN.md` and can be changed per model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

SD15_UNET_PARAMETERS = 859_520_964  # diffusers UNet2DConditionModel with SD1.5's config


@dataclass(frozen=True)
class UNetConfig:
    """The SD1.5-structured 2-D UNet shared by the ReferenceNet and the denoiser (diffusers' argument names)."""

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 64  # latent side: 512 px / 8
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: int = 2
    attention_head_dim: int = 8  # SD1.5's (mis-named) head count
    cross_attention_dim: int = 768  # width of the motion tokens from audio-to-latents
    norm_num_groups: int = 32

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `diffusers.UNet2DConditionModel`."""
        kwargs = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}


@dataclass(frozen=True)
class VAEConfig:
    """The frozen image codec. `autoencoder_kl` is SD's VAE; `pixel_unshuffle` is a lossless, weight-free codec
    (space-to-depth) for small models trained from scratch, which have no pretrained VAE to lean on."""

    kind: str = "autoencoder_kl"  # "autoencoder_kl" | "pixel_unshuffle"
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    unshuffle_factor: int = 8  # pixel_unshuffle only: latent side = image side / factor

    @property
    def downscale(self) -> int:
        if self.kind == "pixel_unshuffle":
            return self.unshuffle_factor
        return 2 ** (len(self.block_out_channels) - 1)

    def latent_channels_for(self, image_channels: int = 3) -> int:
        if self.kind == "pixel_unshuffle":
            return image_channels * self.unshuffle_factor**2
        return self.latent_channels

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `diffusers.AutoencoderKL`."""
        n = len(self.block_out_channels)
        return {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
        }


@dataclass(frozen=True)
class TemporalConfig:
    """Inter-clip and intra-clip temporal layers (AnimateDiff v2 motion-module shape)."""

    num_attention_heads: int = 8
    num_transformer_blocks: int = 1
    attention_blocks_per_layer: int = 2  # AnimateDiff's ("Temporal_Self", "Temporal_Self")
    intra_max_positions: int = 32  # sinusoidal table length of mm_sd_v15_v2
    inter_max_positions: int = 32  # learnable embeddings over [motion frames ; clip] (paper: 20 + 12)
    zero_initialize: bool = True
    # ablation switches (paper Table 3): without the inter-clip layer the motion frames reach no temporal layer;
    # without the intra-clip layer the inter-clip layer is the single temporal layer over [motion frames ; clip]
    inter_clip: bool = True
    intra_clip: bool = True


@dataclass(frozen=True)
class TSMConfig:
    """Temporal segment module (paper Sec. 3.2). *Reconstructed* rule: K segments counted back from the clip
    boundary; segment k covers s * r**k frames in s groups of r**k frames; each group -> one latent."""

    s: int = 4
    r: int = 2
    K: int = 5
    reduce: str = "mean"  # "mean" | "middle"
    pad: str = "reference"  # frames missing at video start: "reference" | "first" | "zeros"


RANDOM_AUDIO_ENCODER = "tiny-wav2vec2"


@dataclass(frozen=True)
class AudioConfig:
    """Audio features per video frame, +-window frames each. `kind="wav2vec2"` (the paper): all transformer layers
    of a wav2vec2 model, interpolated to the video fps. `kind="logmel"`: a weight-free log-mel spectrogram with
    `feature_dim` bins as a single "layer" (small models trained from scratch, like the demo)."""

    kind: str = "wav2vec2"  # "wav2vec2" | "logmel"
    # folder name looked up under the audio-encoder directories; RANDOM_AUDIO_ENCODER: a randomly initialised
    # wav2vec2 of this size that `loopy init` embeds (models trained from scratch learn their features along)
    encoder: str = "wav2vec2-base-960h"
    sample_rate: int = 16_000
    num_layers: int = 12  # L: hidden states of every transformer layer
    feature_dim: int = 768  # D
    window: int = 2  # +-2 frames -> 5 per frame


@dataclass(frozen=True)
class A2LConfig:
    """Audio-to-latents (paper Sec. 3.3). Token count, depth and the modality mix are *reconstructed*."""

    num_tokens: int = 32
    width: int = 768  # must equal unet.cross_attention_dim
    depth: int = 2
    num_heads: int = 8
    num_motion_stats: int = 2  # head-movement variance, expression variance
    # training's modality mix (audio only, audio + motion, motion only); reconstructed
    p_audio_only: float = 0.5
    p_audio_motion: float = 0.3
    p_motion_only: float = 0.2
    add_to_timestep: bool = False  # also add the pooled tokens to each frame's timestep embedding (zero-init)
    # the audio features' per-frame level (mean and spread before the input LayerNorm, which removes them; for
    # log-mel features the mean is the loudness) added to each audio token through a zero-initialised projection
    keep_level: bool = False
    # ablation (paper Table 3): no query tokens; the projected condition tokens themselves ([null ; audio window ;
    # motion statistics], absent ones replaced by the null token) go to cross-attention. num_tokens is then unused
    direct: bool = False


@dataclass(frozen=True)
class NoiseConfig:
    """The diffusion parametrisation, shared by training and every sampler (it travels inside the checkpoint)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "epsilon"  # "epsilon" | "v_prediction" | "sample"
    rescale_betas_zero_snr: bool = False
    timestep_spacing: str = "leading"  # "trailing" is the right choice with zero terminal SNR

    def scheduler_kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class GuidanceConfig:
    """Recommended guidance scales of this model (paper: audio 5, reference 3 for SD1.5 models).

    `distilled`: a guidance-distilled student (`training/configs/*_distill.yaml`). Its denoiser takes the two scales
    as inputs and predicts the guided combination of a teacher's three branches in one forward with full conditions,
    so sampling runs one branch per step. The ranges are the scales it was trained on (outside them it extrapolates).
    """

    audio_scale: float = 5.0
    ref_scale: float = 3.0
    steps: int = 25  # recommended denoising steps (paper: 25 DDIM steps)
    distilled: bool = False
    distilled_audio_range: tuple[float, float] = (1.0, 8.0)
    distilled_ref_range: tuple[float, float] = (1.0, 5.0)


@dataclass(frozen=True)
class LoopyConfig:
    """Everything that defines a Loopy model. Build with `LoopyConfig.preset("sd15" | "tiny")`."""

    name: str = "sd15"
    resolution: int = 512
    fps: int = 25
    frames_per_clip: int = 12  # F
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    tsm: TSMConfig = field(default_factory=TSMConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    a2l: A2LConfig = field(default_factory=A2LConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)

    def __post_init__(self):
        self.validate()

    # ---- derived sizes
    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.downscale

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels_for(3)

    @property
    def num_motion_tokens(self) -> int:
        """N: the motion tokens per frame that cross-attention sees."""
        if self.a2l.direct:
            return 1 + (2 * self.audio.window + 1) + self.a2l.num_motion_stats
        return self.a2l.num_tokens

    @property
    def num_motion_frames(self) -> int:
        """M: latents the TSM hands to the ReferenceNet."""
        return self.tsm.s * self.tsm.K

    @property
    def history_frames(self) -> int:
        """Frames of history the TSM can reach (paper: 124)."""
        s, r, K = self.tsm.s, self.tsm.r, self.tsm.K
        return s * sum(r**k for k in range(K))

    def validate(self) -> None:
        def fail(msg: str):
            raise ValueError(f"LoopyConfig '{self.name}': {msg}")

        if self.vae.kind not in ("autoencoder_kl", "pixel_unshuffle"):
            fail(f"vae.kind must be 'autoencoder_kl' or 'pixel_unshuffle', got {self.vae.kind!r}")
        if self.resolution % self.vae.downscale:
            fail(f"resolution {self.resolution} is not divisible by the VAE's downscale {self.vae.downscale}")
        if self.unet.in_channels != self.latent_channels or self.unet.out_channels != self.latent_channels:
            fail(
                f"unet.in_channels/out_channels ({self.unet.in_channels}/{self.unet.out_channels}) must equal the "
                f"VAE's latent channels ({self.latent_channels})"
            )
        if self.unet.sample_size != self.latent_size:
            fail(f"unet.sample_size {self.unet.sample_size} must equal resolution / downscale = {self.latent_size}")
        down = 2 ** (len(self.unet.block_out_channels) - 1)
        if self.latent_size % down:
            fail(f"latent side {self.latent_size} must be divisible by {down} (the UNet's downsampling)")
        if self.a2l.width != self.unet.cross_attention_dim:
            fail(f"a2l.width {self.a2l.width} must equal unet.cross_attention_dim {self.unet.cross_attention_dim}")
        if self.tsm.reduce not in ("mean", "middle"):
            fail(f"tsm.reduce must be 'mean' or 'middle', got {self.tsm.reduce!r}")
        if self.tsm.pad not in ("reference", "first", "zeros"):
            fail(f"tsm.pad must be 'reference', 'first' or 'zeros', got {self.tsm.pad!r}")
        if min(self.tsm.s, self.tsm.r, self.tsm.K) < 1:
            fail(f"tsm s, r, K must be >= 1, got {self.tsm.s}, {self.tsm.r}, {self.tsm.K}")
        if self.num_motion_frames + self.frames_per_clip > self.temporal.inter_max_positions:
            fail(
                f"motion frames ({self.num_motion_frames}) + clip frames ({self.frames_per_clip}) exceed "
                f"temporal.inter_max_positions ({self.temporal.inter_max_positions})"
            )
        if self.frames_per_clip > self.temporal.intra_max_positions:
            fail(f"frames_per_clip {self.frames_per_clip} exceeds temporal.intra_max_positions")
        if self.audio.kind not in ("wav2vec2", "logmel"):
            fail(f"audio.kind must be 'wav2vec2' or 'logmel', got {self.audio.kind!r}")
        if self.audio.kind == "logmel" and self.audio.num_layers != 1:
            fail("audio.kind 'logmel' has a single feature layer: set audio.num_layers to 1")
        if self.noise.prediction_type not in ("epsilon", "v_prediction", "sample"):
            fail(f"noise.prediction_type must be epsilon, v_prediction or sample, got {self.noise.prediction_type!r}")
        for name in ("distilled_audio_range", "distilled_ref_range"):
            lo_hi = getattr(self.guidance, name)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
                fail(f"guidance.{name} must be two scales [low, high] with 0 <= low <= high, got {list(lo_hi)}")
        probs = (self.a2l.p_audio_only, self.a2l.p_audio_motion, self.a2l.p_motion_only)
        if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            fail(f"a2l modality probabilities must be >= 0 and sum to 1, got {probs}")

    # ---- presets
    @classmethod
    def sd15(cls) -> LoopyConfig:
        """The paper's model: SD1.5 UNet, 512x512, 25 fps, 12-frame clips, TSM s=4 r=2 K=5, wav2vec2-base."""
        return cls()

    @classmethod
    def tiny(cls) -> LoopyConfig:
        """Same code paths as `sd15` at toy widths: 64x64 frames, 8x8 latents. For tests."""
        return cls(
            name="tiny",
            resolution=64,
            unet=UNetConfig(
                sample_size=8,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=1,
                attention_head_dim=4,
                cross_attention_dim=32,
                norm_num_groups=8,
            ),
            vae=VAEConfig(block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8),
            temporal=TemporalConfig(num_attention_heads=4),
            audio=AudioConfig(encoder=RANDOM_AUDIO_ENCODER, num_layers=2, feature_dim=32),
            a2l=A2LConfig(num_tokens=4, width=32, depth=1, num_heads=4),
        )

    @classmethod
    def demo(cls) -> LoopyConfig:
        """The bundled demo model of the synthetic world: 64x64 frames, trained from scratch on CPU.

        No pretrained VAE or wav2vec2 exists for it, so it uses the weight-free pixel codec (64x64x3 -> 16x16x48) and
        40-bin log-mel features. Measured on this project's prototypes: a model trained from scratch learns the audio
        far faster with x0-prediction on a zero-terminal-SNR schedule, and works best at audio guidance 1-2."""
        return cls(
            name="demo",
            resolution=64,
            unet=UNetConfig(
                in_channels=48,
                out_channels=48,
                sample_size=16,
                block_out_channels=(32, 64, 64),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=1,
                attention_head_dim=4,
                cross_attention_dim=64,
                norm_num_groups=8,
            ),
            vae=VAEConfig(kind="pixel_unshuffle", unshuffle_factor=4, scaling_factor=1.0),
            temporal=TemporalConfig(num_attention_heads=4),
            audio=AudioConfig(kind="logmel", encoder="logmel-40", num_layers=1, feature_dim=40),
            a2l=A2LConfig(num_tokens=8, width=64, depth=2, num_heads=4, add_to_timestep=True),
            noise=NoiseConfig(
                beta_schedule="linear",
                beta_start=0.0001,
                beta_end=0.02,
                prediction_type="sample",
                rescale_betas_zero_snr=True,
                timestep_spacing="trailing",
            ),
            guidance=GuidanceConfig(audio_scale=1.5, ref_scale=1.0, steps=10),
        )

    @classmethod
    def preset(cls, name: str) -> LoopyConfig:
        presets = {"sd15": cls.sd15, "tiny": cls.tiny, "demo": cls.demo}
        if name not in presets:
            raise ValueError(f"Unknown config preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def replace(self, **changes: Any) -> LoopyConfig:
        """A copy with fields changed; nested sections take dicts (`replace(tsm={"r": 1})`)."""
        data = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return LoopyConfig.from_dict(data)

    # ---- JSON round trip
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopyConfig:
        return _from_dict(cls, data, "config")

    @classmethod
    def from_json(cls, text: str) -> LoopyConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"Loopy config is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"Loopy config JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)


def _from_dict(cls, data: dict[str, Any], where: str):
    """Build dataclass `cls` from `data`, refusing unknown keys by name (a typo must not pass silently)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"Unknown field(s) in {where}: {unknown}; known fields: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
