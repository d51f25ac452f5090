"""ReferenceNet: an SD1.5-shaped 2-D UNet run at timestep 0 on the reference and the motion-frame latents.

Once per clip, on `[z_ref ; z_motion]` (1 + M latents per video; paper Sec. 3.2), it yields
- `ref_tokens`: the input of every spatial self-attention (`attn1`) for the reference image, keyed by module name,
  `[B, h*w, C]` each; the denoiser's reference attention reads them;
- `motion_feats`: the features of the M motion-frame latents after every spatial layer (the temporal-layer
  positions), keyed `(part, block, layer)`, `[(B M), C, h, w]` each; the denoiser's inter-clip layers read them.
A 2-D UNet treats every latent independently, so the reference and the motion frames can also be encoded in two
calls (`ref_latents` once per video, `motion_latents` per clip) with identical results.

*Reconstructed*: the paper has no text or image-embedding input, so cross-attention sees a learned null context
(`null_context`, one token of the cross-attention width). The UNet's output head (`conv_norm_out`, `conv_out`)
is removed: nothing reads it.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from ..config import UNetConfig
from .attention import install_processors
from .unet import build_unet, unet_forward

HEAD_KEYS = ("conv_norm_out.weight", "conv_norm_out.bias", "conv_out.weight", "conv_out.bias")


class ReferenceNet(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict | None = None):
        super().__init__()
        unet_cfg = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in (unet_config or {}).items()})
        self.unet = build_unet(unet_cfg)
        self.unet.conv_norm_out = None
        self.unet.conv_out = None
        self.attn1_names = install_processors(self.unet, "write")
        self.null_context = nn.Parameter(torch.zeros(1, 1, unet_cfg.cross_attention_dim))
        self.gradient_checkpointing = False

    @classmethod
    def from_unet_config(cls, config: UNetConfig) -> ReferenceNet:
        return cls(unet_config=asdict(config))

    def forward(
        self, ref_latents: torch.Tensor | None, motion_latents: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[tuple[str, int, int], torch.Tensor]]:
        """
        Args:
            ref_latents: `[B, C, h, w]` scaled reference latents, or None (motion features only).
            motion_latents: `[B, C, M, h, w]` TSM output, or None (reference tokens only).
        Returns:
            `(ref_tokens, motion_feats)`; each is empty when its input is None.
        """
        parts = []
        if ref_latents is not None:
            parts.append(ref_latents)
        M = 0
        if motion_latents is not None:
            M = motion_latents.shape[2]
            parts.append(rearrange(motion_latents, "b c m h w -> (b m) c h w"))
        if not parts:
            raise ValueError("ReferenceNet needs ref_latents, motion_latents or both")
        sample = torch.cat(parts, dim=0)
        n_ref = ref_latents.shape[0] if ref_latents is not None else 0
        context = self.null_context.to(sample.dtype).expand(sample.shape[0], -1, -1)

        bank: dict[str, torch.Tensor] = {}
        motion_feats: dict[tuple[str, int, int], torch.Tensor] = {}

        def record(part, i, j, h):
            if M:
                motion_feats[(part, i, j)] = h[n_ref:]
            return h

        unet_forward(
            self.unet,
            sample,
            torch.zeros((), device=sample.device),
            context,
            cross_attention_kwargs={"ref_bank": bank},
            after_layer=record,
            run_head=False,
            gradient_checkpointing=self.gradient_checkpointing and self.training,
        )
        ref_tokens = {name: bank[name][:n_ref] for name in self.attn1_names} if n_ref else {}
        return ref_tokens, motion_feats
