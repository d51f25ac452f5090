"""The paper's ablation (Table 3) in miniature: the same data, budget and seeds for the full model and each row
with one Loopy module switched off, scored on the same held-out synthetic set.

    python -m training.ablation --data TRAIN_SHARDS --held-out HELD_OUT_SHARDS --videos HELD_OUT_VIDEOS
        --out runs/ablation [--rows full,no_tsm,...] [--seeds 0,1] [--steps 300] [--init CKPT]
        [--seconds 8] [--videos60 DIR] [--limit 3] [--launcher "accelerate launch"] [key=value ...]

Rows (each a change of the model config, `LoopyConfig.replace` form; see `ROWS`):
- `full`: the model as configured;
- `no_tsm`: TSM off, 4 plain motion frames (s=4, r=1, K=1);
- `r1`: s=4, r=1 (the last 20 frames, no expansion);
- `single_temporal`: one temporal layer over [20 TSM latents ; clip] (the inter-clip layer alone, no intra-clip);
- `no_inter_clip`: no inter-clip layer (the motion frames reach no temporal layer);
- `audio_cross_attention`: audio windows straight into cross-attention instead of audio-to-latents;
- `no_motion_stats`: audio-to-latents trained on audio alone (no motion-statistics tokens).

Every cell (row x seed) starts from the same initialisation of its seed (`--init`, or a fresh `loopy init` of
`--config`; a row's change adds or drops only its own parts), trains `--steps` steps of the recipe
(`--recipe`, default `training/configs/synthetic_tiny.yaml`, plus the `key=value` overrides) with
`python -m training.train` (or `--launcher`, e.g. `accelerate launch` on GPUs), exports its EMA, and is scored with
`training.eval_synthetic` (generation from the held-out videos' portraits and speech) and `training.probe_audio`
(teacher-forced audio sensitivity). Each cell writes `result.json` when done; a rerun skips finished cells and resumes
a cell's training from its last checkpoint, so the table can be built over several sessions. After every cell
the table is rewritten (`ablation.json`, `ABLATION.md` in `--out`) with the mean and spread (half the range over the
seeds) of every metric per row, and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

ROWS: dict[str, dict] = {
    "full": {},
    "no_tsm": {"tsm": {"s": 4, "r": 1, "K": 1}},
    "r1": {"tsm": {"s": 4, "r": 1}},
    "single_temporal": {"temporal": {"intra_clip": False}},
    "no_inter_clip": {"temporal": {"inter_clip": False}},
    "audio_cross_attention": {"a2l": {"direct": True}},
    "no_motion_stats": {"a2l": {"p_audio_only": 1.0, "p_audio_motion": 0.0, "p_motion_only": 0.0}},
}

# paper Table 3 (IQA / Sync-D / Smooth as reported; empty where the row gives no number for it)
PAPER = {
    "full": "IQA 4.507, Sync-D 7.749, Smooth 0.9932",
    "no_tsm": "IQA 4.386",
    "r1": "IQA 4.424, Sync-D 8.004",
    "single_temporal": "IQA 4.072, Smooth 0.9752",
    "no_inter_clip": "",
    "audio_cross_attention": "the largest drop",
    "no_motion_stats": "",
}

# (report key, column title, source): source "eval" = eval_synthetic's means, "probe" = the probe's first level
METRICS = [
    ("sync", "sync", "eval"),
    ("sync_relative", "sync / truth", "eval"),
    ("motion_amplitude_ratio", "amplitude / truth", "eval"),
    ("motion_period_error", "period error", "eval"),
    ("drift_face", "drift", "eval"),
    ("seam_jitter", "seams", "eval"),
    ("smoothness", "smooth", "eval"),
    ("audio_gain", "audio gain (probe)", "probe"),
    ("mouth_error", "mouth x0 error (probe)", "probe"),
]
PROBE_LEVELS = (999, 600, 200)


def cell_metrics(eval8: dict, eval60: dict | None, probe: dict) -> dict:
    """The numbers of one cell: eval means at each length, and the probe averaged over its noise levels."""
    out = {}
    for tag, report in (("8s", eval8), ("60s", eval60)):
        if report is None:
            continue
        for key, _, source in METRICS:
            if source == "eval" and key in report["mean"]:
                out[f"{key}@{tag}"] = report["mean"][key]
    rows = probe["rows"]
    out["audio_gain"] = float(np.mean([r["audio_gain"] for r in rows]))
    out["mouth_error"] = float(np.mean([r["error_true"] for r in rows]))
    return out


def summarize(results: dict[str, dict[int, dict]]) -> dict[str, dict[str, dict]]:
    """Per row and metric: mean, spread (half the range) and n over the seeds that finished."""
    table = {}
    for row, seeds in results.items():
        keys = sorted({k for m in seeds.values() for k in m})
        table[row] = {}
        for k in keys:
            values = [m[k] for m in seeds.values() if m.get(k) is not None]
            if values:
                table[row][k] = {"mean": float(np.mean(values)), "spread": float(np.ptp(values) / 2),
                                 "n": len(values)}
    return table


def markdown(table: dict[str, dict[str, dict]], setup: str) -> str:
    columns = []
    for tag in ("8s", "60s"):
        columns += [(f"{k}@{tag}", f"{title} ({tag})") for k, title, src in METRICS if src == "eval"]
    columns += [(k, title) for k, title, src in METRICS if src == "probe"]
    present = [(k, t) for k, t in columns if any(k in cells for cells in table.values())]
    lines = [setup, "", "| row | seeds | " + " | ".join(t for _, t in present) + " | paper (Table 3) |",
             "| --- | --- | " + " | ".join("---" for _ in present) + " | --- |"]
    for row, cells in table.items():
        n = max((c["n"] for c in cells.values()), default=0)
        vals = [f"{cells[k]['mean']:.3f} ± {cells[k]['spread']:.3f}" if k in cells else "-" for k, _ in present]
        lines.append(f"| {row} | {n} | " + " | ".join(vals) + f" | {PAPER.get(row, '')} |")
    return "\n".join(lines) + "\n"


class Ablation:
    def __init__(self, args, overrides: list[str]):
        self.args = args
        self.overrides = overrides
        self.out = Path(args.out)

    def init_checkpoint(self, seed: int) -> Path:
        """The starting checkpoint every row of this seed shares."""
        if self.args.init:
            return Path(self.args.init)
        path = self.out / "init" / f"{self.args.config}-seed{seed}.safetensors"
        if not path.exists():
            import torch

            from loopy_core.checkpoint import save_checkpoint
            from loopy_core.config import LoopyConfig
            from loopy_core.models import LoopyModel

            config = LoopyConfig.preset(self.args.config)
            if config.audio.kind != "logmel":
                raise ValueError(f"a fresh '{self.args.config}' init has no audio encoder of the shards' features; "
                                 "pass --init with the checkpoint the shards were preprocessed with")
            torch.manual_seed(seed)
            save_checkpoint(LoopyModel(config), path)
        return path

    def train(self, row: str, seed: int, cell: Path) -> Path:
        from .train import list_checkpoints

        run = cell / "run"
        done = [c for c in list_checkpoints(run) if int(c.name.split("-")[1]) >= self.args.steps]
        if not done:
            recipe = yaml.safe_load(Path(self.args.recipe).read_text()) or {}
            recipe.update(model=str(self.init_checkpoint(seed)), data=str(self.args.data), output_dir=str(run),
                          seed=seed, max_train_steps=self.args.steps, model_changes=ROWS[row],
                          validation_steps=0, report_to="none")
            cell.mkdir(parents=True, exist_ok=True)
            (cell / "train.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
            launcher = shlex.split(self.args.launcher) if self.args.launcher else [sys.executable, "-m"]
            cmd = launcher + ["training.train", "--config", str(cell / "train.yaml"), *self.overrides]
            if list_checkpoints(run):
                cmd += ["--resume", "latest"]
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PYTHONPATH": path}
            with open(cell / "train.log", "a") as log:
                result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            if result.returncode != 0:
                raise RuntimeError(f"training of {row} seed {seed} failed; see {cell / 'train.log'}")
        return run

    def cell(self, row: str, seed: int) -> dict:
        from .eval_synthetic import evaluate
        from .export import export
        from .probe_audio import held_out_batch, probe

        cell = self.out / "cells" / row / f"seed{seed}"
        if (cell / "result.json").exists():
            return json.loads((cell / "result.json").read_text())
        start = time.perf_counter()
        run = self.train(row, seed, cell)
        from loopy_core.checkpoint import load_checkpoint

        model_path = export(run, cell / "model.safetensors", ema=True)  # the init's audio encoder rides along

        model = load_checkpoint(model_path)
        batch = held_out_batch(self.args.held_out, model.config, self.args.probe_clips, seed=0)
        probed = probe(model, batch, PROBE_LEVELS, depth=False)
        eval8 = evaluate(model_path, self.args.videos, self.args.seconds, self.args.device, limit=self.args.limit)
        eval60 = evaluate(model_path, self.args.videos60, None, self.args.device, limit=self.args.limit) \
            if self.args.videos60 else None
        result = {"row": row, "seed": seed, "changes": ROWS[row], "steps": self.args.steps,
                  "metrics": cell_metrics(eval8, eval60, probed), "probe": probed,
                  "eval": {"8s": eval8, "60s": eval60}, "seconds": time.perf_counter() - start}
        tmp = cell / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, cell / "result.json")
        return result

    def run(self, rows: list[str], seeds: list[int]) -> dict:
        results: dict[str, dict[int, dict]] = {row: {} for row in rows}
        setup = (f"Data `{self.args.data}`, {self.args.steps} steps of `{self.args.recipe}` "
                 f"(overrides: {' '.join(self.overrides) or 'none'}), start: "
                 f"{self.args.init or f'fresh `{self.args.config}` init per seed'}; held-out videos "
                 f"`{self.args.videos}` ({self.args.seconds} s, {self.args.limit} videos)"
                 + (f" and `{self.args.videos60}` (whole)" if self.args.videos60 else "")
                 + f"; probe on {self.args.probe_clips} clips of `{self.args.held_out}` at t = {PROBE_LEVELS}. "
                 "Mean ± half the range over the seeds.")
        table = {}
        for seed in seeds:  # seed-major: a first full pass of the rows comes out before the second seed
            for row in rows:
                result = self.cell(row, seed)
                results[row][seed] = result["metrics"]
                table = summarize({r: s for r, s in results.items() if s})
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "ablation.json").write_text(json.dumps({"setup": setup, "table": table}, indent=1))
                (self.out / "ABLATION.md").write_text(markdown(table, setup))
                print(f"[{row} seed {seed}] " + ", ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()),
                      flush=True)
        print(markdown(table, setup))
        return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="training shards (training.preprocess)")
    p.add_argument("--held-out", required=True, help="shards of held-out videos, for the audio probe")
    p.add_argument("--videos", required=True, help="held-out `loopy synth` videos, for eval_synthetic")
    p.add_argument("--videos60", help="a second held-out set scored whole (e.g. 60 s videos)")
    p.add_argument("--out", required=True, help="folder for the cells, ablation.json and ABLATION.md")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default: all of {list(ROWS)})")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--steps", type=int, default=300, help="training steps per cell (default 300)")
    p.add_argument("--recipe", default="training/configs/synthetic_tiny.yaml")
    p.add_argument("--config", default="demo", choices=["tiny", "demo"], help="preset of a fresh init")
    p.add_argument("--init", help="start every cell from this checkpoint instead of a fresh init")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds scored of each --videos video")
    p.add_argument("--limit", type=int, default=3, help="held-out videos scored (default 3)")
    p.add_argument("--probe-clips", type=int, default=8)
    p.add_argument("--device", default="auto", help="device of the held-out generation (default auto)")
    p.add_argument("--launcher", help="how to start training, e.g. 'accelerate launch -m' (default: python -m)")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        p.error(f"unrecognised arguments {bad}; training overrides look like key=value")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        p.error(f"unknown row(s) {unknown}; choose from {list(ROWS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    for flag in ("data", "held_out", "videos", "videos60", "init", "recipe"):
        value = getattr(args, flag)
        if value and not Path(value).exists():
            p.error(f"--{flag.replace('_', '-')}: {value!r} not found")
        if value:  # training runs in its own process from the repository root
            setattr(args, flag, str(Path(value).resolve()))
    args.out = str(Path(args.out).resolve())
    Ablation(args, overrides).run(rows, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
