"""Attention processors for reference attention: the ReferenceNet writes its `attn1` inputs, the denoiser reads them.

Installed with diffusers' `set_attn_processor` on every attention of a UNet (one processor object per module, which
knows its module's name). Reference tokens travel explicitly through `cross_attention_kwargs` on each call, never as
state stashed on modules:
- `ref_bank: dict[str, Tensor]` (ReferenceNet, "write"): the processor stores its `attn1` input `[N_img, n, C]`.
- `ref_tokens: dict[str, Tensor]` (denoiser, "read"): `[B, n, C]` per `attn1` name; the processor attends over
  `[own tokens ; reference tokens]` of the same block, shared by the F frames of its batch item (the denoiser's
  batch is `(B F)`). The reference's keys and values are projected once per batch item, not once per frame;
- `ref_kv: dict[str, (Tensor, Tensor)]` (denoiser, optional): those keys and values projected ahead by
  `project_reference`. The reference doesn't change across a clip's denoising steps, so the pipeline projects once
  per clip instead of once per step, outside the denoiser's forward (which then mutates nothing and compiles to one
  graph).
Cross-attention (`attn2`) processors ignore all three. All computation is PyTorch SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from einops import rearrange


def attend(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor, mask=None,
           extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Multi-head SDPA of `hidden_states` `[N, n, C]` over `context` `[N, m, C']` with `attn`'s projections;
    `extra_kv` (projected keys and values `[B, m', inner]`, N = B x frames) are appended to every frame's."""
    q = rearrange(attn.to_q(hidden_states), "b n (h d) -> b h n d", h=attn.heads)
    k, v = attn.to_k(context), attn.to_v(context)
    if extra_kv is not None:
        frames = k.shape[0] // extra_kv[0].shape[0]
        k = torch.cat([k, extra_kv[0].repeat_interleave(frames, dim=0)], dim=1)
        v = torch.cat([v, extra_kv[1].repeat_interleave(frames, dim=0)], dim=1)
    k = rearrange(k, "b m (h d) -> b h m d", h=attn.heads)
    v = rearrange(v, "b m (h d) -> b h m d", h=attn.heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N, heads, n, d]
    out = rearrange(out, "b h n d -> b n (h d)").to(q.dtype)
    return attn.to_out[1](attn.to_out[0](out))


class LoopyAttnProcessor:
    """One attention module's processor: `mode` is "write" (ReferenceNet attn1), "read" (denoiser attn1) or
    "plain" (everything else)."""

    def __init__(self, name: str, mode: str = "plain"):
        if mode not in ("write", "read", "plain"):
            raise ValueError(f"mode must be 'write', 'read' or 'plain', got {mode!r}")
        self.name = name
        self.mode = mode

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        ref_bank: dict[str, torch.Tensor] | None = None,
        ref_tokens: dict[str, torch.Tensor] | None = None,
        ref_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:  # cross-attention: motion tokens or the ReferenceNet's null context
            return attend(attn, hidden_states, encoder_hidden_states)
        if self.mode == "write" and ref_bank is not None:
            ref_bank[self.name] = hidden_states
        elif self.mode == "read" and (ref_kv is not None or ref_tokens is not None):
            if ref_kv is not None:
                kv = ref_kv[self.name]
            else:
                ref = ref_tokens[self.name].to(hidden_states.dtype)  # [B, n_ref, C]
                kv = attn.to_k(ref), attn.to_v(ref)
            if hidden_states.shape[0] % kv[0].shape[0]:
                raise ValueError(
                    f"{self.name}: {hidden_states.shape[0]} frames can't be split over {kv[0].shape[0]} references"
                )
            return attend(attn, hidden_states, hidden_states, extra_kv=kv)
        return attend(attn, hidden_states, hidden_states)


def project_reference(
    unet: torch.nn.Module, ref_tokens: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each `attn1`'s keys and values `[B, n, inner]` of the reference tokens `[B, n, C]`: what a "read" processor
    appends to its own, computed once for as many calls as share the reference."""
    out = {}
    for name, ref in ref_tokens.items():
        attn = unet.get_submodule(name)
        ref = ref.to(attn.to_k.weight.dtype)
        out[name] = attn.to_k(ref), attn.to_v(ref)
    return out


def install_processors(unet: torch.nn.Module, self_attention_mode: str) -> list[str]:
    """Install a `LoopyAttnProcessor` on every attention of `unet`; `attn1` modules get `self_attention_mode`.

    Returns the names of the `attn1` modules (the keys of `ref_bank` / `ref_tokens`), in execution order.
    """
    processors = {}
    self_attention = []
    for name in unet.attn_processors:  # "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"
        module_name = name.removesuffix(".processor")
        is_self = module_name.endswith("attn1")
        processors[name] = LoopyAttnProcessor(module_name, self_attention_mode if is_self else "plain")
        if is_self:
            self_attention.append(module_name)
    unet.set_attn_processor(processors)
    return self_attention
