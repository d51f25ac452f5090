"""Audio-sensitivity probe: how much, and where, a Loopy model's predictions depend on the audio.

    python -m training.probe_audio --model M.safetensors --data HELD_OUT_SHARDS [--clips 16]
        [--levels 999,800,600,400,200] [--json probe.json]

`--data` is a `training.preprocess` folder of videos the model never trained on (e.g. `loopy synth` with other
voices and languages). On the same clips and the same noise, the denoiser predicts x0 teacher-forced (true
reference, true motion frames) with three audio conditions: the clip's own audio, another clip's audio (swapped)
and no audio (the guidance's null-audio tokens). Per noise level it reports, inside the mouth box and outside it:

- `change_none` / `change_swap`: mean |x0(true audio) - x0(no / swapped audio)|: how much the audio moves the output;
- `error_true` / `error_swap` / `error_none`: mean |x0 - target|: whether the audio it reacts to is the right one;
  `audio_gain` = 1 - error_true / error_none (> 0: the true audio helps).

Per depth (every cross-attention `attn2` of the denoiser, where the motion tokens enter, and the timestep-embedding
path where the model has one), at each noise level:

- `reach`: |attn2 output(true) - attn2 output(no audio)| / |attn2 input| on the mouth tokens: how strongly the audio
  writes into the residual stream there (for the timestep path: |change of its offset| / |its pooled-token input|,
  over all frames);
- `knockout`: the mouth-region x0 change when that block alone gets the no-audio output, as a share of the change
  when every block does (`change_none`): which blocks the audio that reaches the pixels goes through.

Linear read-out of the ground-truth mouth opening along the audio path (ridge regression fitted on half the videos,
correlation on the other half): from the raw features, after the A2L's input projection and from the motion tokens;
and from the features' per-frame mean (for log-mel: the loudness). It says whether the mouth is still in the audio
where the denoiser reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_LEVELS = (999, 800, 600, 400, 200)


def held_out_batch(data_dir, config, clips: int, seed: int) -> dict[str, torch.Tensor]:
    """`clips` stage-2 training items of the shards (drawn from `seed`), collated."""
    from .data import ShardDataset

    dataset = ShardDataset(data_dir, config, stage=2, seed=seed)
    items = [dataset[i] for i in range(clips)]
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def region_means(diff: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean of `diff` `[B, C, F, h, w]` inside and outside `mask` `[B, 1, F, h, w]`."""
    per_pixel = diff.abs().mean(dim=1, keepdim=True)
    inside = (per_pixel * mask).sum() / mask.sum().clamp_min(1)
    outside = (per_pixel * (1 - mask)).sum() / (1 - mask).sum().clamp_min(1)
    return inside.item(), outside.item()


def audio_modules(denoiser) -> dict[str, torch.nn.Module]:
    """The modules through which the motion tokens enter the denoiser, by depth order: every `attn2`, then the
    timestep-embedding path if the model has one."""
    found = {name: m for name, m in denoiser.unet.named_modules() if name.endswith(".attn2")}
    if denoiser.token_to_timestep is not None:
        found["token_to_timestep"] = denoiser.token_to_timestep
    return found


