"""Denoising UNet: the SD1.5 2-D UNet applied per frame, with Loopy's conditioning in every transformer block.

Per frame (paper Sec. 3.1-3.3, DESIGN.md Sec. 2):
1. spatial self-attention over the frame's tokens and the ReferenceNet's reference tokens of the same block;
2. cross-attention (SD's `attn2` slot) to the frame's motion tokens from audio-to-latents;
3. feed-forward;
and after every spatial layer, where AnimateDiff puts its motion modules:
4. inter-clip temporal layer over `[motion-frame features (M) ; current clip (F)]`;
5. intra-clip temporal layer over the F current frames (AnimateDiff v2 names, `intra_clip.*`).
A guidance-distilled student (`guidance_distilled`) also takes the two guidance scales, embedded like the timestep.

The spatial weights live in `unet` with diffusers' `UNet2DConditionModel` names, so SD1.5 loads with no renaming.
Shapes: `sample` `[B, C, F, h, w]` in, `[B, C, F, h, w]` out; frames are folded as `(B F)` inside.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn

from ..config import TemporalConfig, UNetConfig
from .attention import install_processors, project_reference
from .temporal import TemporalLayers
from .unet import build_unet, unet_forward


def _tuples(d: dict | None) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (d or {}).items()}


class GuidanceEmbedding(nn.Module):
    """`[B, 2]` guidance scales (ref_scale, audio_scale) -> `[B, temb]`, added to the timestep embedding.

    Each scale gets the timestep's sinusoidal embedding of `1000 * w` (as LCM's guidance embedding: the scales span a
    few units, the sinusoids' periods up to 10 000), then a small MLP whose last layer starts at zero, so a fresh
    student predicts exactly what its teacher's full-conditions branch does."""

    def __init__(self, num_channels: int, time_embed_dim: int):
        super().__init__()
        self.proj = Timesteps(num_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embedding = TimestepEmbedding(2 * num_channels, time_embed_dim)
        nn.init.zeros_(self.embedding.linear_2.weight)
        nn.init.zeros_(self.embedding.linear_2.bias)

    def forward(self, scales: torch.Tensor) -> torch.Tensor:
        B = scales.shape[0]
        emb = self.proj(1000.0 * scales.flatten()).view(B, -1)  # [B, 2 * num_channels]
        return self.embedding(emb.to(self.embedding.linear_1.weight.dtype))


class LoopyDenoiser(ModelMixin, ConfigMixin):
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict | None = None,
        temporal_config: dict | None = None,
        tokens_to_timestep: bool = False,
        guidance_distilled: bool = False,
    ):
        super().__init__()
        unet_cfg = UNetConfig(**_tuples(unet_config))
        temporal_cfg = TemporalConfig(**_tuples(temporal_config))
        self.unet = build_unet(unet_cfg)
        self.attn1_names = install_processors(self.unet, "read")
        # either layer can be switched off (the paper's ablations); None then
        on = temporal_cfg.inter_clip, temporal_cfg.intra_clip
        self.inter_clip = TemporalLayers(unet_cfg, temporal_cfg, learned_positions=True) if on[0] else None
        self.intra_clip = TemporalLayers(unet_cfg, temporal_cfg, learned_positions=False) if on[1] else None
        # optional second audio path: pooled motion tokens -> timestep embedding (zero-init: no effect until trained)
        self.token_to_timestep = None
        if tokens_to_timestep:
            self.token_to_timestep = nn.Linear(unet_cfg.cross_attention_dim, unet_cfg.block_out_channels[0] * 4)
            nn.init.zeros_(self.token_to_timestep.weight)
            nn.init.zeros_(self.token_to_timestep.bias)
        # guidance-distilled students only: the guidance scales as inputs (zero-init: the teacher until trained)
        self.guidance_embedding = None
        if guidance_distilled:
            c = unet_cfg.block_out_channels[0]
            self.guidance_embedding = GuidanceEmbedding(c, 4 * c)
        self.gradient_checkpointing = False

    @classmethod
    def from_configs(cls, unet: UNetConfig, temporal: TemporalConfig) -> LoopyDenoiser:
        return cls(unet_config=asdict(unet), temporal_config=asdict(temporal))

    def reference_kv(self, ref_tokens: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The reference attention's keys and values of `ref_tokens`, for `forward(ref_kv=...)`: the reference is
        the same at every denoising step, so its projections need not run again at each one."""
        return project_reference(self.unet, ref_tokens)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        motion_tokens: torch.Tensor,
        ref_tokens: dict[str, torch.Tensor] | None,
        motion_feats: dict[tuple[str, int, int], torch.Tensor] | None,
        use_temporal: bool = True,
        ref_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        guidance_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            sample: `[B, C, F, h, w]` noisy latents of the clip.
            timestep: scalar or `[B]`.
            motion_tokens: `[B, F, N, D]` audio-to-latents output.
            ref_tokens: ReferenceNet `attn1` inputs, `[B, n, C]` per name (None: no reference attention, unless
                `ref_kv` is given).
            motion_feats: ReferenceNet motion-frame features `[(B M), C, h, w]` per position (None: the inter-clip
                layers see only the clip).
            use_temporal: False skips both temporal layers (training stage 1, image pairs).
            ref_kv: `reference_kv(ref_tokens)`, projected once for all of a clip's steps (inference); it replaces
                `ref_tokens` in the reference attention.
            guidance_scales: `[B, 2]` (ref_scale, audio_scale) of a guidance-distilled denoiser; None = 1, 1 (the
                full-conditions prediction, no guidance). Refused by a denoiser that is not `guidance_distilled`.
        Returns:
            `[B, C, F, h, w]` model output (epsilon, v or x0, as the model's noise config says).
        """
        B, C, F, h, w = sample.shape
        if motion_tokens.shape[:2] != (B, F):
            raise ValueError(f"motion_tokens {tuple(motion_tokens.shape)} must be [B={B}, F={F}, N, D]")
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(B) if t.ndim == 0 else t
        # [B, C, F, h, w] -> [(B F), C, h, w]
        x = rearrange(sample, "b c f h w -> (b f) c h w")
        context = rearrange(motion_tokens, "b f n d -> (b f) n d")

        def temporal(part, i, j, hidden):
            if not use_temporal:
                return hidden
            if self.inter_clip is not None:
                feats = motion_feats.get((part, i, j)) if motion_feats else None
                hidden = self.inter_clip.get(part, i, j)(hidden, F, context=feats)
            if self.intra_clip is not None:
                hidden = self.intra_clip.get(part, i, j)(hidden, F)
            return hidden

        emb_offset = None
        if self.token_to_timestep is not None:
            emb_offset = self.token_to_timestep(context.mean(dim=1))  # [(B F), temb]
        if self.guidance_embedding is not None:
            if guidance_scales is None:
                guidance_scales = torch.ones(B, 2, device=sample.device)
            if guidance_scales.shape != (B, 2):
                raise ValueError(f"guidance_scales {tuple(guidance_scales.shape)} must be [B={B}, 2] (ref, audio)")
            scale_emb = self.guidance_embedding(guidance_scales).repeat_interleave(F, dim=0)  # [(B F), temb]
            emb_offset = scale_emb if emb_offset is None else emb_offset + scale_emb
        elif guidance_scales is not None:
            raise ValueError("guidance_scales given to a denoiser that is not guidance-distilled "
                             "(config.guidance.distilled is false): run the guidance branches instead")
        out = unet_forward(
            self.unet,
            x,
            t.repeat_interleave(F),
            context,
            cross_attention_kwargs={"ref_tokens": ref_tokens, "ref_kv": ref_kv} if ref_tokens or ref_kv else None,
            after_layer=temporal,
            gradient_checkpointing=self.gradient_checkpointing and self.training,
            emb_offset=emb_offset,
        )
        return rearrange(out, "(b f) c h w -> b c f h w", f=F)
