"""Benchmarks of the generation pipeline, reported as ratios measured in one run (`loopy bench`).

- `clip`: seconds per 12-frame clip, frames per second and peak device memory, for a config at its resolution;
- `tsm`: time per clip with the full TSM history (124 frames -> 20 latents) over classic 4 motion frames;
- `length`: a 10-clip video over one clip (time), and peak resident memory of 10 clips over 1 clip when frames
  stream to an mp4 (each in its own process, so the peaks don't mix);
- `diffusers`: one UNet evaluation of our denoiser against diffusers' `UNetMotionModel` (SD1.5 + AnimateDiff) of
  identical widths, same frames and dtype; also ours with only the AnimateDiff-equivalent work (no reference
  attention, no inter-clip layers), which is the like-for-like number;
- `animatediff`: seconds per clip of diffusers' end-to-end `AnimateDiffPipeline` (same widths and VAE, 2 guidance
  branches, decode included) beside ours (3 branches);
- `breakdown`: shares of a clip's time in audio features, ReferenceNet, denoiser, VAE decode and video writing;
- `channels_last`, `compile`, `compile_denoiser`, `compile_cudagraphs`: seconds per clip with
  `LoopyPipeline.optimize` (channels-last weights; `torch.compile` of the denoiser's blocks one by one, of the whole
  denoiser as one graph, or of the whole denoiser with CUDA graphs, inductor's `reduce-overhead` mode; the one-off
  compile time reported apart) over the eager default, with peak device memory;
- `sampling`: seconds per clip for the sampling settings of `SAMPLING` (fewer steps, guidance on part of the steps,
  two branches) against the paper's 25 DDIM steps with three branches;
- `distilled`: seconds per clip of a guidance-distilled student (one branch per step, the scales as inputs) at
  8, 6 and 4 DDIM steps against its teacher (same widths, three branches) at `steps`;
- `profile`: the operators that take most of one clip's device time (`torch.profiler`, a few steps).
Weights are random (timing only). On CUDA, times use events after warm-up; elsewhere `perf_counter`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import torch

from .audio import AudioFeatures
from .config import LoopyConfig
from .pipeline import GenerationOptions, LoopyPipeline


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def random_audio(config: LoopyConfig, num_frames: int, seed: int = 0) -> AudioFeatures:
    g = torch.Generator().manual_seed(seed)
    a = config.audio
    feats = torch.randn(num_frames, 2 * a.window + 1, a.num_layers, a.feature_dim, generator=g)
    return AudioFeatures(feats=feats, num_frames=num_frames, fps=config.fps, duration_s=num_frames / config.fps,
                         sample_rate=a.sample_rate)


def build_pipeline(config: LoopyConfig, device, dtype, **optimize) -> LoopyPipeline:
    from .models.loopy import LoopyModel

    torch.manual_seed(0)
    with torch.device(device):
        model = LoopyModel(config)
    return LoopyPipeline(model.to(device=device, dtype=dtype).eval()).optimize(**optimize)


def reference_image(config: LoopyConfig) -> np.ndarray:
    return np.random.default_rng(0).random((config.resolution, config.resolution, 3)).astype(np.float32)


PAPER_GUIDANCE = {"audio_guidance_scale": 5.0, "ref_guidance_scale": 3.0}  # the paper's scales, timed by default
# name -> GenerationOptions fields (with `PAPER_GUIDANCE` unless given); the `sampling` part times each
SAMPLING = {
    "paper: ddim 25 steps, 3 branches": dict(scheduler="ddim", steps=25),
    "ddim 25, ref scale 1 (2 branches)": dict(scheduler="ddim", steps=25, ref_guidance_scale=1.0),
    "ddim 25, guidance on the first 40%": dict(scheduler="ddim", steps=25, guidance_interval=(0.0, 0.4)),
    "dpmpp_2m 12, 3 branches": dict(scheduler="dpmpp_2m", steps=12),
    "dpmpp_2m 12, guidance on the first 50%": dict(scheduler="dpmpp_2m", steps=12, guidance_interval=(0.0, 0.5)),
    "dpmpp_2m 10, guidance on the first 40%": dict(scheduler="dpmpp_2m", steps=10, guidance_interval=(0.0, 0.4)),
}


def bench_clip(pipe: LoopyPipeline, steps: int, repeats: int = 3, warmup: int = 1, **sampling) -> dict:
    """Seconds per clip at steady state (history full), frames/s and peak device memory; `sampling` overrides
    `GenerationOptions` fields (default: `steps` DDIM steps, `PAPER_GUIDANCE`)."""
    cfg, device = pipe.config, pipe.device
    audio = random_audio(cfg, cfg.frames_per_clip * 12)
    state = pipe.start_video(reference_image(cfg))
    state.history = torch.randn(1, cfg.latent_channels, pipe.model.tsm.span, cfg.latent_size, cfg.latent_size,
                                device=device, dtype=pipe.dtype)
    options = GenerationOptions(steps=steps, **{**PAPER_GUIDANCE, **sampling})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    k = iter(range(1, 12))
    seconds = timed(lambda: pipe.run_clip(state, audio, next(k), options), device, repeats, warmup)
    out = {"seconds_per_clip": seconds, "frames_per_second": cfg.frames_per_clip / seconds, "steps": steps}
    if device.type == "cuda":
        out["peak_vram_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def bench_tsm(config: LoopyConfig, device, dtype, steps: int) -> dict:
    full = bench_clip(build_pipeline(config, device, dtype), steps)["seconds_per_clip"]
    classic = config.replace(tsm={"s": 4, "r": 1, "K": 1})
    four = bench_clip(build_pipeline(classic, device, dtype), steps)["seconds_per_clip"]
    return {"tsm_124_frames_s": full, "four_motion_frames_s": four, "ratio": full / four}


def with_speedups(rows: dict[str, dict]) -> dict[str, dict]:
    """Each row's `speedup`: the first row's seconds per clip over its own."""
    base = rows[next(iter(rows))]["seconds_per_clip"]
    for row in rows.values():
        row["speedup"] = base / row["seconds_per_clip"]
    return rows


def bench_sampling(pipe: LoopyPipeline, settings: dict[str, dict] | None = None, repeats: int = 2) -> dict:
    """Seconds per clip for each sampling setting (`SAMPLING`), and the speed-up over the first."""
    settings = settings or SAMPLING
    # each setting names its steps
    return with_speedups({name: bench_clip(pipe, repeats=repeats, **sampling) for name, sampling in settings.items()})


DISTILLED_STEPS = (8, 6, 4)


def bench_distilled(pipe: LoopyPipeline, steps: int, student_steps=DISTILLED_STEPS, repeats: int = 2) -> dict:
    """Seconds per clip of a guidance-distilled student of `pipe`'s config (one branch per step) at each of
    `student_steps` DDIM steps, against the three-branch teacher at `steps`; both at the paper's scales."""
    cfg = pipe.config
    teacher = pipe if not cfg.guidance.distilled else build_pipeline(
        cfg.replace(guidance={"distilled": False}), pipe.device, pipe.dtype)
    student = build_pipeline(cfg.replace(guidance={"distilled": True}), pipe.device, pipe.dtype)
    rows = {f"teacher: ddim {steps}, 3 branches": bench_clip(teacher, steps, repeats=repeats)}
    for n in student_steps:
        rows[f"distilled: ddim {n}, 1 branch"] = bench_clip(student, n, repeats=repeats)
    return with_speedups(rows)