@contextmanager
def hooks(modules: dict[str, torch.nn.Module], record: dict | None = None, replace: dict | None = None):
    """Record each module's (input, output), or replace a module's output by a given tensor."""

    def make(name):
        def hook(module, args, kwargs, output):
            if record is not None:
                x = args[0] if args else kwargs.get("hidden_states")
                record[name] = (x.detach(), output.detach())
            if replace is not None and name in replace:
                return replace[name]
            return output

        return hook

    handles = [m.register_forward_hook(make(n), with_kwargs=True) for n, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def token_mask(mask: torch.Tensor, tokens: int) -> torch.Tensor:
    """The mouth mask `[B, 1, F, h, w]` on a block's token grid, `[(B F), tokens, 1]` (any mouth latent counts)."""
    B, _, Fr, h, w = mask.shape
    scale = int(round((h * w / tokens) ** 0.5))
    flat = mask.permute(0, 2, 1, 3, 4).reshape(B * Fr, 1, h, w)
    small = F.adaptive_max_pool2d(flat, (h // scale, w // scale)) if scale > 1 else flat
    return small.flatten(2).transpose(1, 2)


def reach(x: torch.Tensor, out_a: torch.Tensor, out_b: torch.Tensor, mask: torch.Tensor) -> float:
    """|out_a - out_b| / |x| over the mouth tokens (spatial blocks) or over all rows (the timestep path)."""
    delta, base = (out_a - out_b).float(), x.float()
    if delta.ndim == 3 and delta.shape[1] > 1:
        m = token_mask(mask, delta.shape[1]).to(delta)
        return ((delta.norm(dim=-1, keepdim=True) * m).sum() / (base.norm(dim=-1, keepdim=True) * m).sum()).item()
    return (delta.norm(dim=-1).mean() / base.norm(dim=-1).mean().clamp_min(1e-12)).item()


@torch.no_grad()
def probe(model, batch: dict[str, torch.Tensor], levels=DEFAULT_LEVELS, seed: int = 0, depth: bool = True) -> dict:
    """The probe's numbers for one batch of held-out clips (see the module docstring)."""
    from loopy_core.pipeline import make_scheduler

    from .objective import mouth_mask, predicted_x0

    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    target, B = batch["target"], batch["target"].shape[0]
    if B < 2:
        raise ValueError("the probe needs at least 2 clips (the swapped audio comes from another clip)")
    scheduler = make_scheduler("ddpm", model.config.noise)
    ref_tokens, motion_feats = model.reference_net(batch["ref"], batch["motion"])
    ref_kv = model.denoiser.reference_kv(ref_tokens)
    on = torch.ones(B, dtype=torch.bool, device=device)
    tokens = {
        "true": model.audio_to_latents(batch["audio"], on),
        "swap": model.audio_to_latents(batch["audio"].roll(1, dims=0), on),
        "none": model.audio_to_latents(batch["audio"], ~on),
    }
    mask = mouth_mask(batch["mouth"], target.shape[-2:])
    modules = audio_modules(model.denoiser) if depth else {}
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(target.shape, generator=generator).to(device, target.dtype)

    rows = []
    for level in levels:
        t = torch.full((B,), int(level), device=device, dtype=torch.long)
        noisy = scheduler.add_noise(target, noise, t)

        def x0(condition, **hook_args):
            with hooks(modules, **hook_args):
                pred = model.denoiser(noisy, t, tokens[condition], None, motion_feats, ref_kv=ref_kv)
            return predicted_x0(scheduler, noisy, pred, t)

        rec_true, rec_none = {}, {}
        x_true, x_none, x_swap = x0("true", record=rec_true), x0("none", record=rec_none), x0("swap")
        row = {"timestep": int(level)}
        for name, other in (("none", x_none), ("swap", x_swap)):
            row[f"change_{name}"], row[f"change_{name}_outside"] = region_means(x_true - other, mask)
        for name, pred in (("true", x_true), ("swap", x_swap), ("none", x_none)):
            row[f"error_{name}"], row[f"error_{name}_outside"] = region_means(pred - target, mask)
        row["audio_gain"] = 1.0 - row["error_true"] / max(row["error_none"], 1e-12)
        if modules:
            blocks = {}
            for name in modules:
                (x, out_true), (_, out_none) = rec_true[name], rec_none[name]
                knocked = x0("true", replace={name: out_none})
                share = region_means(x_true - knocked, mask)[0] / max(row["change_none"], 1e-12)
                blocks[name] = {"reach": reach(x, out_true, out_none, mask), "knockout": share}
            row["blocks"] = blocks
        rows.append(row)
    return {"clips": B, "levels": [int(v) for v in levels], "rows": rows}


def ridge_correlation(x: np.ndarray, y: np.ndarray, train: np.ndarray, lam: float = 10.0) -> float:
    """Held-out correlation of a ridge regression `x -> y` fitted where `train` is True (features standardised)."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = np.c_[(x - mu) / sd, np.ones(len(x))]
    w = np.linalg.solve(z[train].T @ z[train] + lam * np.eye(z.shape[1]), z[train].T @ y[train])
    pred, test = z[~train] @ w, ~train
    if pred.std() < 1e-12 or y[test].std() < 1e-12:
        return 0.0
    return float(np.corrcoef(pred, y[test])[0, 1])


@torch.no_grad()
def mouth_readout(model, data_dir) -> dict:
    """Ridge read-out of the shards' mouth opening from each stage of the audio path (half the videos fit, the
    other half score); see the module docstring."""
    from safetensors.torch import load_file

    from .data import read_index

    index = read_index(data_dir)["videos"]
    if len(index) < 2:
        raise ValueError("the mouth read-out needs at least 2 videos (it fits on half of them, scores the rest)")
    a2l, w = model.audio_to_latents, model.config.audio.window
    device = next(model.parameters()).device
    stages = {"features": [], "feature_mean": [], "a2l_input": [], "motion_tokens": []}
    ys, groups = [], []
    for g, video in enumerate(index):
        shard = load_file(str(Path(data_dir) / video["shard"]))
        audio = shard["audio"].float().to(device)  # [T, L, D]
        T = audio.shape[0]
        windows = audio[(torch.arange(T)[:, None] + torch.arange(-w, w + 1)[None]).clamp(0, T - 1)]  # [T, W, L, D]
        mixed = torch.einsum("twld,l->twd", windows, a2l.layer_logits.softmax(0).to(windows))
        stages["features"].append(mixed.flatten(1))
        stages["feature_mean"].append(mixed.mean(-1))
        stages["a2l_input"].append(a2l.audio_proj(mixed).flatten(1))
        stages["motion_tokens"].append(a2l(windows[None])[0].flatten(1))
        ys.append(shard["expression"][:T, 0].float().numpy())
        groups.append(np.full(T, g))
    y, group = np.concatenate(ys), np.concatenate(groups)
    train = group < (len(index) + 1) // 2
    return {name: ridge_correlation(torch.cat(v).cpu().double().numpy(), y, train) for name, v in stages.items()}


def print_report(report: dict) -> None:
    keys = ["change_none", "change_swap", "change_none_outside", "error_true", "error_swap", "error_none",
            "audio_gain"]
    print("mouth region (x0, teacher-forced):")
    print("t     " + " ".join(f"{k:>20}" for k in keys))
    for row in report["rows"]:
        print(f"{row['timestep']:<6}" + " ".join(f"{row[k]:>20.5f}" for k in keys))
    if report["rows"] and "blocks" in report["rows"][0]:
        print("per depth: reach (|d attn2| / |input| on mouth tokens) / knockout share, at each t")
        for name in report["rows"][0]["blocks"]:
            cells = [f"{r['blocks'][name]['reach']:.4f}/{r['blocks'][name]['knockout']:.3f}" for r in report["rows"]]
            print(f"  {name.replace('.transformer_blocks', '').replace('attentions', 'a'):<40}" + " ".join(
                f"{c:>14}" for c in cells))
    if "readout" in report:
        print("mouth opening read out along the audio path (held-out ridge correlation):")
        print("  " + ", ".join(f"{k} {v:.3f}" for k, v in report["readout"].items()))


def probe_arguments(prog: str, description: str, data_help: str) -> argparse.ArgumentParser:
    """The options every probe takes (model, held-out shards, clips, noise levels, seed, device, JSON)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--model", required=True, help="a Loopy checkpoint (.safetensors)")
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--clips", type=int, default=16, help="held-out 12-frame clips (default 16)")
    p.add_argument("--levels", default=",".join(map(str, DEFAULT_LEVELS)),
                   help="training timesteps to probe, comma-separated (default 999,800,600,400,200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="write the report here")
    return p


def load_probed(p: argparse.ArgumentParser, args, swapped: str):
    """The model and the checked noise levels of a probe's parsed `args`; `swapped` names what the swap takes from
    another clip (so `--clips` must be at least 2)."""
    from loopy_core.checkpoint import load_checkpoint

    try:
        levels = [int(v) for v in args.levels.split(",") if v.strip()]
    except ValueError:
        p.error(f"--levels must be comma-separated integers, got {args.levels!r}")
    if args.clips < 2:
        p.error(f"--clips must be at least 2 (the swapped {swapped} comes from another clip)")
    model = load_checkpoint(args.model).to(args.device)
    T = model.config.noise.num_train_timesteps
    if not levels or any(not 0 <= v < T for v in levels):
        p.error(f"--levels must lie in [0, {T - 1}], got {args.levels!r}")
    return model, levels


def main(argv=None) -> int:
    p = probe_arguments("python -m training.probe_audio", __doc__.split("\n")[0],
                        "training.preprocess shards of held-out videos")
    p.add_argument("--no-depth", action="store_true", help="skip the per-block numbers (faster)")
    args = p.parse_args(argv)
    model, levels = load_probed(p, args, "audio")
    batch = held_out_batch(args.data, model.config, args.clips, args.seed)
    report = {"model": str(args.model), "data": str(args.data),
              **probe(model, batch, levels, seed=args.seed, depth=not args.no_depth),
              "readout": mouth_readout(model, args.data)}
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
