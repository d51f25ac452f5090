"""Test helper: diffusers -> original LDM (single-file Stable Diffusion) key names, written from the LDM layout.

It is the inverse of what `loopy_core.sd_import` asks diffusers' converters to do, written independently so a
round trip (diffusers model -> LDM single file -> import) checks the real conversion. The LDM layout (CompVis
`ldm.modules.diffusionmodules.openaimodel.UNetModel` and `...model.Encoder/Decoder`):

UNet (`model.diffusion_model.`): `time_embed.{0,2}`, `input_blocks.0.0` (conv_in), then per down block `b` and
layer `j`: `input_blocks.{1 + b*(n+1) + j}.{0: resnet, 1: transformer}` and the downsampler at
`input_blocks.{(b+1)*(n+1)}.0.op`; `middle_block.{0: resnet, 1: transformer, 2: resnet}`; per up block `b`, layer
`j` (n+1 layers): `output_blocks.{b*(n+1) + j}.{0: resnet, 1: transformer}` and the upsampler after the last layer
at `.1.conv` (no transformer) or `.2.conv`; `out.{0: norm, 2: conv}`. Resnets: `in_layers.{0: norm, 2: conv}`,
`emb_layers.1`, `out_layers.{0: norm, 3: conv}`, `skip_connection`.

VAE (`first_stage_model.`): `encoder.down.{i}.block.{j}` / `.downsample.conv`; `{encoder,decoder}.mid.block_{1,2}`
and `.mid.attn_1.{norm,q,k,v,proj_out}` as 1x1 convs; `decoder.up.{N-1-i}` (LDM counts decoder levels from the
lowest resolution, diffusers from the highest) `.block.{j}` / `.upsample.conv`; `norm_out`, `nin_shortcut`,
`quant_conv`, `post_quant_conv`.
"""

from __future__ import annotations

import re

import torch

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet(rest: str) -> str:
    module, _, param = rest.rpartition(".")
    return f"{UNET_RESNET[module]}.{param}"


def unet_key_to_ldm(key: str, layers_per_block: int, up_block_types: list[str]) -> str:
    """One diffusers `UNet2DConditionModel` key -> its LDM name (without the `model.diffusion_model.` prefix)."""
    n = layers_per_block
    for ours, theirs in UNET_TOP.items():
        if key.startswith(ours + "."):
            return theirs + key[len(ours) :]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + b * (n + 1) + j
        return f"input_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = b * (n + 1) + j
        return f"output_blocks.{index}.0.{_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        b = int(m[1])
        slot = 2 if up_block_types[b].startswith("CrossAttn") else 1
        return f"output_blocks.{b * (n + 1) + n}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def vae_key_to_ldm(key: str, num_levels: int) -> str:
    """One diffusers `AutoencoderKL` key -> its LDM name (without the `first_stage_model.` prefix)."""
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\..+|(post_)?quant_conv\..+", key):
        return key
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_levels - 1 - int(m[1])
        return f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
    raise KeyError(f"no LDM name for VAE key {key!r}")


def to_ldm_single_file(
    unet_sd: dict[str, torch.Tensor],
    vae_sd: dict[str, torch.Tensor] | None,
    unet_kwargs: dict,
    vae_kwargs: dict | None,
) -> dict[str, torch.Tensor]:
    """A single-file SD checkpoint in the LDM layout (plus a text-encoder stand-in that importers must ignore)."""
    out = {}
    for key, value in unet_sd.items():
        name = "model.diffusion_model." + unet_key_to_ldm(
            key, unet_kwargs["layers_per_block"], unet_kwargs["up_block_types"]
        )
        out[name] = value.clone()
    for key, value in (vae_sd or {}).items():
        name = "first_stage_model." + vae_key_to_ldm(key, len(vae_kwargs["block_out_channels"]))
        value = value.clone()
        if ".mid.attn_1." in name and value.ndim == 2:  # LDM's attention projections are 1x1 convs
            value = value[:, :, None, None]
        out[name] = value
    assert len(out) == len(unet_sd) + len(vae_sd or {}), "two diffusers keys got the same LDM name"
    out["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(4)
    out["alphas_cumprod"] = torch.linspace(1.0, 0.0, 10)
    return out
