"""Reference-swap probe: whether a Loopy model's output takes its appearance from the reference image it is given.

    python -m training.probe_reference --model M.safetensors --data HELD_OUT_SHARDS [--clips 16]
        [--levels 999,800,600,400,200] [--json probe.json]

`--data` is a `training.preprocess` folder of videos (identities) the model never trained on. On the same clips and
the same noise the denoiser predicts x0 teacher-forced, with the clip's own audio, under these conditions:

- mid-video (the clip's true motion frames): the true reference (`true`), another clip's reference (`ref_swap`),
  no reference (`ref_none`, the guidance's null reference), and the true reference with another clip's motion
  frames (`motion_swap`);
- first clip (motion frames made by the TSM from the reference alone, as the pipeline's first clip): the true
  reference (`start_true`) and another clip's (`start_swap`).

Per noise level it reports `error_<condition>` = mean |x0 - target| and `change_<condition>` = mean |x0(true) -
x0(condition)|, `ref_gain` = 1 - error_true / error_ref_none (> 0: the reference helps), and the **follow**
coefficients: how far the output's low-frequency appearance (latents average-pooled to 4x4) moves from its
true-condition value toward the swapped source, as a fraction of the distance between the two sources' own
appearance (`follow_ref`: reference swapped; `follow_motion`: motion frames swapped; `follow_start`: the first clip
with the other reference). 1 means the output takes the given source's appearance fully, 0 that it ignores it: a
model that copies appearance from the reference has `follow_start` near 1 and `follow_ref` well above 0; one that
memorised its training faces has both near 0. `follow_ref` against `follow_motion` says which of the two the model
trusts as clips chain (drift comes from the motion frames winning).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .probe_audio import DEFAULT_LEVELS, held_out_batch, load_probed, probe_arguments

APPEARANCE_GRID = 4  # latents are average-pooled to this many cells a side for the follow coefficients
MID_VIDEO = ("true", "ref_swap", "ref_none", "motion_swap")
FIRST_CLIP = ("start_true", "start_swap")


def appearance(latents: torch.Tensor) -> torch.Tensor:
    """Low-frequency appearance of latents `[B, C, (F,) h, w]`: average-pooled to `APPEARANCE_GRID` a side,
    `[B, (F,) C * g * g]`."""
    if latents.ndim == 4:
        latents = latents[:, :, None]
    B, C, Fr, h, w = latents.shape
    g = min(APPEARANCE_GRID, h, w)
    flat = latents.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, h, w).float()
    return F.adaptive_avg_pool2d(flat, g).reshape(B, Fr, -1)


def follow(output: torch.Tensor, base: torch.Tensor, source: torch.Tensor, other: torch.Tensor) -> float:
    """How far `output` moved from `base` toward `other` along the direction `source -> other`, in units of that
    distance, on the appearance of each (`[B, C, F, h, w]` outputs; `[B, C, (M,) h, w]` sources, averaged over
    their frames); the mean over clips. 0: no move, 1: moved by the whole difference of the sources."""
    moved = (appearance(output) - appearance(base)).mean(1)  # [B, D]
    direction = (appearance(other) - appearance(source)).mean(1)
    scale = (direction * direction).sum(-1)
    keep = scale > 1e-8 * scale.max().clamp_min(1e-12)
    if not keep.any():
        raise ValueError("the swapped sources have the same appearance; the probe needs clips of different videos")
    return ((moved * direction).sum(-1)[keep] / scale[keep]).mean().item()


@torch.no_grad()
def probe(model, batch: dict[str, torch.Tensor], levels=DEFAULT_LEVELS, seed: int = 0) -> dict:
    """The probe's numbers for one batch of held-out clips (see the module docstring)."""
    from loopy_core.pipeline import make_scheduler

    from .objective import predicted_x0

    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    target, B = batch["target"], batch["target"].shape[0]
    if B < 2:
        raise ValueError("the probe needs at least 2 clips (the swapped reference comes from another clip)")
    ref, motion = batch["ref"], batch["motion"]
    ref_other, motion_other = ref.roll(1, dims=0), motion.roll(1, dims=0)
    start, start_other = model.tsm(None, ref), model.tsm(None, ref_other)

    def reference(latents):
        return model.denoiser.reference_kv(model.reference_net(latents, None)[0])

    def motion_features(latents):
        return model.reference_net(None, latents)[1]

    true_ref, true_motion = reference(ref), motion_features(motion)
    null_ref = model.denoiser.reference_kv({k: torch.zeros_like(v) for k, v in model.reference_net(ref, None)[0].items()})
    conditions = {
        "true": (true_ref, true_motion),
        "ref_swap": (reference(ref_other), true_motion),
        "ref_none": (null_ref, true_motion),
        "motion_swap": (true_ref, motion_features(motion_other)),
        "start_true": (true_ref, motion_features(start)),
        "start_swap": (reference(ref_other), motion_features(start_other)),
    }
    on = torch.ones(B, dtype=torch.bool, device=device)
    tokens = model.audio_to_latents(batch["audio"], on)
    scheduler = make_scheduler("ddpm", model.config.noise)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(target.shape, generator=generator).to(device, target.dtype)

    rows = []
    for level in levels:
        t = torch.full((B,), int(level), device=device, dtype=torch.long)
        noisy = scheduler.add_noise(target, noise, t)
        x0 = {}
        for name, (ref_kv, feats) in conditions.items():
            pred = model.denoiser(noisy, t, tokens, None, feats, ref_kv=ref_kv)
            x0[name] = predicted_x0(scheduler, noisy, pred, t).float()
        row = {"timestep": int(level)}
        for name, pred in x0.items():
            row[f"error_{name}"] = (pred - target).abs().mean().item()
            if name not in ("true", "start_true"):
                base = x0["start_true"] if name.startswith("start") else x0["true"]
                row[f"change_{name}"] = (pred - base).abs().mean().item()
        row["ref_gain"] = 1.0 - row["error_true"] / max(row["error_ref_none"], 1e-12)
        row["follow_ref"] = follow(x0["ref_swap"], x0["true"], ref, ref_other)
        row["follow_motion"] = follow(x0["motion_swap"], x0["true"], motion, motion_other)
        row["follow_start"] = follow(x0["start_swap"], x0["start_true"], ref, ref_other)
        rows.append(row)
    return {"clips": B, "levels": [int(v) for v in levels], "rows": rows}


def print_report(report: dict) -> None:
    keys = ["follow_start", "follow_ref", "follow_motion", "ref_gain", "error_true", "error_ref_swap",
            "error_ref_none", "error_motion_swap", "error_start_true", "error_start_swap"]
    print("reference swap (x0, teacher-forced): follow = share of the swapped source's appearance taken")
    print("t     " + " ".join(f"{k:>17}" for k in keys))
    for row in report["rows"]:
        print(f"{row['timestep']:<6}" + " ".join(f"{row[k]:>17.4f}" for k in keys))


def main(argv=None) -> int:
    p = probe_arguments("python -m training.probe_reference", __doc__.split("\n")[0],
                        "training.preprocess shards of held-out videos (unseen identities)")
    args = p.parse_args(argv)
    model, levels = load_probed(p, args, "reference")
    batch = held_out_batch(args.data, model.config, args.clips, args.seed)
    report = {"model": str(args.model), "data": str(args.data), **probe(model, batch, levels, seed=args.seed)}
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
