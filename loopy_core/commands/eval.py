"""`loopy eval`: score a video from its pixels (sync, motion, identity drift, seam jitter, smoothness)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure lip sync, motion, identity drift, seam jitter and smoothness of a video")
    p.add_argument("--video", required=True, help="video to score (mp4 with its audio track)")
    p.add_argument("--reference", required=True, help="reference portrait (png, jpg, ...) or a video (first frame)")
    p.add_argument("--truth", help="ground-truth JSON of a synthetic video (from `loopy synth`): enables sync, motion")
    p.add_argument("--audio", help="audio to sync against instead of the video's own track (wav, mp3, mp4, ...)")
    p.add_argument("--clip-length", type=int, default=12, help="frames per generated clip, for seam jitter (12)")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def _load_reference(path: str):
    import os

    from ..image import load_image
    from ..video import read_video

    if os.path.splitext(path)[1].lower() in (".mp4", ".mov", ".mkv", ".webm", ".avi"):
        return read_video(path).frames[0]
    return load_image(path)


def run(args) -> int:
    import json
    import os

    from ..eval.metrics import evaluate_video, format_report
    from ..synthetic.dataset import read_truth
    from ..video import load_audio, read_video

    # inputs are all checked before the video is decoded
    for flag, path in (
        ("--video", args.video),
        ("--reference", args.reference),
        ("--truth", args.truth),
        ("--audio", args.audio),
    ):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} file not found: {path}")
    if args.json_out and not os.path.isdir(os.path.dirname(os.path.abspath(args.json_out))):
        raise FileNotFoundError(f"--json folder does not exist: {os.path.dirname(os.path.abspath(args.json_out))}")
    truth = read_truth(args.truth) if args.truth else None
    reference = _load_reference(args.reference)
    video = read_video(args.video)
    audio, sample_rate = video.audio, video.sample_rate
    if args.audio:
        audio, sample_rate = load_audio(args.audio)
    result = evaluate_video(
        video.frames, video.fps, audio, sample_rate, reference, truth=truth, clip_length=args.clip_length
    )
    result["inputs"] = {"video": args.video, "reference": args.reference, "truth": args.truth, "audio": args.audio}
    print(format_report(result))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json_out}")
    return 0
