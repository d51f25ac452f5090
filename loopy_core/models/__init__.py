"""Loopy's model components, one concept per module (named as in the paper)."""

from __future__ import annotations

from .audio_to_latents import AudioToLatents
from .denoiser import LoopyDenoiser
from .loopy import LoopyModel
from .reference_net import ReferenceNet
from .temporal import TemporalLayers, TemporalModule
from .tsm import TemporalSegmentModule, tsm_groups
from .vae import LatentCodec

__all__ = [
    "AudioToLatents",
    "LatentCodec",
    "LoopyDenoiser",
    "LoopyModel",
    "ReferenceNet",
    "TemporalLayers",
    "TemporalModule",
    "TemporalSegmentModule",
    "tsm_groups",
]
