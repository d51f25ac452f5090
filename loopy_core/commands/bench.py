"""`loopy bench`: performance ratios measured in one run (see `loopy_core.bench`)."""

from __future__ import annotations

import argparse

PARTS = ("clip", "breakdown", "length", "tsm", "diffusers", "animatediff", "sampling", "distilled", "profile",
         "channels_last", "compile", "compile_denoiser", "compile_cudagraphs")
DEFAULT_PARTS = PARTS[:9]  # compiling takes minutes; ask for it by name


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure speed and memory (ratios, one run)")
    p.add_argument("--config", choices=["tiny", "demo", "sd15"], default="tiny", help="config preset (default tiny)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=25, help="denoising steps per clip (default 25, the paper's)")
    p.add_argument("--only", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)} (default: all but channels_last and the compiles)")
    p.add_argument("--json", help="also write the results as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..bench import format_table
    from ..bench import run as bench
    from ..config import LoopyConfig
    from ..render import DTYPES, resolve_device

    what = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = sorted(set(what) - set(PARTS))
    if unknown:
        raise ValueError(f"--only: unknown part(s) {unknown}; choose from {list(PARTS)}")
    def save(results: dict) -> None:
        if args.json:  # after every part, so a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)

    results = bench(LoopyConfig.preset(args.config), str(resolve_device(args.device)), DTYPES[args.dtype],
                    args.steps, what, on_part=save)
    print(format_table(results))
    save(results)
    return 0
