"""`loopy synth`: write a synthetic talking-face dataset (mp4 + ground-truth JSON + reference PNG per video)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic talking-face dataset with ground truth")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--videos", type=int, required=True, help="number of videos")
    p.add_argument("--seconds", type=float, required=True, help="length of each video in seconds")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels, square and even (default 64)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; the same seed gives the same data (default 0)")
    p.add_argument(
        "--speech",
        choices=["babble", "espeak"],
        default="babble",
        help="babble: built-in synthesiser (default); espeak: espeak-ng voices (needs espeak-ng)",
    )
    p.add_argument("--fps", type=float, default=25.0, help="frame rate (default 25)")
    p.add_argument(
        "--appearance",
        choices=["plain", "wide"],
        default="plain",
        help="plain: flat colours from small palettes (default, the demo model's world); wide: continuous colours, "
        "a lighting gradient and a smooth texture, for training a reference path that copies appearance",
    )
    p.add_argument("--languages", help="espeak languages to draw from, comma-separated (default: all)")
    p.add_argument("--variants", help="espeak voice variants to draw from, comma-separated, '' for the plain voice")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from ..synthetic.dataset import write_dataset

    espeak_options = {}
    if args.languages:
        espeak_options["languages"] = tuple(x.strip() for x in args.languages.split(",") if x.strip())
    if args.variants is not None:
        espeak_options["variants"] = tuple(x.strip() for x in args.variants.split(","))
    if espeak_options and args.speech != "espeak":
        raise ValueError("--languages/--variants choose espeak voices: use them with --speech espeak")
    start = time.perf_counter()
    index = write_dataset(
        args.out, args.videos, args.seconds, size=args.size, seed=args.seed, speech=args.speech, fps=args.fps,
        appearance=args.appearance, **espeak_options,
    )
    frames = sum(v["num_frames"] for v in index["videos"])
    print(
        f"wrote {len(index['videos'])} video(s) ({frames} frames, {args.size}x{args.size}, {args.fps:g} fps, "
        f"{args.speech} speech, {args.appearance} appearance) to {args.out} in {time.perf_counter() - start:.1f} s"
    )
    return 0