def bench_profile(pipe: LoopyPipeline, steps: int = 3, top: int = 15) -> dict:
    """The kernels (on CUDA; operators on the CPU) with the most time over one clip of `steps` steps, with shares.
    On CUDA only device-side events count: operator rows would count their kernels' time a second time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cfg, device = pipe.config, pipe.device
    audio = random_audio(cfg, cfg.frames_per_clip * 2)
    state = pipe.start_video(reference_image(cfg))
    options = GenerationOptions(steps=steps, **PAPER_GUIDANCE)
    pipe.run_clip(state, audio, 0, options)  # warm-up
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        pipe.run_clip(state, audio, 1, options)
        _sync(device)
    if cuda:  # kernels and copies; not the runtime's own markers ("Command Buffer Full")
        events = [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages()
                  if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0
                  and e.key != "Command Buffer Full"]
    else:
        events = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(t for _, t, _ in events)
    events.sort(key=lambda ev: ev[1], reverse=True)
    rows = [{"op": key, "ms": t / 1e3, "calls": n, "share": t / total} for key, t, n in events[:top]]
    return {"steps": steps, "time": "device (kernels)" if cuda else "cpu", "total_ms": total / 1e3, "ops": rows}


def bench_length(pipe: LoopyPipeline, steps: int) -> dict:
    cfg, device = pipe.config, pipe.device
    options = GenerationOptions(steps=steps)

    def video(clips: int) -> Callable[[], object]:
        audio = random_audio(cfg, clips * cfg.frames_per_clip)
        return lambda: [None for _ in pipe.clips(reference_image(cfg), audio, options)]

    one = timed(video(1), device, repeats=3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ten = timed(video(10), device, repeats=1, warmup=0)  # warm already: the one-clip runs did the same work
    out = {"one_clip_s": one, "ten_clips_s": ten, "ratio": ten / one}
    if device.type == "cuda":
        out["ten_clips_peak_vram_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def bench_optimized(config: LoopyConfig, device, dtype, steps: int, eager_s: float, **optimize) -> dict:
    """Seconds per clip with `LoopyPipeline.optimize(**optimize)` over `eager_s`; a compile's first clip apart."""
    pipe = build_pipeline(config, device, dtype, **optimize)
    first = timed(lambda: bench_clip(pipe, steps, repeats=1, warmup=0), device, repeats=1, warmup=0)
    clip = bench_clip(pipe, steps, repeats=3, warmup=0)
    seconds = clip["seconds_per_clip"]
    out = {"seconds_per_clip": seconds, "first_clip_s": first, "eager_s": eager_s, "speedup": eager_s / seconds}
    if "peak_vram_gb" in clip:
        out["peak_vram_gb"] = clip["peak_vram_gb"]
    return out


