"""The frozen image codec between pixels `[B, 3, H, W]` in -1..1 and scaled latents `[B, C, h, w]`.

`autoencoder_kl` wraps diffusers' `AutoencoderKL` (SD's VAE; latents scaled by 0.18215, the posterior mean is used
so encoding is deterministic). `pixel_unshuffle` is a weight-free, lossless space-to-depth codec for small models
trained from scratch, which have no pretrained VAE (the demo model). Decoding runs in slices so peak memory does not
depend on how many frames are decoded at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from ..config import VAEConfig


class LatentCodec(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.vae = AutoencoderKL(**config.diffusers_kwargs()) if config.kind == "autoencoder_kl" else None
        self.requires_grad_(False)

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, slice_size: int = 8) -> torch.Tensor:
        """`[B, 3, H, W]` in -1..1 -> scaled latents `[B, C, h, w]`."""
        out = []
        for chunk in images.split(slice_size):
            if self.vae is None:
                z = F.pixel_unshuffle(chunk, self.config.unshuffle_factor)
            else:
                z = self.vae.encode(chunk.to(self.vae.dtype)).latent_dist.mode()
            out.append(z * self.scaling_factor)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, slice_size: int = 8) -> torch.Tensor:
        """Scaled latents `[B, C, h, w]` -> `[B, 3, H, W]` float32 in -1..1 (clamped)."""
        out = []
        for chunk in latents.split(slice_size):
            z = chunk / self.scaling_factor
            if self.vae is None:
                x = F.pixel_shuffle(z, self.config.unshuffle_factor)
            else:
                x = self.vae.decode(z.to(self.vae.dtype)).sample
            out.append(x.float().clamp(-1, 1))
        return torch.cat(out)
