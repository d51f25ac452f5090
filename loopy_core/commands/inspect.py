"""`loopy inspect`: a model card built on the meta device (no memory): parameters, TSM groups, conditioning shapes."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="print a model's parameter counts, TSM groups and conditioning shapes")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", choices=["tiny", "sd15", "demo"], help="a config preset (default: sd15)")
    src.add_argument("--checkpoint", help="a Loopy .safetensors checkpoint (only its config is read)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--flops", action="store_true", help="also count the FLOPs of one clip (meta device, no memory)")
    p.set_defaults(func=run)


def clip_flops(config, model, motion, audio) -> dict:
    """FLOPs of one clip with torch's FLOP counter on meta tensors: the ReferenceNet once, the denoiser per step
    with the three guidance branches batched (one for a guidance-distilled model), the audio-to-latents once (with
    and without audio)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())

    C, s, F = config.latent_channels, config.latent_size, config.frames_per_clip
    ref = torch.empty(1, C, s, s)
    refnet = count(lambda: model.reference_net(ref, motion))
    ref_tokens, motion_feats = model.reference_net(ref, motion)
    a2l = 2 * count(lambda: model.audio_to_latents(audio))
    tokens = model.audio_to_latents(audio)
    n = 1 if config.guidance.distilled else 3  # branches per step
    sample = torch.empty(n, C, F, s, s)
    step = count(lambda: model.denoiser(
        sample, torch.empty(n), tokens.expand(n, -1, -1, -1), {k: v.expand(n, -1, -1) for k, v in ref_tokens.items()},
        {k: v.repeat(n, 1, 1, 1) for k, v in motion_feats.items()},
    ))
    steps = config.guidance.steps
    return {
        "reference_net": refnet,
        "audio_to_latents": a2l,
        "branches": n,
        "denoiser_step": step,
        "denoiser_per_frame_evaluation": step // (n * F),
        "steps": steps,
        "clip_total": refnet + a2l + steps * step,
    }


def model_card(config, flops: bool = False) -> dict:
    """Everything `inspect` reports, computed on the meta device."""
    import torch

    from ..models.loopy import LoopyModel

    with torch.device("meta"):
        model = LoopyModel(config)
        C, s, F = config.latent_channels, config.latent_size, config.frames_per_clip
        M, T = config.num_motion_frames, config.history_frames
        ref = torch.empty(1, C, s, s)
        history = torch.empty(1, C, T, s, s)
        motion = model.tsm(history, ref)
        ref_tokens, motion_feats = model.reference_net(ref, motion)
        audio = torch.empty(1, F, 2 * config.audio.window + 1, config.audio.num_layers, config.audio.feature_dim)
        tokens = model.audio_to_latents(audio)
        flop_counts = clip_flops(config, model, motion, audio) if flops else None
    counts = model.parameter_counts()
    card = {
        "config": config.name,
        "parameters": {**counts, "total_trainable": sum(v for k, v in counts.items() if k != "vae")},
        "tsm": {
            "s": config.tsm.s,
            "r": config.tsm.r,
            "K": config.tsm.K,
            "reduce": config.tsm.reduce,
            "history_frames": model.tsm.span,
            "motion_latents": model.tsm.num_latents,
            "groups": model.tsm.groups,
        },
        "clip_shapes": {
            "sample": [1, C, F, s, s],
            "ref_latents": list(ref.shape),
            "history": list(history.shape),
            "motion_frame_latents": list(motion.shape),
            "audio_feats": list(audio.shape),
            "motion_tokens": list(tokens.shape),
            "ref_tokens": {k: list(v.shape) for k, v in ref_tokens.items()},
            "motion_feats": {".".join(map(str, k)): list(v.shape) for k, v in motion_feats.items()},
        },
        "frames_per_clip": F,
        "motion_frames": M,
        "resolution": config.resolution,
        "fps": config.fps,
        "guidance_distilled": config.guidance.distilled,
    }
    if flop_counts is not None:
        card["flops"] = flop_counts
    return card


def run(args) -> int:
    from ..checkpoint import read_config
    from ..config import LoopyConfig

    config = read_config(args.checkpoint) if args.checkpoint else LoopyConfig.preset(args.config or "sd15")
    card = model_card(config, flops=args.flops)
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    distilled = " (guidance-distilled: one branch per step)" if card["guidance_distilled"] else ""
    print(f"Loopy model '{card['config']}': {card['resolution']}x{card['resolution']} @ {card['fps']} fps{distilled}")
    for name, n in card["parameters"].items():
        print(f"  {name:<18} {n:>14,}")
    t = card["tsm"]
    print(f"  TSM s={t['s']} r={t['r']} K={t['K']}: {t['history_frames']} frames -> {t['motion_latents']} latents")
    if "flops" in card:
        f = card["flops"]
        branches = f"{f['branches']} guidance branch{'es' if f['branches'] > 1 else ''}"
        print(f"  FLOPs per clip ({f['steps']} steps, {branches}): {f['clip_total'] / 1e12:,.1f} TFLOP "
              f"(ReferenceNet {f['reference_net'] / 1e12:,.2f}, denoiser per frame evaluation "
              f"{f['denoiser_per_frame_evaluation'] / 1e12:,.3f})")
    for name, shape in card["clip_shapes"].items():
        if isinstance(shape, dict):
            print(f"  {name:<22} {len(shape)} tensors, e.g. {next(iter(shape.values()))}")
        else:
            print(f"  {name:<22} {shape}")
    return 0