_RSS_SCRIPT = """
import resource, sys, json, numpy as np, torch
from loopy_core.bench import build_pipeline, random_audio, reference_image
from loopy_core.config import LoopyConfig
from loopy_core.pipeline import GenerationOptions
from loopy_core.video import VideoWriter
cfg = LoopyConfig.from_json(sys.argv[1]); clips = int(sys.argv[2]); steps = int(sys.argv[3])
pipe = build_pipeline(cfg, "cpu", torch.float32)
audio = random_audio(cfg, clips * cfg.frames_per_clip)
with VideoWriter(sys.argv[4], fps=cfg.fps) as w:
    for frames in pipe.clips(reference_image(cfg), audio, GenerationOptions(steps=steps)):
        w.write(frames)
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_memory(config: LoopyConfig, steps: int) -> dict:
    """Peak resident memory of a 1-clip and a 10-clip video streamed to an mp4, each in a fresh process (CPU)."""
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for clips in (1, 10):
            out = subprocess.run(
                [sys.executable, "-c", _RSS_SCRIPT, config.to_json(), str(clips), str(steps),
                 os.path.join(tmp, f"{clips}.mp4")],
                capture_output=True, text=True, check=True,
            )
            peaks[clips] = json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"]
    return {"one_clip_mb": peaks[1], "ten_clips_mb": peaks[10], "ratio": peaks[10] / peaks[1]}


def animatediff_unet(config: LoopyConfig):
    """diffusers' `UNetMotionModel` (SD1.5 UNet + AnimateDiff motion adapter) with the config's widths, and the
    adapter: the like-for-like counterpart of our denoiser."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    u = config.unet
    adapter = MotionAdapter(
        block_out_channels=tuple(u.block_out_channels), motion_layers_per_block=u.layers_per_block,
        motion_num_attention_heads=config.temporal.num_attention_heads, motion_norm_num_groups=u.norm_num_groups,
        motion_max_seq_length=config.temporal.intra_max_positions, use_motion_mid_block=True,
    )
    return UNetMotionModel.from_unet2d(UNet2DConditionModel(**u.diffusers_kwargs()), adapter), adapter


