"""Model components on the tiny config: shapes, zero-init identity, temporal isolation, guidance batching."""

from __future__ import annotations

import pytest
import torch

from loopy_core import guidance
from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel
from loopy_core.models.unet import unet_forward

F = 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LoopyModel(LoopyConfig.tiny()).eval()


def clip_inputs(model, B=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    C, s = cfg.latent_channels, cfg.latent_size
    a = cfg.audio
    return dict(
        ref=torch.randn(B, C, s, s, generator=g),
        history=torch.randn(B, C, 30, s, s, generator=g),
        sample=torch.randn(B, C, F, s, s, generator=g),
        audio=torch.randn(B, F, 2 * a.window + 1, a.num_layers, a.feature_dim, generator=g),
    )


def perturb_(module: torch.nn.Module, seed: int = 0):
    """Give zero-initialised output projections random values (as if trained)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if "proj_out" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.1


@torch.no_grad()
def test_walker_matches_diffusers_unet_forward(model):
    """Our block-by-block UNet run equals diffusers' own forward when no hook changes anything."""
    unet = model.denoiser.unet
    from diffusers.models.attention_processor import AttnProcessor2_0

    x = torch.randn(2, 4, 8, 8)
    ctx = torch.randn(2, 3, 32)
    ours = unet_forward(unet, x, torch.tensor([10, 900]), ctx)
    saved = unet.attn_processors
    unet.set_attn_processor(AttnProcessor2_0())
    try:
        ref = unet(x, torch.tensor([10, 900]), ctx).sample
    finally:
        unet.set_attn_processor(saved)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_clip_forward_shapes(model):
    inp = clip_inputs(model)
    motion = model.tsm(inp["history"], inp["ref"])
    assert motion.shape == (1, 4, 20, 8, 8)
    ref_tokens, motion_feats = model.reference_net(inp["ref"], motion)
    assert set(ref_tokens) == set(model.denoiser.attn1_names)
    assert all(v.shape[0] == 1 for v in ref_tokens.values())
    assert len(motion_feats) == 2 * 1 + 1 + 2 * 2  # down (2 blocks x 1) + mid + up (2 blocks x 2)
    assert all(v.shape[0] == 20 for v in motion_feats.values())
    tokens, _ = model.motion_tokens(inp["audio"])
    assert tokens.shape == (1, F, 4, 32)
    out = model.denoiser(inp["sample"], 500, tokens, ref_tokens, motion_feats)
    assert out.shape == inp["sample"].shape and torch.isfinite(out).all()


@torch.no_grad()
def test_reference_net_split_calls_equal_joint_call(model):
    inp = clip_inputs(model)
    motion = model.tsm(inp["history"], inp["ref"])
    joint_ref, joint_motion = model.reference_net(inp["ref"], motion)
    only_ref, none = model.reference_net(inp["ref"], None)
    _, only_motion = model.reference_net(None, motion)
    assert none == {}
    for k in joint_ref:
        torch.testing.assert_close(joint_ref[k], only_ref[k], atol=1e-5, rtol=1e-5)
    for k in joint_motion:
        torch.testing.assert_close(joint_motion[k], only_motion[k], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_zero_initialised_temporal_layers_leave_output_unchanged(model):
    """At init, the inter- and intra-clip layers are identities: the denoiser is the per-frame 2-D UNet."""
    inp = clip_inputs(model)
    motion = model.tsm(inp["history"], inp["ref"])
    ref_tokens, motion_feats = model.reference_net(inp["ref"], motion)
    tokens, _ = model.motion_tokens(inp["audio"])
    with_temporal = model.denoiser(inp["sample"], 500, tokens, ref_tokens, motion_feats)
    without = model.denoiser(inp["sample"], 500, tokens, ref_tokens, motion_feats, use_temporal=False)
    torch.testing.assert_close(with_temporal, without, atol=1e-6, rtol=0)


@torch.no_grad()
def test_motion_frames_reach_the_clip_only_through_inter_clip_layers():
    torch.manual_seed(0)
    model = LoopyModel(LoopyConfig.tiny()).eval()
    perturb_(model.denoiser.intra_clip, seed=1)  # a "trained" intra-clip layer
    inp = clip_inputs(model)
    ref_tokens, feats_a = model.reference_net(inp["ref"], model.tsm(inp["history"], inp["ref"]))
    _, feats_b = model.reference_net(None, model.tsm(inp["history"] * -1.0, inp["ref"]))
    tokens, _ = model.motion_tokens(inp["audio"])
    out_a = model.denoiser(inp["sample"], 500, tokens, ref_tokens, feats_a)
    out_b = model.denoiser(inp["sample"], 500, tokens, ref_tokens, feats_b)
    torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=0)  # intra-clip never sees motion frames
    perturb_(model.denoiser.inter_clip, seed=2)
    out_a = model.denoiser(inp["sample"], 500, tokens, ref_tokens, feats_a)
    out_b = model.denoiser(inp["sample"], 500, tokens, ref_tokens, feats_b)
    assert (out_a - out_b).abs().max() > 1e-3  # the inter-clip layer does


@torch.no_grad()
def test_intra_clip_layer_mixes_frames_only_within_the_clip():
    torch.manual_seed(0)
    model = LoopyModel(LoopyConfig.tiny()).eval()
    perturb_(model.denoiser.intra_clip, seed=1)
    layer = model.denoiser.intra_clip.get("down", 0, 0)
    x = torch.randn(2 * F, 32, 8, 8)  # two videos of F frames, folded (B F)
    y = layer(x, F)
    x2 = x.clone()
    x2[F + 3] += 1.0  # change one frame of the second video
    y2 = layer(x2, F)
    torch.testing.assert_close(y[:F], y2[:F])  # the first video is untouched
    assert (y[F:] - y2[F:]).abs().amax(dim=(1, 2, 3)).min() > 0  # every frame of the second one changed


@torch.no_grad()
def test_reference_attention_uses_reference_tokens(model):
    inp = clip_inputs(model)
    ref_tokens, motion_feats = model.reference_net(inp["ref"], model.tsm(inp["history"], inp["ref"]))
    tokens, _ = model.motion_tokens(inp["audio"])
    out = model.denoiser(inp["sample"], 500, tokens, ref_tokens, motion_feats)
    zeroed = {k: torch.zeros_like(v) for k, v in ref_tokens.items()}
    out_zero = model.denoiser(inp["sample"], 500, tokens, zeroed, motion_feats)
    assert (out - out_zero).abs().max() > 1e-4


@torch.no_grad()
def test_three_guidance_branches_in_one_batch_equal_separate_forwards(model):
    inp = clip_inputs(model)
    ref_tokens, motion_feats = model.reference_net(inp["ref"], model.tsm(inp["history"], inp["ref"]))
    with_audio, no_audio = model.motion_tokens(inp["audio"])
    assert (with_audio - no_audio).abs().max() > 1e-4
    zero_ref = {k: torch.zeros_like(v) for k, v in ref_tokens.items()}
    branches = [(zero_ref, no_audio), (ref_tokens, no_audio), (ref_tokens, with_audio)]  # guidance.BRANCHES
    separate = [model.denoiser(inp["sample"], 500, tok, rt, motion_feats) for rt, tok in branches]
    batched = model.denoiser(
        inp["sample"].repeat(3, 1, 1, 1, 1),
        500,
        torch.cat([tok for _, tok in branches]),
        {k: torch.cat([rt[k] for rt, _ in branches]) for k in ref_tokens},
        {k: v.repeat(3, 1, 1, 1) for k, v in motion_feats.items()},
    )
    torch.testing.assert_close(batched, torch.cat(separate), atol=1e-5, rtol=1e-5)
    e = guidance.combine_batched(batched, ref_scale=3.0, audio_scale=5.0)
    e_u, e_r, e_f = separate
    torch.testing.assert_close(e, e_u + 3.0 * (e_r - e_u) + 5.0 * (e_f - e_r), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(guidance.combine_batched(batched, 1.0, 1.0), e_f, atol=1e-5, rtol=1e-5)
    weights = guidance.branch_weights(3.0, 5.0)
    torch.testing.assert_close(sum(w * p for w, p in zip(weights, separate)), e, atol=1e-4, rtol=1e-4)


def test_a2l_modalities_and_motion_statistics():
    torch.manual_seed(0)
    model = LoopyModel(LoopyConfig.tiny()).eval()
    a2l = model.audio_to_latents
    audio = torch.randn(2, F, 5, 2, 32)
    with torch.no_grad():
        none = a2l(audio, torch.tensor([False, False]))
        other_audio = a2l(torch.randn(2, F, 5, 2, 32), torch.tensor([False, False]))
        torch.testing.assert_close(none, other_audio)  # absent audio is ignored, whatever its values
        low = a2l(audio, None, torch.tensor([[0.1, 0.1], [0.1, 0.1]]))
        high = a2l(audio, None, torch.tensor([[2.0, 2.0], [2.0, 2.0]]))
        assert (low - high).abs().max() > 1e-4  # motion statistics steer the tokens
        masked = a2l(audio, None, torch.tensor([[0.1, 0.1], [2.0, 2.0]]), torch.tensor([False, False]))
        torch.testing.assert_close(masked, a2l(audio))
    with pytest.raises(ValueError, match="don't match"):
        a2l(torch.randn(1, F, 5, 3, 32))


def test_guidance_schedules():
    assert guidance.scale_at(5.0, 3, 25) == 5.0
    assert guidance.scale_at([6.0, 2.0], 0, 25) == 6.0
    assert guidance.scale_at([6.0, 2.0], 24, 25) == 2.0
    assert guidance.scale_at([6.0, 2.0], 12, 25) == pytest.approx(4.0)
    assert guidance.scale_at(lambda i, n: i / n, 5, 10) == 0.5
    assert guidance.parse_scale("5") == 5.0 and guidance.parse_scale("6,4,2") == [6.0, 4.0, 2.0]
    with pytest.raises(ValueError, match="not a number"):
        guidance.parse_scale("five")
    with pytest.raises(ValueError):
        guidance.combine_batched(torch.zeros(4, 1), 1.0, 1.0)


def test_gradients_flow_with_checkpointing():
    torch.manual_seed(0)
    model = LoopyModel(LoopyConfig.tiny()).train()
    model.denoiser.gradient_checkpointing = True
    model.reference_net.gradient_checkpointing = True
    inp = clip_inputs(model)
    ref_tokens, feats = model.reference_net(inp["ref"], model.tsm(inp["history"], inp["ref"]))
    tokens = model.audio_to_latents(inp["audio"])
    out = model.denoiser(inp["sample"], 500, tokens, ref_tokens, feats)
    out.square().mean().backward()
    grads = {
        "reference_net": model.reference_net.unet.conv_in.weight.grad,
        "denoiser": model.denoiser.unet.conv_in.weight.grad,
        "a2l": model.audio_to_latents.queries.grad,
        "inter_clip_out": model.denoiser.inter_clip.get("up", 1, 1).temporal_transformer.proj_out.weight.grad,
    }
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name


@torch.no_grad()
def test_inter_clip_layer_skips_work_for_motion_positions_exactly():
    """Queries and feed-forward for the 20 motion positions are skipped in the last attention: same output as
    computing every position and keeping the clip's, at 12/32 of that block's feed-forward cost."""
    torch.manual_seed(0)
    model = LoopyModel(LoopyConfig.tiny()).eval()
    perturb_(model.denoiser.inter_clip, seed=3)
    layer = model.denoiser.inter_clip.get("down", 0, 0).temporal_transformer
    x = torch.randn(2 * F, 32, 8, 8)
    ctx = torch.randn(2 * 20, 32, 8, 8)
    fast = layer(x, F, context=ctx)
    # reference: every position through the blocks, then the clip's positions kept
    from einops import rearrange

    seq = torch.cat([rearrange(ctx, "(b m) c h w -> b m c h w", b=2), rearrange(x, "(b f) c h w -> b f c h w", f=F)], 1)
    seq = layer.proj_in(rearrange(layer.norm(rearrange(seq, "b t c h w -> (b t) c h w")), "(b t) c h w -> (b h w) t c", t=32))
    for block in layer.transformer_blocks:
        seq = block(seq)
    slow = rearrange(layer.proj_out(seq[:, -F:]), "(b h w) f c -> (b f) c h w", b=2, h=8, w=8) + x
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_temporal_attention_in_chunks_equals_one_batch(monkeypatch):
    """Past `MAX_SEQUENCES` sequences (CUDA's grid limit at training batch sizes) the temporal layers attend in
    chunks, inter-clip context included: same output, one attention call per chunk."""
    from loopy_core.models import temporal

    torch.manual_seed(0)
    model = LoopyModel(LoopyConfig.tiny()).eval()
    perturb_(model.denoiser.inter_clip, seed=4)
    layer = model.denoiser.inter_clip.get("down", 0, 0).temporal_transformer
    x, ctx = torch.randn(2 * F, 32, 8, 8), torch.randn(2 * 20, 32, 8, 8)  # 2 x 8 x 8 = 128 sequences
    whole = layer(x, F, context=ctx)
    monkeypatch.setattr(temporal, "MAX_SEQUENCES", 50)
    calls = []
    attn = layer.transformer_blocks[0].attention_blocks[0]
    forward = attn.forward
    monkeypatch.setattr(attn, "forward", lambda h, **k: calls.append(h.shape[0]) or forward(h, **k))
    torch.testing.assert_close(layer(x, F, context=ctx), whole, atol=1e-6, rtol=1e-5)
    assert calls == [50, 50, 28]


@torch.no_grad()
def test_reference_keys_values_once_per_reference_and_projected_once_per_clip(model):
    from diffusers.models.attention_processor import Attention

    from loopy_core.models.attention import LoopyAttnProcessor, attend

    # the processor equals attention over [own tokens ; the reference repeated for every frame]
    torch.manual_seed(0)
    attn = Attention(32, heads=4, dim_head=8)
    hidden, ref = torch.randn(2 * F, 10, 32), torch.randn(2, 7, 32)
    naive = attend(attn, hidden, torch.cat([hidden, ref.repeat_interleave(F, dim=0)], dim=1))
    proc = LoopyAttnProcessor("a.attn1", "read")
    torch.testing.assert_close(proc(attn, hidden, ref_tokens={"a.attn1": ref}), naive, atol=1e-5, rtol=1e-5)

    # in the denoiser, keys/values projected ahead (once per clip) replace the reference tokens at every step
    inp = clip_inputs(model)
    ref_tokens, motion_feats = model.reference_net(inp["ref"], model.tsm(inp["history"], inp["ref"]))
    tokens, _ = model.motion_tokens(inp["audio"])
    name = next(iter(ref_tokens))
    to_k = model.denoiser.unet.get_submodule(name).to_k
    rows = []
    hook = to_k.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        plain = model.denoiser(inp["sample"], 500, tokens, ref_tokens, motion_feats)
        ref_kv = model.denoiser.reference_kv(ref_tokens)
        first = model.denoiser(inp["sample"], 500, tokens, None, motion_feats, ref_kv=ref_kv)
        second = model.denoiser(inp["sample"], 300, tokens, None, motion_feats, ref_kv=ref_kv)
    finally:
        hook.remove()
    # own tokens: F rows per call; the reference: 1 row, in `reference_kv` only once projected ahead
    assert rows == [1, F, 1, F, F]
    assert set(ref_kv) == set(ref_tokens) == set(model.denoiser.attn1_names)
    torch.testing.assert_close(first, plain)
    torch.testing.assert_close(second, model.denoiser(inp["sample"], 300, tokens, ref_tokens, motion_feats))
    with pytest.raises(ValueError, match="can't be split over 2 references"):
        bad = {k: (torch.cat([kv[0]] * 2), torch.cat([kv[1]] * 2)) for k, kv in ref_kv.items()}
        model.denoiser(inp["sample"][:, :, :3], 500, tokens[:, :3], None, None, ref_kv=bad)


@torch.no_grad()
def test_ablation_switches_remove_their_module_and_keep_the_rest_working():
    """The paper's Table 3 rows as config changes: each builds, runs a clip, and removes exactly its part."""
    from training.ablation import ROWS

    full = LoopyModel(LoopyConfig.tiny())
    for row, changes in ROWS.items():
        torch.manual_seed(0)
        cfg = LoopyConfig.tiny().replace(**changes)
        model = LoopyModel(cfg).eval()
        perturb_(model, seed=3)
        inp = clip_inputs(model)
        ref_tokens, feats = model.reference_net(inp["ref"], model.tsm(inp["history"], inp["ref"]))
        assert next(iter(feats.values())).shape[0] == cfg.num_motion_frames
        tokens, no_audio = model.motion_tokens(inp["audio"])
        assert tokens.shape == (1, F, cfg.num_motion_tokens, cfg.unet.cross_attention_dim)
        out = model.denoiser(inp["sample"], 500, tokens, ref_tokens, feats)
        assert out.shape == inp["sample"].shape and torch.isfinite(out).all(), row
        counts, base = model.parameter_counts(), full.parameter_counts()
        assert (counts["inter_clip"] == 0) == (row == "no_inter_clip")
        assert (counts["intra_clip"] == 0) == (row == "single_temporal")
        assert (counts["audio_to_latents"] < base["audio_to_latents"]) == (row == "audio_cross_attention")
        if row == "no_inter_clip":  # the motion frames then reach nothing
            _, other = model.reference_net(None, model.tsm(-inp["history"], inp["ref"]))
            torch.testing.assert_close(model.denoiser(inp["sample"], 500, tokens, ref_tokens, other), out)
    assert LoopyConfig.tiny().replace(**ROWS["no_tsm"]).num_motion_frames == 4
    assert LoopyConfig.tiny().replace(**ROWS["r1"]).history_frames == 20


@torch.no_grad()
def test_direct_audio_tokens_are_the_condition_tokens_and_ignore_absent_audio():
    torch.manual_seed(0)
    a2l = LoopyModel(LoopyConfig.tiny().replace(a2l={"direct": True})).audio_to_latents
    assert a2l.queries is None and len(a2l.blocks) == 0
    audio = torch.randn(2, F, 5, 2, 32)
    off = torch.tensor([False, False])
    tokens = a2l(audio)
    assert tokens.shape == (2, F, 1 + 5 + 2, 32)
    torch.testing.assert_close(a2l(audio, off), a2l(torch.randn(2, F, 5, 2, 32), off))
    assert (tokens - a2l(torch.randn(2, F, 5, 2, 32))).abs().max() > 1e-3  # present audio is read


def test_keep_level_restores_the_loudness_the_input_layernorm_removes():
    """LayerNorm maps features x and 2x + 1 to the same tokens: the level (the loudness, for log-mel) is lost.
    `keep_level` adds it back through a zero-initialised path: no change at first, a difference once trained."""
    torch.manual_seed(0)
    plain = LoopyModel(LoopyConfig.tiny()).audio_to_latents.eval()
    torch.manual_seed(0)
    leveled = LoopyModel(LoopyConfig.tiny().replace(a2l={"keep_level": True})).audio_to_latents.eval()
    leveled.load_state_dict(plain.state_dict(), strict=False)
    audio = torch.randn(1, F, 5, 2, 32)
    louder = audio * 2.0 + 1.0
    with torch.no_grad():
        torch.testing.assert_close(plain(audio), plain(louder), atol=1e-4, rtol=0)  # the level is gone
        torch.testing.assert_close(leveled(louder), plain(louder))  # zero-init: unchanged until trained
    loss = leveled(louder).square().mean() + leveled(audio).mean()
    loss.backward()
    assert leveled.level_proj[2].weight.grad.abs().sum() > 0  # the new path learns
    with torch.no_grad():
        leveled.level_proj[2].weight.normal_()
        assert (leveled(audio) - leveled(louder)).abs().max() > 1e-2
