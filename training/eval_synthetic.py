"""Score a Loopy model on a held-out synthetic-world test set (`loopy synth` output) with `loopy_core.eval`.

    python -m training.eval_synthetic --model loopy_demo.safetensors --videos data/test_videos [--seconds 20]
        [--steps N] [--scheduler dpmpp_2m] [--guidance-interval 0,0.5] [--device cuda] [--json report.json]

For every test video: generate from its neutral portrait and its speech with the shared pipeline, then measure
from pixels: lip sync against the speech (and the ground-truth video's score as the ceiling), the same sync
against another video's speech (the swapped-audio control, ~0 when the model really follows the audio), head-motion
amplitude against the ground truth, identity drift against the ground-truth video's own drift, identity fidelity
(face-box 16x16 PSNR and SSIM against the portrait, per second; `identity_error_ratio` is the generated video's
16x16 error over the ground truth's: how much more than talking itself the face departs from the portrait), seam
jitter and smoothness. Prints a table, the means and the identity curve; `--json` keeps every number (and each
video's per-second curves).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def cut_truth(truth: dict, n: int) -> dict:
    out = dict(truth)
    out["frames"] = {k: list(v)[:n] for k, v in truth["frames"].items()}
    out["num_frames"] = n
    return out


def truth_motion_statistics(truth: dict, num_frames: int, fps: float, clip_frames: int) -> torch.Tensor:
    """The median over the video's clips of the per-clip motion statistics training conditions on, from the ground
    truth's tracks: "the right amount of motion" for the motion-intensity control."""
    from loopy_core.motion import motion_statistics
    from training.preprocess import synthetic_tracks

    head, expression = synthetic_tracks(truth, num_frames, truth.get("fps", fps), fps)
    stats = [motion_statistics(head[k : k + clip_frames], expression[k : k + clip_frames])
             for k in range(0, num_frames - clip_frames + 1, clip_frames)]
    if not stats:
        raise ValueError(f"--motion-stats truth needs at least {clip_frames} frames, got {num_frames}")
    return torch.stack(stats).median(dim=0).values


def identity_row(gen: dict, truth: dict) -> dict:
    """The identity-fidelity numbers of one video: the generated face box's PSNR/SSIM, the truth's, their error
    ratio (whole video and last second) and both per-second PSNR curves."""
    return {
        "identity_psnr16": gen["psnr16_mean"],
        "identity_psnr16_last": gen["psnr16_last"],
        "identity_psnr16_ground_truth": truth["psnr16_mean"],
        "identity_ssim": gen["ssim_mean"],
        "identity_ssim_ground_truth": truth["ssim_mean"],
        "identity_error_ratio": gen["mse16_mean"] / max(truth["mse16_mean"], 1e-10),
        "identity_error_ratio_last": gen["mse16_last"] / max(truth["mse16_last"], 1e-10),
        "identity_psnr16_curve": [r["psnr16"] for r in gen["seconds"]],
        "identity_psnr16_curve_ground_truth": [r["psnr16"] for r in truth["seconds"]],
    }


def mean_curve(rows: list[dict], key: str, every: int) -> list[tuple[int, float]]:
    """`(start second, mean over videos and seconds)` of a per-second curve, every `every` seconds."""
    length = max(len(r[key]) for r in rows)
    out = []
    for s in range(0, length, every):
        values = [v for r in rows for v in r[key][s : s + every]]
        out.append((s, float(np.mean(values))))
    return out


