"""`loopy init`: assemble a starting Loopy checkpoint from a config, SD1.5 and AnimateDiff weights (random elsewhere).

The checkpoint is self-contained where the config allows: `tiny` embeds a randomly initialised wav2vec2 of its size
(`audio.tiny_wav2vec2`, like the demo model's embedded encoder), `demo` needs none (log-mel features), and
`--audio-encoder DIR` embeds a pretrained one (wav2vec2-base-960h for `sd15`). So `loopy generate`, the nodes and
`training.preprocess` run on the file alone.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="assemble a starting checkpoint (SD1.5 + AnimateDiff where given, random elsewhere)")
    p.add_argument("--config", choices=["tiny", "sd15", "demo"], default="sd15", help="config preset (default: sd15)")
    p.add_argument("--base", help="SD1.5 weights: a diffusers folder or a single-file .safetensors/.ckpt")
    p.add_argument("--animatediff", help="AnimateDiff v2 motion module (mm_sd_v15_v2) for the intra-clip layers")
    p.add_argument(
        "--animatediff-inter", action="store_true", help="also initialise the inter-clip layers from AnimateDiff"
    )
    p.add_argument("--audio-encoder", help="wav2vec2 folder (transformers format) to embed, e.g. "
                   "models/audio_encoders/wav2vec2-base-960h for sd15 (default: a random one for tiny, none for demo)")
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
    for flag, value in (("--base", args.base), ("--animatediff", args.animatediff),
                        ("--audio-encoder", args.audio_encoder)):
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{flag}: {value!r} not found")
    config = LoopyConfig.preset(args.config)
    encoder = init_audio_encoder(config, args.audio_encoder, args.seed)  # before the model: a bad folder costs nothing
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
    if encoder is not None:
        sources["audio_encoder"] = args.audio_encoder or "random"
    save_checkpoint(model, out, dtype=dtype, metadata={"init": str(sources)}, audio_encoder=encoder)
    n = sum(model.parameter_counts().values())
    embedded = "" if encoder is None else f", audio encoder embedded ({sources['audio_encoder']})"
    print(f"wrote {out} ({config.name}, {n:,} parameters{embedded}, {out.stat().st_size / 2**20:.1f} MiB)")
    if encoder is None and config.audio.kind == "wav2vec2":
        print(
            f"note: no audio encoder embedded: this config's features come from a pretrained "
            f"{config.audio.encoder!r}. Pass --audio-encoder DIR (a transformers folder, e.g. "
            f"models/audio_encoders/{config.audio.encoder}) to embed it, or give --audio-encoder DIR to "
            "`loopy generate` and `training.preprocess`.",
            file=sys.stderr,
        )
    return 0


def init_audio_encoder(config, folder: str | None, seed: int):
    """The wav2vec2 to embed: `folder` (checked against the config's layers x width), else a random one when the
    config's encoder is random by design, else None (log-mel features, or a pretrained encoder not given)."""
    from ..audio import check_encoder_shape, load_wav2vec2, tiny_wav2vec2
    from ..config import RANDOM_AUDIO_ENCODER

    if config.audio.kind != "wav2vec2":
        if folder is not None:
            raise ValueError(f"--audio-encoder: the {config.name!r} config uses {config.audio.kind!r} features, "
                             "which need no audio encoder; leave the flag out")
        return None
    if folder is not None:
        encoder = load_wav2vec2(folder)
        check_encoder_shape(encoder.config.num_hidden_layers, encoder.config.hidden_size, config.audio)
        return encoder
    return tiny_wav2vec2(config.audio, seed=seed) if config.audio.encoder == RANDOM_AUDIO_ENCODER else None
