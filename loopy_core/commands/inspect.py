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
    p.set_defaults(func=run)


def model_card(config) -> dict:
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
    counts = model.parameter_counts()
    return {
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
    }


def run(args) -> int:
    from ..checkpoint import read_config
    from ..config import LoopyConfig

    config = read_config(args.checkpoint) if args.checkpoint else LoopyConfig.preset(args.config or "sd15")
    card = model_card(config)
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    print(f"Loopy model '{card['config']}': {card['resolution']}x{card['resolution']} @ {card['fps']} fps")
    for name, n in card["parameters"].items():
        print(f"  {name:<18} {n:>14,}")
    t = card["tsm"]
    print(f"  TSM s={t['s']} r={t['r']} K={t['K']}: {t['history_frames']} frames -> {t['motion_latents']} latents")
    for name, shape in card["clip_shapes"].items():
        if isinstance(shape, dict):
            print(f"  {name:<22} {len(shape)} tensors, e.g. {next(iter(shape.values()))}")
        else:
            print(f"  {name:<22} {shape}")
    return 0
