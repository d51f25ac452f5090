"""`loopy init`: assemble a starting Loopy checkpoint from a config, SD1.5 and AnimateDiff weights (random elsewhere)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="assemble a starting checkpoint (SD1.5 + AnimateDiff where given, random elsewhere)")
    p.add_argument("--config", choices=["tiny", "sd15", "demo"], default="sd15", help="config preset (default: sd15)")
    p.add_argument("--base", help="SD1.5 weights: a diffusers folder or a single-file .safetensors/.ckpt")
    p.add_argument("--animatediff", help="AnimateDiff v2 motion module (mm_sd_v15_v2) for the intra-clip layers")
    p.add_argument(
        "--animatediff-inter", action="store_true", help="also initialise the inter-clip layers from AnimateDiff"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default: 0)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="stored dtype (default fp32)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import torch

    from ..checkpoint import save_checkpoint
    from ..config import LoopyConfig
    from ..models.loopy import LoopyModel

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {args.out!r}")
    for flag, value in (("--base", args.base), ("--animatediff", args.animatediff)):
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{flag}: {value!r} not found")
    config = LoopyConfig.preset(args.config)
    torch.manual_seed(args.seed)
    model = LoopyModel(config)
    if args.base:
        from ..sd_import import apply_sd15, load_sd15_weights

        unet_sd, vae_sd = load_sd15_weights(args.base, config.unet, config.vae)
        apply_sd15(model, unet_sd, vae_sd)
    if args.animatediff:
        from ..sd_import import apply_animatediff, load_animatediff

        apply_animatediff(model, load_animatediff(args.animatediff), also_inter_clip=args.animatediff_inter)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    sources = {"base": args.base or "random", "animatediff": args.animatediff or "random", "seed": str(args.seed)}
    save_checkpoint(model, out, dtype=dtype, metadata={"init": str(sources)})
    n = sum(model.parameter_counts().values())
    print(f"wrote {out} ({config.name}, {n:,} parameters, {out.stat().st_size / 2**20:.1f} MiB)")
    return 0
