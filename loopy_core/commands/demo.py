"""`loopy demo`: the main job, offline: animate the bundled portrait with the bundled speech (or your files) using
the bundled demo model, write an mp4, and report the lip sync measured from its pixels.

Your own photo (`--image`) goes the way of `loopy generate --crop auto`: find the face, animate a square around it,
paste it back at the photo's resolution. The bundled portrait is already the model's square crop (`--crop none`)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
DEMO_MODEL = DEMO_DIR / "loopy_demo.safetensors"


def register(sub: argparse._SubParsersAction) -> None:
    from .generate import add_generation_arguments

    p = sub.add_parser("demo", help="animate the bundled portrait with the bundled speech (offline, CPU is fine)")
    p.add_argument("--out", default="demo.mp4", help="output .mp4 (default demo.mp4)")
    p.add_argument("--image", help="your portrait instead of the bundled one")
    p.add_argument("--audio", help="your speech instead of the bundled sample")
    p.add_argument("--model", help="another Loopy checkpoint instead of the bundled demo model")
    add_generation_arguments(p, crop=None, crop_default="auto with --image, none for the bundled portrait")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..eval.estimators import estimate_mouth_opening
    from ..eval.metrics import sync_metric
    from ..image import load_image
    from ..render import check_audio, load_pipeline, render_video
    from ..synthetic.speech import speech_envelope
    from ..video import load_audio, read_video
    from .generate import check_fps, options_from_args, report_crop

    model = Path(args.model) if args.model else DEMO_MODEL
    if not model.is_file():
        raise FileNotFoundError(
            f"the demo model {model.name!r} is not in {str(model.parent)!r}; reinstall comfyui-loopy, or pass --model"
        )
    if not args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out must be an .mp4 file, got {args.out!r}")
    check_fps(args.fps)
    options = options_from_args(args)
    image = load_image(args.image or DEMO_DIR / "portrait.png")
    waveform, sample_rate = load_audio(args.audio or DEMO_DIR / "speech.wav")
    check_audio(waveform, sample_rate, args.max_seconds)
    pipeline = load_pipeline(model, None, None, args.device, args.dtype).optimize(
        channels_last=args.channels_last, compile=args.compile)
    crop = args.crop or ("auto" if args.image else "none")
    result = render_video(pipeline, image, waveform, sample_rate, args.out, options, args.max_seconds,
                          not args.quiet, fps=args.fps, crop=crop)
    report_crop(result, args.image or "the bundled portrait")
    print(f"wrote {Path(result['path']).resolve()}: {result['frames']} frames at {result['fps']:g} fps "
          f"({result['seconds']:.1f} s of speech) in {result['elapsed_s']:.1f} s")
    # lip sync read back from the video's pixels, in the animated square (the synthetic world's estimator:
    # meaningful for its faces)
    video = read_video(result["path"])
    frames, box = video.frames, result["crop"]
    if box is not None:
        frames = frames[:, box.top : box.top + box.side, box.left : box.left + box.side]
    mouth = estimate_mouth_opening(frames)
    envelope = speech_envelope(waveform, sample_rate, result["fps"], len(video.frames))
    truth = None
    if not args.audio and not args.image:
        truth = json.loads((DEMO_DIR / "speech_truth.json").read_text())
    sync = sync_metric(mouth, envelope, result["fps"], truth)
    line = f"lip sync (mouth opening vs speech envelope): {sync['score']:.2f} at lag {sync['lag_frames']} frames"
    if truth is not None:
        line += f"; the ground-truth video of this speech scores {sync['ceiling']:.2f}"
    print(line)
    return 0
