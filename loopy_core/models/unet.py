"""SD1.5-structured 2-D UNet driven block by block, with a hook after every spatial layer.

The ReferenceNet and the denoiser are both a diffusers `UNet2DConditionModel` (so SD1.5 weights load with no
renaming). This module runs such a UNet the way its own `forward` does, but calls `after_layer(part, block, layer,
hidden_states)` after every resnet(+attention) pair and after the mid block's attention: exactly the places where
AnimateDiff puts its motion modules. The denoiser applies its temporal layers there; the ReferenceNet records the
motion frames' features there. Supported blocks: SD's `CrossAttnDownBlock2D`, `DownBlock2D`,
`UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import UNet2DConditionModel
from torch.utils.checkpoint import checkpoint

from ..config import UNetConfig

AfterLayer = Callable[[str, int, int, torch.Tensor], torch.Tensor]
SUPPORTED_BLOCKS = {"CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D", "UpBlock2D"}


def build_unet(config: UNetConfig) -> UNet2DConditionModel:
    """A diffusers `UNet2DConditionModel` with SD1.5's structure at the config's widths."""
    unknown = (set(config.down_block_types) | set(config.up_block_types)) - SUPPORTED_BLOCKS
    if unknown:
        raise ValueError(f"Unsupported UNet block types {sorted(unknown)}; supported: {sorted(SUPPORTED_BLOCKS)}")
    return UNet2DConditionModel(**config.diffusers_kwargs())


def _run(fn, *args, use_checkpoint: bool):
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def unet_forward(
    unet: UNet2DConditionModel,
    sample: torch.Tensor,
    timestep: torch.Tensor | float,
    encoder_hidden_states: torch.Tensor,
    cross_attention_kwargs: dict | None = None,
    after_layer: AfterLayer | None = None,
    run_head: bool = True,
    gradient_checkpointing: bool = False,
    emb_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run `unet` on `sample` `[N, C, h, w]` and return `[N, C_out, h, w]` (or the last up-block features when
    `run_head` is False, for the ReferenceNet, which has no output head).

    Args:
        timestep: a scalar or `[N]`.
        encoder_hidden_states: `[N, n, D]` tokens for cross-attention (`attn2`).
        cross_attention_kwargs: passed to every attention processor (reference tokens; see `attention.py`).
        after_layer: called as `after_layer(part, block, layer, h)` with part in {"down", "mid", "up"}; its return
            value replaces `h`.
        gradient_checkpointing: recompute each layer in the backward pass (training memory).
        emb_offset: `[N, temb]` added to the timestep embedding (audio tokens, when the model uses that path).
    """
    N = sample.shape[0]
    kwargs = dict(encoder_hidden_states=encoder_hidden_states, cross_attention_kwargs=cross_attention_kwargs)
    hook = after_layer if after_layer is not None else (lambda part, i, j, h: h)  # (`or` breaks torch.compile graphs)

    # 1. time
    t = torch.as_tensor(timestep, device=sample.device)
    t = t.expand(N) if t.ndim == 0 else t
    emb = unet.time_embedding(unet.time_proj(t).to(sample.dtype))
    if emb_offset is not None:
        emb = emb + emb_offset.to(emb.dtype)

    # 2. pre-process
    h = unet.conv_in(sample)
    skips = [h]

    # 3. down
    for i, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            attn = attentions[j] if attentions is not None else None

            def layer(x, resnet=resnet, attn=attn, i=i, j=j):
                x = resnet(x, emb)
                if attn is not None:
                    x = attn(x, **kwargs, return_dict=False)[0]
                return hook("down", i, j, x)

            h = _run(layer, h, use_checkpoint=gradient_checkpointing)
            skips.append(h)
        if block.downsamplers is not None:
            for downsampler in block.downsamplers:
                h = downsampler(h)
            skips.append(h)

    # 4. mid
    mid = unet.mid_block

    def mid_layer(x):
        x = mid.resnets[0](x, emb)
        for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
            x = hook("mid", 0, 0, attn(x, **kwargs, return_dict=False)[0])
            x = resnet(x, emb)
        return x

    h = _run(mid_layer, h, use_checkpoint=gradient_checkpointing)

    # 5. up
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            attn = attentions[j] if attentions is not None else None

            def layer(x, skip, resnet=resnet, attn=attn, i=i, j=j):
                x = resnet(torch.cat([x, skip], dim=1), emb)
                if attn is not None:
                    x = attn(x, **kwargs, return_dict=False)[0]
                return hook("up", i, j, x)

            h = _run(layer, h, skips.pop(), use_checkpoint=gradient_checkpointing)
        if block.upsamplers is not None:
            for upsampler in block.upsamplers:
                h = upsampler(h, skips[-1].shape[-2:])

    if not run_head:
        return h
    # 6. post-process
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