def evaluate(model_path, videos_dir, seconds=None, device="auto", limit=None, motion_stats=None,
             **sampling) -> dict:
    """Generate each video from its reference and audio and score it against its ground truth; `sampling` are
    `GenerationOptions` fields (steps, scheduler, audio_guidance_scale, ref_guidance_scale, guidance_interval,
    history_anchor);
    `motion_stats="truth"` conditions each video on its ground truth's motion statistics (else audio alone)."""
    from PIL import Image

    from loopy_core.eval import evaluate_video
    from loopy_core.pipeline import GenerationOptions
    from loopy_core.render import load_pipeline
    from loopy_core.video import read_video

    videos_dir = Path(videos_dir)
    index = json.loads((videos_dir / "index.json").read_text())
    entries = index["videos"][:limit] if limit else index["videos"]
    pipe = load_pipeline(model_path, device=device)
    fps = pipe.config.fps
    rows = []
    clips = [read_video(videos_dir / e["video"]) for e in entries]
    for i, (entry, clip) in enumerate(zip(entries, clips)):
        n = len(clip.frames) if seconds is None else min(len(clip.frames), int(round(seconds * fps)))
        audio = clip.audio[:, : int(round(n / fps * clip.sample_rate))]
        truth = cut_truth(json.loads((videos_dir / entry["truth"]).read_text()), n)
        reference = np.asarray(Image.open(videos_dir / entry["reference"]).convert("RGB"))
        start = time.perf_counter()
        features = pipe.encode_audio(audio, clip.sample_rate)
        stats = None if motion_stats is None else truth_motion_statistics(truth, n, fps, pipe.config.frames_per_clip)
        frames = pipe(reference, features, GenerationOptions(**sampling, motion_stats=stats)).numpy()
        elapsed = time.perf_counter() - start
        gen = evaluate_video(frames, fps, audio, clip.sample_rate, reference, truth)
        gt = evaluate_video(clip.frames[:n], fps, audio, clip.sample_rate, reference, truth)
        other = clips[(i + 1) % len(clips)]
        m = min(n, len(other.frames))
        swapped = evaluate_video(frames[:m], fps, other.audio[:, : int(round(m / fps * other.sample_rate))],
                                 other.sample_rate, None, cut_truth(truth, m))
        rows.append({
            "id": entry["id"],
            "seconds": n / fps,
            "generation_s": elapsed,
            "sync": gen["sync"]["score"],
            "sync_ceiling": gen["sync"]["ceiling"],
            "sync_relative": gen["sync"]["relative"],
            "sync_swapped_audio": swapped["sync"]["score"],
            "motion_amplitude_ratio": gen["motion"]["amplitude_ratio"],
            "motion_period_error": gen["motion"].get("period_error"),  # |period - truth's| / truth's
            "frozen_head": gen["motion"]["frozen_head"],
            "drift_face": gen["identity_drift"]["face_max"],
            "drift_face_ground_truth": gt["identity_drift"]["face_max"],
            "drift_background": gen["identity_drift"]["background_max"],
            "drift_background_ground_truth": gt["identity_drift"]["background_max"],
            **identity_row(gen["identity_fidelity"], gt["identity_fidelity"]),
            "seam_jitter": gen["seam_jitter"]["ratio"] if "ratio" in gen["seam_jitter"] else gen["seam_jitter"],
            "seam_jitter_ground_truth": gt["seam_jitter"].get("ratio"),
            "smoothness": gen["smoothness"].get("score"),
        })
    numeric = [k for k in rows[0] if any(isinstance(r[k], (int, float)) and not isinstance(r[k], bool) for r in rows)]
    means = {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in numeric}
    means["frozen_head"] = float(np.mean([r["frozen_head"] for r in rows]))
    curve = {"generated": mean_curve(rows, "identity_psnr16_curve", 1),
             "ground_truth": mean_curve(rows, "identity_psnr16_curve_ground_truth", 1)}
    return {"model": str(model_path), "videos": str(videos_dir), "sampling": sampling, "motion_stats": motion_stats,
            "rows": rows, "mean": means, "identity_psnr16_curve": curve}


def main(argv=None) -> int:
    from loopy_core.guidance import parse_interval

    p = argparse.ArgumentParser(prog="python -m training.eval_synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--videos", required=True, help="a `loopy synth` folder of held-out videos")
    p.add_argument("--seconds", type=float, help="score only the first SECONDS of each video")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    p.add_argument("--audio-guidance", type=float, help="audio guidance scale (default: the model's)")
    p.add_argument("--ref-guidance", type=float, help="reference guidance scale (default: the model's)")
    p.add_argument("--scheduler", default="ddim", help="sampler (default ddim), e.g. dpmpp_2m")
    p.add_argument("--guidance-interval", default="0,1", help="fractions of the steps with guidance (default '0,1')")
    p.add_argument("--history-anchor", type=float, default=0.0,
                   help="0..1: pull the motion frames' coarse appearance towards the reference (default 0: off)")
    p.add_argument("--motion-stats", choices=["truth"],
                   help="truth: condition on each video's ground-truth motion statistics (default: audio alone)")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, help="only the first N videos")
    p.add_argument("--json", help="write the full report here")
    args = p.parse_args(argv)
    report = evaluate(args.model, args.videos, args.seconds, args.device, limit=args.limit, steps=args.steps,
                      scheduler=args.scheduler, audio_guidance_scale=args.audio_guidance,
                      ref_guidance_scale=args.ref_guidance, guidance_interval=parse_interval(args.guidance_interval),
                      history_anchor=args.history_anchor, motion_stats=args.motion_stats)
    keys = ["sync", "sync_ceiling", "sync_relative", "sync_swapped_audio", "motion_amplitude_ratio",
            "drift_face", "drift_face_ground_truth", "identity_psnr16", "identity_error_ratio", "seam_jitter",
            "seam_jitter_ground_truth", "generation_s"]
    print("id      " + " ".join(f"{k[:14]:>14}" for k in keys))
    for row in report["rows"]:
        print(f"{row['id']:<8}" + " ".join(f"{row[k]:>14.3f}" if row[k] is not None else f"{'-':>14}" for k in keys))
    print("mean    " + " ".join(f"{report['mean'][k]:>14.3f}" for k in keys))
    every = max(1, len(report["identity_psnr16_curve"]["generated"]) // 6)
    print(f"identity: face-box 16x16 PSNR (dB) per {every} s, generated / ground truth (mean of the videos)")
    gen = mean_curve(report["rows"], "identity_psnr16_curve", every)
    gt = mean_curve(report["rows"], "identity_psnr16_curve_ground_truth", every)
    print("  " + "  ".join(f"{s}s {a:.1f}/{b:.1f}" for (s, a), (_, b) in zip(gen, gt)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
