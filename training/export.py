"""Export a training run's checkpoint as one Loopy `.safetensors` file (what the CLI and the ComfyUI nodes load).

    python -m training.export RUN_DIR --out model.safetensors [--checkpoint latest|checkpoint-N] [--ema]
        [--dtype fp16] [--card MODEL_CARD.md] [--audio-encoder-from CKPT]

Each `checkpoint-N/` already holds `loopy.safetensors` (and `loopy_ema.safetensors` with EMA); export picks one,
casts it and adds the model card to its metadata; the audio encoder embedded in the run's checkpoint (carried from
the starting model) stays embedded. The file is written atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .train import list_checkpoints

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export(run_dir, out, checkpoint="latest", ema=False, dtype="fp32", card=None, audio_encoder_from=None) -> Path:
    from loopy_core.checkpoint import load_checkpoint, load_embedded_audio_encoder, read_metadata, save_checkpoint

    run_dir = Path(run_dir)
    if checkpoint == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"no checkpoint-N folder in {str(run_dir.resolve())!r}")
        folder = found[-1]
    else:
        folder = run_dir / checkpoint
    source = folder / ("loopy_ema.safetensors" if ema else "loopy.safetensors")
    if not source.is_file():
        raise FileNotFoundError(f"{source.name!r} not found in {str(folder)!r}" + (" (was EMA on?)" if ema else ""))
    model = load_checkpoint(source)
    metadata = {k: v for k, v in read_metadata(source).items() if k not in ("format", "format_version", "config")}
    metadata["exported_from"] = f"{run_dir.name}/{folder.name}"
    if card:
        metadata["model_card"] = Path(card).read_text()
    encoder = load_embedded_audio_encoder(audio_encoder_from or source)  # the run's own unless another is named
    return save_checkpoint(model, out, dtype=DTYPES[dtype], metadata=metadata, audio_encoder=encoder)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default="latest")
    p.add_argument("--ema", action="store_true", help="export the EMA weights")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--card", help="a model card (markdown) to embed in the metadata")
    p.add_argument("--audio-encoder-from", help="embed the audio encoder of this Loopy checkpoint (default: the one "
                   "embedded in the run's checkpoint, if any)")
    args = p.parse_args(argv)
    try:
        path = export(args.run_dir, args.out, args.checkpoint, args.ema, args.dtype, args.card,
                      args.audio_encoder_from)
    except (FileNotFoundError, ValueError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