def bench_vs_diffusers(config: LoopyConfig, device, dtype, repeats: int = 5) -> dict:
    """One UNet evaluation of F frames: ours (full and AnimateDiff-equivalent) vs diffusers' UNetMotionModel."""
    from .models.denoiser import LoopyDenoiser

    u, F, s = config.unet, config.frames_per_clip, config.latent_size
    torch.manual_seed(0)
    with torch.device(device):
        ours = LoopyDenoiser(unet_config=asdict(u), temporal_config=asdict(config.temporal))
        theirs, _ = animatediff_unet(config)
    ours = ours.to(device=device, dtype=dtype).eval()
    theirs = theirs.to(device=device, dtype=dtype).eval()
    x = torch.randn(1, u.in_channels, F, s, s, device=device, dtype=dtype)
    tokens = torch.randn(1, F, config.num_motion_tokens, u.cross_attention_dim, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    with torch.no_grad():
        ref_net_feats = _fake_reference(ours, config, device, dtype)
        full = timed(lambda: ours(x, t, tokens, *ref_net_feats), device, repeats)
        like = timed(lambda: _intra_only(ours, x, t, tokens), device, repeats)
        ctx = tokens[0]  # diffusers folds frames into the batch: [F, N, D] context for [1, C, F, h, w]
        base = timed(lambda: theirs(x, t, encoder_hidden_states=ctx).sample, device, repeats)
    return {"ours_full_s": full, "ours_animatediff_equivalent_s": like, "diffusers_s": base,
            "speed_vs_diffusers": base / like, "full_loopy_overhead": full / like}


def bench_animatediff_pipeline(config: LoopyConfig, device, dtype, steps: int, ours_clip_s: float | None) -> dict:
    """Seconds per 12-frame clip of diffusers' own `AnimateDiffPipeline` (SD1.5 UNet + motion adapter of the same
    widths, the config's VAE, DDIM, classifier-free guidance = 2 branches, decode included), text embeddings given
    so no text encoder is needed: the end-to-end number users compare us with. Needs an `autoencoder_kl` VAE."""
    from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler

    u, F, res = config.unet, config.frames_per_clip, config.resolution
    torch.manual_seed(0)
    with torch.device(device):
        unet, adapter = animatediff_unet(config)
        vae = AutoencoderKL(**config.vae.diffusers_kwargs())
    pipe = AnimateDiffPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, motion_adapter=adapter,
                               scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False))
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    embeds = torch.randn(1, 77, u.cross_attention_dim, device=device, dtype=dtype)

    def clip():
        return pipe(prompt_embeds=embeds, negative_prompt_embeds=embeds, num_frames=F, height=res, width=res,
                    num_inference_steps=steps, guidance_scale=7.5, output_type="pt", decode_chunk_size=F).frames

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(clip, device, repeats=2)
    out = {"seconds_per_clip": seconds, "frames_per_second": F / seconds, "steps": steps, "branches": 2}
    if device.type == "cuda":
        out["peak_vram_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if ours_clip_s is not None:
        out["ours_clip_s"] = ours_clip_s
        out["ours_over_animatediff"] = ours_clip_s / seconds
    return out


def _fake_reference(denoiser, config, device, dtype):
    """Reference tokens and motion-frame features of the right shapes (as the ReferenceNet would give)."""
    from .models.reference_net import ReferenceNet

    with torch.device(device):
        ref = ReferenceNet(unet_config=asdict(config.unet)).to(dtype=dtype).eval()
    C, s, M = config.latent_channels, config.latent_size, config.num_motion_frames
    return ref(torch.randn(1, C, s, s, device=device, dtype=dtype),
               torch.randn(1, C, M, s, s, device=device, dtype=dtype))


def _intra_only(denoiser, x, t, tokens):
    """Our denoiser doing AnimateDiff's work: spatial UNet + intra-clip layers, no reference, no inter-clip."""
    from einops import rearrange

    from .models.unet import unet_forward

    B, C, F, h, w = x.shape

    def intra(part, i, j, hidden):
        return denoiser.intra_clip.get(part, i, j)(hidden, F)

    out = unet_forward(denoiser.unet, rearrange(x, "b c f h w -> (b f) c h w"), t.repeat_interleave(F),
                       rearrange(tokens, "b f n d -> (b f) n d"), after_layer=intra)
    return rearrange(out, "(b f) c h w -> b c f h w", f=F)


def bench_breakdown(pipe: LoopyPipeline, steps: int, encoder=None) -> dict:
    """Share of one clip's time per stage (audio features per clip of audio, ReferenceNet, denoiser, decode, write)."""
    from .video import VideoWriter

    cfg, device = pipe.config, pipe.device
    audio = random_audio(cfg, cfg.frames_per_clip)
    wave = (0.1 * np.random.default_rng(0).standard_normal(int(cfg.frames_per_clip / cfg.fps * 16000))).astype(
        np.float32)
    state = pipe.start_video(reference_image(cfg))
    m = pipe.model
    motion = m.tsm(None, state.ref_latents)
    times = {}
    if cfg.audio.kind == "logmel" or encoder is not None:
        saved = pipe.audio_encoder
        pipe.audio_encoder = encoder
        times["audio_features"] = timed(lambda: pipe.encode_audio(wave, 16000), device)
        pipe.audio_encoder = saved
    with torch.no_grad():
        times["reference_net"] = timed(lambda: m.reference_net(None, motion), device)
        clip = timed(lambda: pipe.run_clip(state, audio, 0, GenerationOptions(steps=steps)), device)
        lat = torch.randn(cfg.frames_per_clip, cfg.latent_channels, cfg.latent_size, cfg.latent_size,
                          device=device, dtype=pipe.dtype)
        times["vae_decode"] = timed(lambda: m.vae.decode(lat), device)
    frames = torch.rand(cfg.frames_per_clip, cfg.resolution, cfg.resolution, 3)
    with tempfile.TemporaryDirectory() as tmp:
        def write():
            with VideoWriter(os.path.join(tmp, "x.mp4"), fps=cfg.fps) as w:
                w.write(frames)
        times["video_writing"] = timed(write, torch.device("cpu"))
    times["denoiser"] = max(clip - times["reference_net"] - times["vae_decode"], 0.0)
    total = sum(times.values())
    return {"seconds": times, "shares": {k: v / total for k, v in times.items()}}


def run(config: LoopyConfig, device: str, dtype: torch.dtype, steps: int, what: list[str],
        on_part: Callable[[dict], None] | None = None) -> dict:
    """The parts in `what`, in a fixed order; `on_part(results)` after each (e.g. to save partial results)."""
    device = torch.device(device)
    results: dict = {"config": config.name, "device": str(device), "dtype": str(dtype), "steps": steps}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    pipe = build_pipeline(config, device, dtype)

    def part(name, fn, wanted=None):
        if name in what if wanted is None else wanted:
            results[name] = fn()
            if on_part is not None:
                on_part(results)

    part("clip", lambda: bench_clip(pipe, steps))
    part("breakdown", lambda: bench_breakdown(pipe, steps))
    part("length", lambda: bench_length(pipe, steps))
    if device.type == "cpu":
        part("memory", lambda: bench_memory(config, steps), wanted="length" in what)
    part("diffusers", lambda: bench_vs_diffusers(config, device, dtype))
    part("animatediff", lambda: bench_animatediff_pipeline(
        config, device, dtype, steps, results["clip"]["seconds_per_clip"] if "clip" in results else None),
        wanted="animatediff" in what and config.vae.kind == "autoencoder_kl")

    def eager() -> float:
        return results["clip"]["seconds_per_clip"] if "clip" in results else bench_clip(pipe, steps)["seconds_per_clip"]

    part("sampling", lambda: bench_sampling(pipe))
    part("distilled", lambda: bench_distilled(pipe, steps))
    part("profile", lambda: bench_profile(pipe))
    part("tsm", lambda: bench_tsm(config, device, dtype, steps))
    part("channels_last", lambda: bench_optimized(config, device, dtype, steps, eager(), channels_last=True))
    part("compile", lambda: bench_optimized(config, device, dtype, steps, eager(), compile=True))
    part("compile_denoiser", lambda: bench_optimized(config, device, dtype, steps, eager(), compile=True,
                                                     compile_scope="denoiser"))
    part("compile_cudagraphs", lambda: bench_optimized(config, device, dtype, steps, eager(), compile=True,
                                                       compile_scope="denoiser", compile_mode="reduce-overhead"))
    return results


def format_table(results: dict) -> str:
    rows = [f"loopy bench: config {results['config']} on {results.get('gpu', results['device'])}, "
            f"{results['dtype']}, {results['steps']} steps"]

    def row(name, value, target=""):
        rows.append(f"  {name:<44} {value:>12}  {target}")

    if "clip" in results:
        c = results["clip"]
        row("seconds per 12-frame clip", f"{c['seconds_per_clip']:.3f}")
        row("frames per second", f"{c['frames_per_second']:.2f}")
        if "peak_vram_gb" in c:
            row("peak VRAM (GB)", f"{c['peak_vram_gb']:.2f}")
    if "tsm" in results:
        row("TSM 124 frames / 4 motion frames (time)", f"{results['tsm']['ratio']:.3f}x", "target <= 1.15x")
    if "length" in results:
        row("10 clips / 1 clip (time)", f"{results['length']['ratio']:.2f}x", "target <= 10.5x")
        if "ten_clips_peak_vram_gb" in results["length"]:
            row("peak VRAM over 10 clips (GB)", f"{results['length']['ten_clips_peak_vram_gb']:.2f}")
    if "memory" in results:
        row("10 clips / 1 clip (peak RSS, streaming)", f"{results['memory']['ratio']:.3f}x", "target <= 1.05x")
    if "diffusers" in results:
        d = results["diffusers"]
        row("diffusers UNetMotionModel / ours (speed)", f"{d['speed_vs_diffusers']:.2f}x", "target >= 1.0x")
        row("full Loopy denoiser / AnimateDiff-equivalent", f"{d['full_loopy_overhead']:.2f}x")
    if "animatediff" in results:
        a = results["animatediff"]
        row("AnimateDiffPipeline s/clip (2 branches)", f"{a['seconds_per_clip']:.3f}")
        if "peak_vram_gb" in a:
            row("AnimateDiffPipeline peak VRAM (GB)", f"{a['peak_vram_gb']:.2f}")
        if "ours_over_animatediff" in a:
            row("ours (3 branches) / AnimateDiffPipeline", f"{a['ours_over_animatediff']:.2f}x")
    for name in ("channels_last", "compile", "compile_denoiser", "compile_cudagraphs"):
        if name in results:
            o = results[name]
            vram = f", peak {o['peak_vram_gb']:.2f} GB" if "peak_vram_gb" in o else ""
            row(f"{name.replace('_', '-')}: eager / optimized (speed)", f"{o['speedup']:.2f}x",
                f"first clip {o['first_clip_s']:.1f} s{vram}")
    for part in ("sampling", "distilled"):
        for name, r in results.get(part, {}).items():
            row(f"{name[:36]}: s/clip", f"{r['seconds_per_clip']:.3f}", f"{r['speedup']:.2f}x")
    if "breakdown" in results:
        for k, v in results["breakdown"]["shares"].items():
            row(f"share: {k}", f"{100 * v:.1f}%")
    if "profile" in results:
        for r in results["profile"]["ops"][:10]:
            row(f"op: {r['op'][:38]}", f"{100 * r['share']:.1f}%", f"{r['calls']} calls")
    return "\n".join(rows)
