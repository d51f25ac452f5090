"""Inter-clip and intra-clip temporal layers (paper Sec. 3.2), in AnimateDiff v2's motion-module layout.

Both run after every spatial block of the denoiser, where AnimateDiff puts its motion modules (all down blocks, the
mid block, all up blocks), on features folded as `(B F) C h w` and refolded to `(B h w) T C` for attention along
time:
- **intra-clip** (`intra_clip`): a temporal transformer over the F current frames only, with sinusoidal positions
  (`intra_max_positions`, 32 in `mm_sd_v15_v2`). Its state-dict names are AnimateDiff's own
  (`down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight`, ...),
  so a motion-module checkpoint loads with no renaming (the sinusoidal table is a non-persistent buffer).
- **inter-clip** (`inter_clip`): the same structure over `[motion-frame features (M) ; current clip (F)]` with
  learnable temporal embeddings (`inter_max_positions` = 32 = 20 + 12); only the F current positions are kept.

Every output projection starts at zero, so inserting the layers leaves a pretrained UNet's output unchanged.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from ..config import TemporalConfig, UNetConfig


def sinusoidal_table(max_positions: int, dim: int) -> torch.Tensor:
    """The transformer sinusoid table `[1, max_positions, dim]` (sin on even, cos on odd channels)."""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10_000.0) / dim))
    table = torch.zeros(1, max_positions, dim)
    table[0, :, 0::2] = torch.sin(position * freq)
    table[0, :, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed positions added along time (AnimateDiff's `pos_encoder`); not saved in checkpoints."""

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_positions, dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, T, C]
        if x.shape[1] > self.pe.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the {self.pe.shape[1]} temporal positions of this layer")
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class LearnedPositions(nn.Module):
    """Learnable temporal embeddings (inter-clip layer), initialised to the sinusoid table."""

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        self.weight = nn.Parameter(sinusoidal_table(max_positions, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [N, T, C]
        if x.shape[1] > self.weight.shape[1]:
            raise ValueError(f"{x.shape[1]} frames exceed the {self.weight.shape[1]} temporal positions of this layer")
        return x + self.weight[:, : x.shape[1]].to(x.dtype)


# CUDA's attention kernels (flash, memory-efficient, cuDNN) put the batch on a grid axis of at most 65535 blocks; a
# temporal layer's batch is (clips x h x w) sequences, which passes that at training batch sizes: attend in chunks
MAX_SEQUENCES = 32768


def attend_in_chunks(attn: nn.Module, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """`attn(x, encoder_hidden_states=context)` over at most `MAX_SEQUENCES` sequences at a time (same result)."""
    n = x.shape[0]
    if n <= MAX_SEQUENCES:
        return attn(x, encoder_hidden_states=context)
    return torch.cat([attn(x[i : i + MAX_SEQUENCES],
                           encoder_hidden_states=None if context is None else context[i : i + MAX_SEQUENCES])
                      for i in range(0, n, MAX_SEQUENCES)])


class TemporalTransformerBlock(nn.Module):
    """Self-attention along time (x `attention_blocks_per_layer`) then a GEGLU feed-forward, pre-norm residuals."""

    def __init__(self, dim: int, config: TemporalConfig, learned_positions: bool):
        super().__init__()
        heads = config.num_attention_heads
        if dim % heads:
            raise ValueError(f"temporal layer width {dim} is not divisible by {heads} heads")
        n = config.attention_blocks_per_layer
        self.attention_blocks = nn.ModuleList(
            [Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True) for _ in range(n)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(n)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)
        if learned_positions:
            self.positions: nn.Module = LearnedPositions(dim, config.inter_max_positions)
        else:
            self.positions = SinusoidalPositions(dim, config.intra_max_positions)

    def forward(self, x: torch.Tensor, keep: int | None = None) -> torch.Tensor:
        """x: `[(B h w), T, C]`. With `keep`, only the last `keep` positions are returned: the last attention then
        computes queries (and the feed-forward runs) for those alone, keys and values still over all T."""
        last = len(self.attention_blocks) - 1
        for i, (attn, norm) in enumerate(zip(self.attention_blocks, self.norms)):
            h = self.positions(norm(x))
            if keep is not None and i == last:
                x = attend_in_chunks(attn, h[:, -keep:], h) + x[:, -keep:]
            else:
                x = attend_in_chunks(attn, h) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3D(nn.Module):
    """GroupNorm per frame -> proj_in -> temporal blocks -> proj_out (zero-init) -> residual."""

    def __init__(self, dim: int, config: TemporalConfig, learned_positions: bool, norm_num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, dim, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(dim, config, learned_positions) for _ in range(config.num_transformer_blocks)]
        )
        self.proj_out = nn.Linear(dim, dim)
        if config.zero_initialize:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, hidden_states: torch.Tensor, num_frames: int, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: `[(B F), C, h, w]` features of the current clip, F varying fastest.
            num_frames: F.
            context: `[(B M), C, h, w]` motion-frame features prepended along time (inter-clip), or None.
        Returns:
            `[(B F), C, h, w]`.
        """
        BF, C, h, w = hidden_states.shape
        if BF % num_frames:
            raise ValueError(f"batch {BF} of frames is not a multiple of num_frames={num_frames}")
        B = BF // num_frames
        x = rearrange(hidden_states, "(b f) c h w -> b f c h w", f=num_frames)
        if context is not None:
            if context.shape[0] % B or context.shape[1:] != hidden_states.shape[1:]:
                raise ValueError(
                    f"motion-frame features {tuple(context.shape)} don't match the clip features "
                    f"{tuple(hidden_states.shape)} (batch {B})"
                )
            x = torch.cat([rearrange(context, "(b m) c h w -> b m c h w", b=B), x], dim=1)
        T = x.shape[1]
        x = self.norm(rearrange(x, "b t c h w -> (b t) c h w"))
        x = self.proj_in(rearrange(x, "(b t) c h w -> (b h w) t c", t=T))
        last = len(self.transformer_blocks) - 1
        for i, block in enumerate(self.transformer_blocks):
            # the motion-frame positions only serve as keys and values of the last attention: skip their queries
            x = block(x, keep=num_frames if context is not None and i == last else None)
        x = self.proj_out(x[:, x.shape[1] - num_frames :])  # the current clip's positions
        x = rearrange(x, "(b h w) f c -> (b f) c h w", b=B, h=h, w=w)
        return x + hidden_states


class TemporalModule(nn.Module):
    """AnimateDiff's `VanillaTemporalModule` slot: one temporal transformer."""

    def __init__(self, dim: int, config: TemporalConfig, learned_positions: bool, norm_num_groups: int):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3D(dim, config, learned_positions, norm_num_groups)

    def forward(self, hidden_states, num_frames, context=None):
        return self.temporal_transformer(hidden_states, num_frames, context)


class _Slots(nn.Module):
    """A block's list of temporal modules, named `motion_modules` as in AnimateDiff."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.motion_modules = nn.ModuleList(modules)


def unet_positions(unet: UNetConfig) -> list[tuple[str, int, int, int]]:
    """Every temporal-layer position of a UNet: `(part, block, layer, channels)`, in execution order."""
    chans = unet.block_out_channels
    n = unet.layers_per_block
    positions = [("down", i, j, c) for i, c in enumerate(chans) for j in range(n)]
    positions.append(("mid", 0, 0, chans[-1]))
    positions += [("up", i, j, c) for i, c in enumerate(reversed(chans)) for j in range(n + 1)]
    return positions


class TemporalLayers(nn.Module):
    """One temporal module per UNet position, laid out as `down_blocks.i / mid_block / up_blocks.i`
    `.motion_modules.j` (AnimateDiff's names)."""

    def __init__(self, unet: UNetConfig, config: TemporalConfig, learned_positions: bool):
        super().__init__()

        def make(c):
            return TemporalModule(c, config, learned_positions, unet.norm_num_groups)

        n = unet.layers_per_block
        chans = unet.block_out_channels
        self.down_blocks = nn.ModuleList([_Slots([make(c) for _ in range(n)]) for c in chans])
        self.mid_block = _Slots([make(chans[-1])])
        self.up_blocks = nn.ModuleList([_Slots([make(c) for _ in range(n + 1)]) for c in reversed(chans)])

    def get(self, part: str, block: int, layer: int) -> TemporalModule:
        if part == "mid":
            return self.mid_block.motion_modules[layer]
        blocks = self.down_blocks if part == "down" else self.up_blocks
        return blocks[block].motion_modules[layer]
