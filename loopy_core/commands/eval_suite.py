"""`loopy eval-suite`: the paper's real-data metrics on folders of generated and ground-truth videos."""

from __future__ import annotations

import argparse

# kept here so `loopy --help` imports no torch; tests check they agree with loopy_core.eval.suite
SPLITS = ("folder", "celebv-hq", "ravdess", "hdtf")
NETWORK_OPTIONS = {
    "sync": ("--syncnet", "SyncNet weights for Sync-C / Sync-D (default: syncnet_v2.safetensors in --weights)"),
    "fid": ("--inception", "Inception-v3 weights for FID (default: pt_inception-2015-12-05.safetensors in --weights)"),
    "fvd": ("--i3d", "I3D weights for FVD (default: i3d_kinetics400.safetensors in --weights)"),
    "e_fid": ("--face3d", "Deep3DFaceRecon weights for E-FID, its epoch_20.pth or a safetensors copy (optional; "
              "default: deep3dfacerecon_epoch_20.safetensors or epoch_20.pth in --weights; without it E-FID is "
              "reported as not computed)"),
}
WEIGHTS_HELP = ("folder holding the metric networks' weights under their standard names (also searched, in order: "
                "$LOOPY_EVAL_WEIGHTS, ComfyUI's models/loopy_eval, the Hugging Face hub cache)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-suite",
        help="Sync-C/D, FID, FVD, E-FID, IQA, Glo/Exp, smoothness, drift and seam jitter of generated videos "
        "against the truth",
        description="Score a folder of generated videos against a folder of ground-truth videos matched by name, "
        "with one fixed pipeline (25 fps, one face crop per video). Metric networks load from your disk; see the "
        "README section 'Evaluating on real data'.",
    )
    p.add_argument("--pred", required=True, help="folder of generated videos")
    p.add_argument("--truth", required=True, help="folder of ground-truth videos with the same file names")
    p.add_argument("--split", choices=SPLITS, default="folder",
                   help="folder (default): every video of the folders; celebv-hq, ravdess, hdtf: the videos and "
                   "frame ranges of --list (a list you provide; none ships)")
    p.add_argument("--list", dest="split_list",
                   help="split list: one video a line, NAME or NAME START END (frames at 25 fps, END exclusive)")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    for key, (option, help_text) in NETWORK_OPTIONS.items():
        p.add_argument(option, dest=f"weights_{key}", help=help_text)
    p.add_argument("--qalign", help="Q-Align weights folder for IQA (optional; needs the q_align package)")
    p.add_argument("--skip-missing", action="store_true",
                   help="report metrics whose weights are missing as not computed instead of stopping")
    p.add_argument("--frame-stride", type=int, default=1, help="FID on every N-th frame (1: every frame)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--json", dest="json_out", required=True, help="write the full results here")
    p.add_argument("--markdown", dest="markdown_out", help="also write the summary table here")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os
    import sys

    import torch

    from ..eval.suite import load_networks, markdown_report, match_videos, read_split_list, resolve_weights, run_suite

    # 1. every input is checked before a network loads or a video decodes
    if args.split != "folder" and not args.split_list:
        raise ValueError(f"--split {args.split} needs --list FILE: the split's videos and frame ranges (none ships)")
    for flag, path in (("--json", args.json_out), ("--markdown", args.markdown_out)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise FileNotFoundError(f"{flag} folder does not exist: {os.path.dirname(os.path.abspath(path))}")
    if args.weights and not os.path.isdir(args.weights):
        raise FileNotFoundError(f"--weights folder not found: {args.weights}")
    if args.qalign and not os.path.isdir(args.qalign):
        raise FileNotFoundError(f"IQA: Q-Align weights folder not found: {args.qalign} (--qalign)")
    entries = read_split_list(args.split_list) if args.split_list else None
    pairs = match_videos(args.pred, args.truth, entries)
    paths = {key: getattr(args, f"weights_{key}") for key in NETWORK_OPTIONS}
    weights = resolve_weights(args.weights, paths, skip_missing=args.skip_missing,
                              report=lambda line: print(line, file=sys.stderr, flush=True))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    # 2. networks, then one video at a time
    nets = load_networks(weights, device, qalign=args.qalign)

    def progress(info: dict) -> None:
        sync = info["record"]["pred"]["sync"]
        score = f"Sync-C {sync['sync_c']:.3f}, Sync-D {sync['sync_d']:.3f}" if sync.get("available") else "no sync"
        print(f"[{info['index'] + 1}/{info['total']}] {info['name']}: {info['record']['pred']['frames']} frames, "
              f"{score}", file=sys.stderr, flush=True)

    result = run_suite(pairs, nets, frame_stride=args.frame_stride, callback=progress)
    result["protocol"].update(split=args.split, split_list=args.split_list, weights=weights, device=device,
                              pred=args.pred, truth=args.truth)
    # 3. reports
    table = markdown_report(result)
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=1)
    print(table)
    print(f"wrote {args.json_out}")
    if args.markdown_out:
        with open(args.markdown_out, "w") as f:
            f.write(table)
        print(f"wrote {args.markdown_out}")
    return 0
