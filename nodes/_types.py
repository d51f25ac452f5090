"""The custom socket types passed between Loopy nodes, and the widget -> `GenerationOptions` mapping.

- `LOOPY_MODEL` (`LoopyModelHandle`): the loaded model and, when its checkpoint embeds one, its audio encoder.
  Nothing per prompt is ever stored on it: every sampling node builds its own pipeline state, so a loaded model
  serves any number of queued prompts, and a failed or cancelled prompt leaves nothing behind.
- `LOOPY_AUDIO_ENCODER`: a `Managed` transformers wav2vec2. ComfyUI's own `AUDIO_ENCODER` is accepted too.
- `LOOPY_AUDIO` (`LoopyAudio`): per-frame audio features and the `AUDIO` they came from.
- `LOOPY_MOTION` (`LoopyMotion`): the motion-frame buffer, i.e. the latents of the frames generated so far
  (bounded by the TSM's span), kept on the CPU. Empty at the start of a video.
All of them are immutable in practice: nodes return new objects and never change their inputs, because ComfyUI
caches node outputs and hands the same object to later prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._comfy import Managed

MODEL = "LOOPY_MODEL"
AUDIO_ENCODER = "LOOPY_AUDIO_ENCODER"
ANY_AUDIO_ENCODER = "LOOPY_AUDIO_ENCODER,AUDIO_ENCODER"  # ComfyUI accepts either type on this socket
FEATURES = "LOOPY_AUDIO"
MOTION = "LOOPY_MOTION"

CATEGORY = "Loopy"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


@dataclass(eq=False)
class LoopyModelHandle:
    managed: Managed  # the LoopyModel
    name: str
    audio_encoder: Managed | None = None  # embedded in the checkpoint (small models such as the demo)

    @property
    def config(self):
        return self.managed.module.config

    def pipeline(self, audio_encoder=None):
        """A fresh `LoopyPipeline` over the (re)loaded model; cheap, one per node run."""
        from loopy_core.pipeline import LoopyPipeline

        return LoopyPipeline(self.managed.ready(), audio_encoder)


@dataclass(frozen=True, eq=False)
class LoopyAudio:
    features: Any  # loopy_core.audio.AudioFeatures
    audio: dict  # ComfyUI AUDIO {"waveform": [B, C, T], "sample_rate": int}, cut like the features


@dataclass(frozen=True, eq=False)
class LoopyMotion:
    history: Any = None  # [1, C, T, h, w] CPU latents of the last T <= span frames, or None (video start)
    latent_shape: tuple | None = None  # (C, h, w) of the model that made `history`

    def check(self, config) -> None:
        expected = (config.latent_channels, config.latent_size, config.latent_size)
        if self.latent_shape is not None and tuple(self.latent_shape) != expected:
            raise ValueError(
                f"these motion frames hold latents of shape {self.latent_shape} but the model '{config.name}' "
                f"uses {expected}; make them with Loopy Motion Frames from the same model"
            )


def motion_buffer(history, config) -> LoopyMotion:
    """A new `LoopyMotion` holding a CPU copy of `history` (`VideoState.history`, or None)."""
    history = None if history is None else history.detach().to("cpu")
    return LoopyMotion(history, (config.latent_channels, config.latent_size, config.latent_size))


def generation_options(steps, scheduler, audio_cfg, ref_cfg, seed, head_motion=-1.0, expression_motion=-1.0,
                       guidance_end=1.0):
    """Widget values -> `GenerationOptions`. A cfg of 0 means the model's recommended scale; motion intensities
    (0..1, mapped to motion statistics by `loopy_core.motion`) < 0 mean "not set": the audio alone drives the
    motion, as in the paper's inference; guidance applies on the first `guidance_end` of the steps."""
    from loopy_core.motion import intensity_to_statistics
    from loopy_core.pipeline import GenerationOptions

    stats = None
    if head_motion >= 0 or expression_motion >= 0:
        if head_motion < 0 or expression_motion < 0:
            raise ValueError(
                f"set both head_motion and expression_motion (got {head_motion} and {expression_motion}), "
                "or leave both at -1 to let the audio alone drive the motion"
            )
        stats = intensity_to_statistics(head_motion, expression_motion)
    return GenerationOptions(
        steps=int(steps),
        scheduler=scheduler,
        audio_guidance_scale=float(audio_cfg) if audio_cfg > 0 else None,
        ref_guidance_scale=float(ref_cfg) if ref_cfg > 0 else None,
        seed=int(seed),
        motion_stats=stats,
        guidance_interval=(0.0, float(guidance_end)),
    )


def sampling_inputs() -> dict:
    """Widgets shared by Loopy Sampler and Loopy Long Video."""
    from loopy_core.pipeline import SCHEDULERS

    return {
        "steps": ("INT", {"default": 25, "min": 1, "max": 200, "step": 1,
                          "tooltip": "Denoising steps per clip (the paper uses 25 DDIM steps)."}),
        "scheduler": (list(SCHEDULERS), {"default": "ddim",
                                         "tooltip": "The diffusers sampler; the noise schedule and prediction type "
                                                    "come from the model's checkpoint."}),
        "audio_cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "round": 0.01,
                                "tooltip": "Audio guidance scale (w_audio): how strongly lips and motion follow the "
                                           "audio. 0 = the model's recommended scale (paper: 5 for SD1.5 models; "
                                           "small models such as the demo: 1-2)."}),
        "ref_cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Reference guidance scale (w_ref): how strongly the identity follows the "
                                         "reference image. 0 = the model's recommended scale (paper: 3)."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "step": 1, "control_after_generate": True,
                         "tooltip": "Seed of the noise (drawn on the CPU: the same seed gives the same video on any "
                                    "device)."}),
    }


def speed_inputs() -> dict:
    """Optional speed widgets of the sampling nodes."""
    return {
        "guidance_end": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 1.0, "step": 0.05,
                                   "tooltip": "Fraction of the steps, from the first, that use the audio and "
                                              "reference guidance; the rest run one branch instead of three. 1 = "
                                              "every step (the paper); 0.5 = a third fewer denoiser evaluations. "
                                              "A guidance-distilled model runs one branch on every step and gets "
                                              "scale 1 outside this fraction."}),
    }


def motion_control_inputs() -> dict:
    """Optional motion-intensity widgets (the paper's motion statistics, used as a user control)."""
    common = {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.01}
    return {
        "head_motion": ("FLOAT", dict(common, tooltip="Head-movement intensity, 0 (still) .. 1 (lively). -1 = not "
                                                      "set: the audio alone drives the motion. Set together with "
                                                      "expression_motion.")),
        "expression_motion": ("FLOAT", dict(common, tooltip="Expression intensity, 0 .. 1. -1 = not set. Set "
                                                            "together with head_motion.")),
    }
