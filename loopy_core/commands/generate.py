"""`loopy generate`: portrait + speech -> an mp4 with the speech as its audio track."""

from __future__ import annotations

import argparse
import sys


def add_generation_arguments(p: argparse.ArgumentParser, crop: str = "auto", crop_default: str | None = None) -> None:
    """Sampling flags shared by `generate` and `demo` (`crop`: the --crop default; `crop_default`: how the help
    names it, when the command picks it later)."""
    p.add_argument("--steps", type=int, help="denoising steps per clip (default: the model's, 25 for SD1.5 models)")
    p.add_argument("--scheduler", default="ddim", help="ddim (default), euler, euler_a, dpmpp_2m, unipc, ... ")
    p.add_argument("--audio-cfg", help="audio guidance scale, or a schedule '6,4,2' (default: the model's)")
    p.add_argument("--ref-cfg", help="reference guidance scale, or a schedule (default: the model's)")
    p.add_argument("--guidance-interval", default="0,1",
                   help="fractions of the steps, from the first, that use guidance, e.g. '0,0.5': the other steps "
                        "run one branch instead of three (faster; default '0,1': every step)")
    p.add_argument("--history-anchor", type=float, default=0.0,
                   help="0..1: pull the coarse appearance of the frames each clip continues from towards the "
                        "reference's, against the face drifting from the photo over long videos (default 0: off)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--fps", type=float, help="video frame rate (default: the model's, 25)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32", help="compute dtype (default fp32)")
    p.add_argument("--low-memory", action="store_true", help="run the guidance branches one after another")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the denoiser block by block (the first clip pays the compiling)")
    p.add_argument("--channels-last", action="store_true", help="channels-last convolution weights")
    p.add_argument("--max-seconds", type=float, default=600.0, help="refuse longer audio (default 600)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--crop", choices=["auto", "none"], default=crop,
                   help=f"auto: find the face, animate a square around it and paste it back into the full image; "
                        f"none: the centre square (default {crop_default or crop})")


def report_crop(result: dict, image) -> None:
    """Say so when `--crop auto` found no face in `image`: the video then animates the photo's centre square."""
    info = result.get("crop")
    if info is not None and not info.found:
        print(f"no face found in {image} ({info.width}x{info.height}); animated its centre square "
              f"({info.side} px) and pasted it back", file=sys.stderr)


def check_fps(fps) -> None:
    if fps is not None and not 1 <= fps <= 120:
        raise ValueError(f"--fps must be between 1 and 120, got {fps:g}")


def options_from_args(args):
    from ..guidance import parse_interval, parse_scale
    from ..pipeline import GenerationOptions

    return GenerationOptions(
        steps=args.steps,
        scheduler=args.scheduler,
        audio_guidance_scale=None if args.audio_cfg is None else parse_scale(args.audio_cfg),
        ref_guidance_scale=None if args.ref_cfg is None else parse_scale(args.ref_cfg),
        guidance_interval=parse_interval(args.guidance_interval),
        seed=args.seed,
        sequential_guidance=args.low_memory,
        history_anchor=args.history_anchor,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="animate a portrait with a speech recording")
    p.add_argument("--image", required=True, help="reference portrait (png, jpg, webp, ...)")
    p.add_argument("--audio", required=True, help="speech recording (wav, flac, mp3, m4a, mp4, ...)")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--model", required=True, help="Loopy checkpoint (.safetensors)")
    p.add_argument("--base", help="SD1.5 base (diffusers folder or single file) if the checkpoint has no VAE")
    p.add_argument("--audio-encoder", help="wav2vec2 folder (default: embedded in the checkpoint, or found by name)")
    add_generation_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import NoiseConfig
    from ..image import load_image
    from ..pipeline import make_scheduler
    from ..render import check_audio, load_pipeline, render_video
    from ..video import load_audio

    # inputs are checked before the model loads, so a typo costs nothing
    options = options_from_args(args)
    make_scheduler(args.scheduler, NoiseConfig())
    if not args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out must be an .mp4 file, got {args.out!r}")
    check_fps(args.fps)
    image = load_image(args.image)
    waveform, sample_rate = load_audio(args.audio)
    check_audio(waveform, sample_rate, args.max_seconds)
    pipeline = load_pipeline(args.model, args.base, args.audio_encoder, args.device, args.dtype).optimize(
        channels_last=args.channels_last, compile=args.compile)
    result = render_video(
        pipeline, image, waveform, sample_rate, args.out, options, args.max_seconds, not args.quiet, fps=args.fps,
        crop=args.crop,
    )
    report_crop(result, args.image)
    print(
        f"wrote {result['path']}: {result['frames']} frames at {result['fps']:g} fps "
        f"({result['seconds']:.2f} s of audio) in {result['elapsed_s']:.1f} s"
    )
    return 0
