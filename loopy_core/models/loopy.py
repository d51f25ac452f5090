"""`LoopyModel`: every trained part of Loopy plus its frozen codec, built from one `LoopyConfig`.

Components (checkpoint key prefixes): `reference_net`, `denoiser` (spatial `denoiser.unet`, `denoiser.inter_clip`,
`denoiser.intra_clip`), `audio_to_latents`, and `vae` (frozen; SD's VAE or the weight-free pixel codec). The TSM has
no parameters. The audio encoder (wav2vec2) is separate: it is loaded from its own folder.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from ..config import LoopyConfig
from .audio_to_latents import AudioToLatents
from .denoiser import LoopyDenoiser
from .reference_net import ReferenceNet
from .tsm import TemporalSegmentModule
from .vae import LatentCodec

TRAINABLE_COMPONENTS = ("reference_net", "denoiser", "audio_to_latents")


def a2l_kwargs(config: LoopyConfig) -> dict:
    a, q = config.audio, config.a2l
    return dict(
        num_layers=a.num_layers,
        feature_dim=a.feature_dim,
        window=a.window,
        num_tokens=q.num_tokens,
        width=q.width,
        depth=q.depth,
        num_heads=q.num_heads,
        num_motion_stats=q.num_motion_stats,
        keep_level=q.keep_level,
        direct=q.direct,
    )


class LoopyModel(nn.Module):
    def __init__(self, config: LoopyConfig):
        super().__init__()
        self.config = config
        self.reference_net = ReferenceNet(unet_config=asdict(config.unet))
        self.denoiser = LoopyDenoiser(
            unet_config=asdict(config.unet),
            temporal_config=asdict(config.temporal),
            tokens_to_timestep=config.a2l.add_to_timestep,
            guidance_distilled=config.guidance.distilled,
        )
        self.audio_to_latents = AudioToLatents(**a2l_kwargs(config))
        self.tsm = TemporalSegmentModule(config.tsm)
        self.vae = LatentCodec(config.vae)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of each component, as `loopy inspect` reports them."""

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        return {
            "reference_net": count(self.reference_net),
            "denoiser_spatial": count(self.denoiser.unet),
            "inter_clip": count(self.denoiser.inter_clip) if self.denoiser.inter_clip is not None else 0,
            "intra_clip": count(self.denoiser.intra_clip) if self.denoiser.intra_clip is not None else 0,
            "audio_to_latents": count(self.audio_to_latents),
            "vae": count(self.vae),
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.split(".", 1)[0] in TRAINABLE_COMPONENTS}

    @torch.no_grad()
    def motion_tokens(
        self, audio_feats: torch.Tensor, motion_stats: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Motion tokens with audio and without ("null audio", the guidance branches' condition), `[B, F, N, D]`."""
        B = audio_feats.shape[0]
        on = torch.ones(B, dtype=torch.bool, device=audio_feats.device)
        with_audio = self.audio_to_latents(audio_feats, on, motion_stats)
        no_audio = self.audio_to_latents(audio_feats, ~on, motion_stats)
        return with_audio, no_audio
