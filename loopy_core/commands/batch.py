"""`loopy batch`: one video per manifest row, one model load, resumable; across processes with `accelerate launch`
(the work itself is `loopy_core.batch`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from .generate import add_generation_arguments

    p = sub.add_parser(
        "batch", help="one video per row of a CSV manifest (resumable; `accelerate launch -m loopy_core.batch` "
                      "splits the rows across processes)")
    p.add_argument("--manifest", required=True,
                   help="CSV with columns image, audio and optionally output, seed, audio_cfg, ref_cfg, "
                        "guidance_interval, steps, scheduler, crop (an empty cell takes the flag's value)")
    p.add_argument("--out", required=True, help="output folder: the videos and batch_report.csv")
    p.add_argument("--model", help="Loopy checkpoint (.safetensors; default: the bundled demo model)")
    p.add_argument("--base", help="SD1.5 base (diffusers folder or single file) if the checkpoint has no VAE")
    p.add_argument("--audio-encoder", help="wav2vec2 folder (default: embedded in the checkpoint, or found by name)")
    add_generation_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..batch import run_batch
    from .demo import DEMO_MODEL
    from .generate import check_fps, options_from_args

    check_fps(args.fps)

    def report(event: dict) -> None:
        where = f"process {event['process'] + 1}/{event['processes']}: " if event["processes"] > 1 else ""
        if event["event"] == "start":
            print(f"batch: {where}{event['mine']} of {event['rows']} rows, {event['done_already']} already done",
                  flush=True)
        elif event["event"] == "row":
            detail = {"done": f"{event.get('frames')} frames", "exists": "output already present, skipped",
                      "failed": event.get("error")}[event["status"]]
            print(f"batch: {where}[{event['index']}/{event['mine']}] row {event['row']} {event['status']}: "
                  f"{event['output']} ({detail}; {event['elapsed_s']} s)", flush=True)
        elif "report" in event:
            totals = event["totals"]
            print(f"batch: {event['rows']} rows: {totals['done']} done, {totals['exists']} already present, "
                  f"{totals['failed']} failed; report {event['report']}", flush=True)

    end = run_batch(
        args.manifest, args.out, args.model or DEMO_MODEL, options_from_args(args), args.crop, args.base,
        args.audio_encoder, args.device, args.dtype, args.fps, args.max_seconds, args.channels_last, args.compile,
        progress=not args.quiet, callback=report,
    )
    return 1 if end.get("totals", {}).get("failed") else 0
