"""Audio-to-latents (A2L, paper Sec. 3.3): learnable query tokens -> per-frame motion tokens `[B, F, N, D]`.

Notation (<variable> -> paper):
- `queries` -> the learnable tokens that become the "motion latents" (N = `num_tokens`, 32 by default);
- condition tokens -> the shared per-frame tokens they attend to: projected audio windows (2w+1 = 5 per frame) and,
  in training, motion statistics (head-movement variance, expression variance) as one token each.

Each frame's queries attend (cross-attention, then self-attention, then feed-forward; `depth` times) to that frame's
condition tokens plus a learned null token that is always present, so a sample with no modality still has a
well-defined output: that output is the "no audio" condition the guidance's unconditional branch uses.
`audio_mask` / `motion_mask` (`[B]` bool) decide which modalities a sample has: training mixes them (audio only,
audio + motion, motion only), inference uses audio only, or audio + user-given motion statistics as a control of
motion intensity. wav2vec2's L layers are mixed by learned softmax weights before projection.
*Reconstructed*: token count, depth, the layer mix and the null token.

Options: `keep_level` adds each audio window's level (the mean and spread of its features before the input
LayerNorm, which removes them; for log-mel features the mean is the loudness, the strongest cue of mouth opening)
through a zero-initialised projection, so switching it on leaves a trained model's output unchanged until it trains.
`direct` (the paper's "A2L replaced by cross-attention" ablation) drops the query tokens: the output is the
condition tokens themselves, absent ones replaced by the null token, `[B, F, 1 + (2w+1) + S, width]`.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn


class A2LBlock(nn.Module):
    """Queries: cross-attention to condition tokens -> self-attention -> MLP, pre-norm residuals."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_padding: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = q + self.cross_attn(self.norm_q(q), kv, kv, key_padding_mask=kv_padding, need_weights=False)[0]
        x = self.norm_self(q)
        q = q + self.self_attn(x, x, x, need_weights=False)[0]
        return q + self.ff(self.norm_ff(q))


class AudioToLatents(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(
        self,
        num_layers: int = 12,
        feature_dim: int = 768,
        window: int = 2,
        num_tokens: int = 32,
        width: int = 768,
        depth: int = 2,
        num_heads: int = 8,
        num_motion_stats: int = 2,
        keep_level: bool = False,
        direct: bool = False,
    ):
        super().__init__()
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        self.audio_proj = nn.Sequential(
            nn.LayerNorm(feature_dim), nn.Linear(feature_dim, width), nn.GELU(), nn.Linear(width, width)
        )
        self.window_embed = nn.Parameter(torch.randn(2 * window + 1, width) * 0.02)
        self.level_proj = None
        if keep_level:
            self.level_proj = nn.Sequential(nn.Linear(2, width), nn.GELU(), nn.Linear(width, width))
            nn.init.zeros_(self.level_proj[2].weight)
            nn.init.zeros_(self.level_proj[2].bias)
        self.motion_proj = nn.Sequential(nn.Linear(1, width), nn.GELU(), nn.Linear(width, width))
        self.motion_embed = nn.Parameter(torch.randn(num_motion_stats, width) * 0.02)
        self.null_token = nn.Parameter(torch.randn(1, width) * 0.02)
        self.queries = None if direct else nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.blocks = nn.ModuleList([] if direct else [A2LBlock(width, num_heads) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(width)

    def forward(
        self,
        audio_feats: torch.Tensor,
        audio_mask: torch.Tensor | None = None,
        motion_stats: torch.Tensor | None = None,
        motion_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            audio_feats: `[B, F, 2w+1, L, D]` windowed wav2vec2 features (any values where `audio_mask` is False).
            audio_mask: `[B]` bool, True where the sample has audio (default: all True).
            motion_stats: `[B, S]` or `[B, F, S]` motion statistics (S = `num_motion_stats`), or None.
            motion_mask: `[B]` bool, True where `motion_stats` are given (default: True iff `motion_stats` given).
        Returns:
            `[B, F, N, width]` motion tokens.
        """
        cfg = self.config
        B, F, W, L, D = audio_feats.shape
        if (W, L, D) != (2 * cfg.window + 1, cfg.num_layers, cfg.feature_dim):
            raise ValueError(
                f"audio features [B, F, {W}, {L}, {D}] don't match this model's "
                f"[B, F, {2 * cfg.window + 1}, {cfg.num_layers}, {cfg.feature_dim}] (window, layers, width)"
            )
        device = audio_feats.device
        if audio_mask is None:
            audio_mask = torch.ones(B, dtype=torch.bool, device=device)
        # 1. audio tokens: mix layers, project, mark the window position -> [B, F, W, width]
        mix = self.layer_logits.softmax(0).to(audio_feats.dtype)
        mixed = torch.einsum("bfwld,l->bfwd", audio_feats, mix)
        audio = self.audio_proj(mixed) + self.window_embed
        if self.level_proj is not None:
            level = torch.stack([mixed.mean(-1), mixed.std(-1, unbiased=False)], dim=-1)  # [B, F, W, 2]
            audio = audio + self.level_proj(level)
        # 2. motion-statistic tokens -> [B, F, S, width]
        S = cfg.num_motion_stats
        if motion_stats is None:
            motion = audio.new_zeros(B, F, S, cfg.width)
            motion_mask = torch.zeros(B, dtype=torch.bool, device=device)
        else:
            stats = motion_stats[:, None].expand(B, F, S) if motion_stats.ndim == 2 else motion_stats
            motion = self.motion_proj(stats[..., None].to(audio.dtype)) + self.motion_embed
            if motion_mask is None:
                motion_mask = torch.ones(B, dtype=torch.bool, device=device)
        # 3. condition tokens [null ; audio window ; motion stats] and which of them each sample lacks
        null = self.null_token.expand(B, F, 1, cfg.width).to(audio.dtype)
        kv = rearrange(torch.cat([null, audio, motion], dim=2), "b f n d -> (b f) n d")
        absent = torch.cat(
            [
                torch.zeros(B, 1, dtype=torch.bool, device=device),
                (~audio_mask)[:, None].expand(B, W),
                (~motion_mask)[:, None].expand(B, S),
            ],
            dim=1,
        )
        absent = absent.repeat_interleave(F, dim=0)  # [(B F), 1 + W + S]
        if cfg.direct:
            tokens = torch.where(absent[..., None], null.reshape(B * F, 1, cfg.width), kv)
            return rearrange(self.norm_out(tokens), "(b f) n d -> b f n d", b=B)
        # 4. queries attend -> [B, F, N, width]
        q = self.queries.to(audio.dtype).expand(B * F, -1, -1)
        for block in self.blocks:
            q = block(q, kv, absent)
        return rearrange(self.norm_out(q), "(b f) n d -> b f n d", b=B)
