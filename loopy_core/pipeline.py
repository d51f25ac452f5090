"""`LoopyPipeline`: portrait + speech -> talking video, clip after clip. The one generation loop of the package.

The ComfyUI nodes, the CLI (`loopy generate`, `loopy demo`), evaluation and training's validation all call this
file; nothing else runs the denoising loop. Per video (DESIGN.md Sec. 4):
1. the reference image is encoded once (VAE latents + ReferenceNet reference tokens, reused by every clip);
2. the audio features are computed once (`encode_audio`);
and per clip of F frames (`run_clip`):
3. TSM over the bounded history of generated latents -> M motion-frame latents (video start padded as in training),
   their lowest frequencies pulled towards the reference's by `history_anchor` (`anchor_history`);
4. ReferenceNet once on the motion frames -> motion-frame features for the inter-clip layers;
5. audio-to-latents once -> motion tokens with and without audio;
6. `steps` scheduler steps; each runs the three guidance branches as one batched forward (or one after another
   with `sequential_guidance`) and combines them as `guidance` says; a branch whose weight is zero at the current
   scales (`guidance.branch_weights`) is skipped, and outside `guidance_interval` only the full branch runs;
   a guidance-distilled model (`config.guidance.distilled`) runs the full branch alone at every step and is given
   the step's scales (1 outside `guidance_interval`) as inputs instead;
7. the clip's latents join the history (cropped to the TSM's span) and are decoded in slices.
Frames are handed out clip by clip, so a caller can stream them to a file. The last clip is trimmed so a video has
`ceil(duration * fps)` frames. Noise comes from a CPU generator seeded once per video: same seed, same frames.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import diffusers
import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from . import guidance
from .audio import AudioFeatures, extract_audio_features
from .image import prepare_reference, to_image_tensor
from .models.temporal import TemporalTransformer3D

logger = logging.getLogger(__name__)

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "pndm": "PNDMScheduler",
    "heun": "HeunDiscreteScheduler",
}

COMPILE_SCOPES = ("blocks", "denoiser")
REPEATED_BLOCKS = (ResnetBlock2D, Transformer2DModel, TemporalTransformer3D)  # what "blocks" compiles one by one
BLOCK_RECOMPILE_LIMIT = 64


class GenerationCancelled(Exception):
    """Raised between steps when the caller's `cancel()` returns True."""


class LoopyOutOfMemory(RuntimeError):
    """The device ran out of memory; the message lists the options that lower memory."""


def out_of_memory(error: BaseException, device: torch.device, dtype: torch.dtype, clip: int) -> LoopyOutOfMemory:
    """Release what the failed clip held and explain how to need less memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    tips = ["run the guidance branches one after another (--low-memory / sequential_guidance)",
            "decode fewer frames at once (decode_slice_size)"]
    if dtype == torch.float32:
        tips.append("use half precision (--dtype fp16 or bf16)")
    return LoopyOutOfMemory(f"out of memory on {device} at clip {clip} ({str(error).splitlines()[0][:200]}); to lower "
                            "memory: " + "; ".join(tips))


def make_scheduler(name: str, noise) -> Any:
    """A diffusers scheduler by short name (`SCHEDULERS`) or class name, on the model's noise schedule."""
    class_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(diffusers, class_name, None)
    if cls is None or not class_name.endswith("Scheduler"):
        raise ValueError(f"Unknown scheduler {name!r}; use one of {sorted(SCHEDULERS)} or a diffusers class name")
    base = dict(noise.scheduler_kwargs(), clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in base.items() if k in accepted})


def outside_distilled_range(config, scales: list[tuple[float, float]]) -> list[str]:
    """What a distilled model is asked for, of the steps' (ref, audio) `scales`, beyond the scales it was trained
    on (there it extrapolates)."""
    found = []
    for name, values, (lo, hi) in (("ref", [r for r, _ in scales], config.distilled_ref_range),
                                   ("audio", [a for _, a in scales], config.distilled_audio_range)):
        if min(values) < lo or max(values) > hi:
            found.append(f"{name} guidance {min(values):g}..{max(values):g} is outside the range {lo:g}..{hi:g} this "
                         "distilled model was trained on; its output there is an extrapolation")
    return found


@dataclass
class GenerationOptions:
    """Sampling options; `None` scales mean the model's recommended ones (its `config.guidance`)."""

    steps: int | None = None  # None: the model's recommended steps (paper: 25)
    scheduler: str = "ddim"
    audio_guidance_scale: guidance.Scale | None = None
    ref_guidance_scale: guidance.Scale | None = None
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # fractions of the steps with guidance; elsewhere one branch
    seed: int = 0
    motion_stats: Any = None  # [2] head-movement and expression variance: motion-intensity control
    sequential_guidance: bool = False  # lower memory: three forwards per step instead of one of batch 3
    decode_slice_size: int = 8
    # 0..1: share of the motion frames' coarse appearance (2x2-pooled latents) replaced by the reference's before
    # each clip, against the generated history drifting away from the photo over many clips; 0 = off
    history_anchor: float = 0.0

    def check(self) -> None:
        if self.steps is not None and not 1 <= int(self.steps) <= 1000:
            raise ValueError(f"steps must be in 1..1000, got {self.steps}")
        self.guidance_interval = guidance.parse_interval(self.guidance_interval)
        if self.decode_slice_size < 1:
            raise ValueError(f"decode_slice_size must be >= 1, got {self.decode_slice_size}")
        if not 0.0 <= float(self.history_anchor) <= 1.0:
            raise ValueError(f"history_anchor must be in 0..1 (0 = off), got {self.history_anchor}")


def anchor_history(motion: torch.Tensor, ref: torch.Tensor, strength: float, grid: int = 2) -> torch.Tensor:
    """Motion frames `[B, C, M, h, w]` whose coarse appearance (each latent channel pooled to `grid` x `grid`,
    upsampled back) moves `strength` of the way to the reference's `[B, C, h, w]`; finer detail (the face's pose,
    mouth and eyes) stays the history's. 0 returns `motion` unchanged."""
    if strength <= 0:
        return motion
    B, C, M, h, w = motion.shape
    frames = motion.transpose(1, 2).reshape(B * M, C, h, w)

    def coarse(x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float(), grid)
        return torch.nn.functional.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=False)

    target = coarse(ref).repeat_interleave(M, dim=0)
    frames = frames + (strength * (target - coarse(frames))).to(frames.dtype)
    return frames.reshape(B, M, C, h, w).transpose(1, 2)


@dataclass
class VideoState:
    """What carries from clip to clip: the reference's encodings, the bounded history and the noise generator."""

    ref_latents: torch.Tensor  # [1, C, h, w]
    ref_tokens: dict[str, torch.Tensor]  # ReferenceNet attn1 inputs of the reference
    generator: torch.Generator
    history: torch.Tensor | None = None  # [1, C, T, h, w], T <= TSM span


class LoopyPipeline:
    def __init__(self, model, audio_encoder=None):
        self.model = model.eval()
        self.audio_encoder = audio_encoder
        self.config = model.config
        self._warned: set[str] = set()

    def optimize(self, channels_last: bool = False, compile: bool = False, compile_scope: str = "blocks",
                 compile_mode: str | None = None, compile_backend: str = "inductor") -> "LoopyPipeline":
        """Optional speed-ups, in place: channels-last convolution weights (faster cuDNN kernels on some GPUs) and
        `torch.compile` of the denoiser, the one network that runs at every step (the ReferenceNet runs once per
        clip: compiling it would cost more time than it saves).

        `compile_scope` "blocks" compiles each ResNet, transformer and temporal block on its own: blocks of one
        kind and shape share one compiled graph, so the first clip compiles in a fraction of the time; "denoiser"
        compiles the whole denoiser as one graph (fusion across blocks too, at minutes of compiling). The first clip
        pays the compile time; a new branch count or resolution recompiles. Outputs match the eager model within
        the dtype's rounding."""
        if compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"compile_scope must be one of {COMPILE_SCOPES}, got {compile_scope!r}")
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if compile:
            kwargs = dict(mode=compile_mode, backend=compile_backend, dynamic=False)
            if compile_scope == "denoiser":
                self.model.denoiser.compile(**kwargs)
            else:
                # one graph per block kind and input shape: the sd15 denoiser has 14 ResNet shapes per branch count,
                # past dynamo's default limit of 8 per function, beyond which it would run the rest eagerly
                dynamo = torch._dynamo.config
                limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # torch < 2.7
                setattr(dynamo, limit, max(getattr(dynamo, limit), BLOCK_RECOMPILE_LIMIT))
                for module in self.model.denoiser.modules():
                    if isinstance(module, REPEATED_BLOCKS):
                        module.compile(**kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.denoiser.parameters()).dtype

    # ---- 1. audio
    def encode_audio(
        self, waveform, sample_rate: int, fps: float | None = None, max_seconds=None, streaming: bool = False
    ) -> AudioFeatures:
        """Audio features once per video; `streaming` computes them clip by clip instead (flat memory)."""
        if self.audio_encoder is None and self.config.audio.kind == "wav2vec2":
            raise ValueError("this pipeline has no audio encoder; load one (wav2vec2 folder) or pass audio features")
        return extract_audio_features(
            waveform, sample_rate, fps or self.config.fps, self.audio_encoder, self.config.audio, max_seconds,
            streaming=streaming,
        )

    # ---- 2. reference and history
    @torch.no_grad()
    def start_video(self, image, seed: int = 0, frames=None) -> VideoState:
        """Encode the reference once; `frames` (IMAGE `[T, H, W, 3]`) continue an earlier video."""
        pixels = prepare_reference(image, self.config.resolution).to(self.device, self.dtype)
        ref_latents = self.model.vae.encode(pixels).to(self.dtype)
        ref_tokens, _ = self.model.reference_net(ref_latents, None)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        state = VideoState(ref_latents=ref_latents, ref_tokens=ref_tokens, generator=generator)
        if frames is not None:
            state.history = self.encode_frames(frames)
        return state

    @torch.no_grad()
    def encode_frames(self, frames) -> torch.Tensor:
        """IMAGE frames `[T, H, W, 3]` (0..1) -> history latents `[1, C, T', h, w]`, the last TSM span only."""
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"motion frames must be an IMAGE batch [T, H, W, 3], got {tuple(frames.shape)}")
        frames = frames[-self.model.tsm.span :]
        pixels = torch.cat([prepare_reference(f, self.config.resolution) for f in frames])
        latents = self.model.vae.encode(pixels.to(self.device, self.dtype)).to(self.dtype)
        return latents.permute(1, 0, 2, 3)[None]  # [1, C, T, h, w]

    # ---- 3. one clip
    @torch.no_grad()
    def run_clip(
        self,
        state: VideoState,
        audio: AudioFeatures,
        clip_index: int,
        options: GenerationOptions | None = None,
        callback: Callable[[dict], None] | None = None,
        cancel: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Generate clip `clip_index` of the video; returns its frames as IMAGE `[n, H, W, 3]` (n <= F, the last
        clip trimmed to the audio) and appends their latents to `state.history`. Out of memory raises
        `LoopyOutOfMemory` with the options that lower memory."""
        try:
            return self._run_clip(state, audio, clip_index, options, callback, cancel)
        except torch.OutOfMemoryError as e:
            raise out_of_memory(e, self.device, self.dtype, clip_index) from None

    def _run_clip(self, state, audio, clip_index, options, callback, cancel) -> torch.Tensor:
        options = options or GenerationOptions()
        options.check()
        model, cfg = self.model, self.config
        device, dtype = self.device, self.dtype
        F_ = cfg.frames_per_clip
        num_clips = math.ceil(audio.num_frames / F_)
        if not 0 <= clip_index < num_clips:
            raise ValueError(f"clip_index {clip_index} is outside 0..{num_clips - 1} for {audio.num_frames} frames")
        start = clip_index * F_
        keep = min(F_, audio.num_frames - start)

        # 1. TSM over the history -> motion frames; ReferenceNet on them
        motion = model.tsm(state.history, state.ref_latents)  # [1, C, M, h, w]
        if state.history is not None:
            motion = anchor_history(motion, state.ref_latents, float(options.history_anchor))
        _, motion_feats = model.reference_net(None, motion)
        # 2. motion tokens for this clip's audio windows (edge frames repeated past the end)
        feats = audio.frames(start, F_)[None].to(device, dtype)  # [1, F, 2w+1, L, D]
        stats = None
        if options.motion_stats is not None:
            stats = torch.as_tensor(options.motion_stats, dtype=dtype, device=device).reshape(1, -1)
        with_audio, no_audio = model.motion_tokens(feats, stats)
        # 3. the three guidance branches (BRANCHES order: uncond, ref, full)
        zero_ref = {k: torch.zeros_like(v) for k, v in state.ref_tokens.items()}
        branches = [(zero_ref, no_audio), (state.ref_tokens, no_audio), (state.ref_tokens, with_audio)]
        audio_scale = cfg.guidance.audio_scale if options.audio_guidance_scale is None else options.audio_guidance_scale
        ref_scale = cfg.guidance.ref_scale if options.ref_guidance_scale is None else options.ref_guidance_scale
        batches: dict[tuple[int, ...], tuple] = {}  # which branches run together -> their batched conditions
        distilled = cfg.guidance.distilled

        def predict(x, t, weights, scales=None):
            """The guided prediction; branches with zero weight are skipped, the rest run as one batch. `scales`
            `[1, 2]` go to a distilled denoiser, whose weights are then those of the full branch alone."""
            active = tuple(i for i, w in enumerate(weights) if w != 0.0)
            groups = [(i,) for i in active] if options.sequential_guidance else [active]
            outs = []
            for group in groups:
                if group not in batches:  # the reference's keys/values are projected once per clip, not per step
                    n = len(group)
                    ref = {k: torch.cat([branches[i][0][k] for i in group]) for k in state.ref_tokens}
                    batches[group] = (
                        torch.cat([branches[i][1] for i in group]),
                        model.denoiser.reference_kv(ref),
                        {k: v.repeat(n, 1, 1, 1) for k, v in motion_feats.items()} if n > 1 else motion_feats,
                    )
                tokens, ref_kv, feats = batches[group]
                extra = {} if scales is None else {"guidance_scales": scales}
                out = model.denoiser(x.repeat(len(group), 1, 1, 1, 1) if len(group) > 1 else x, t, tokens, None, feats,
                                     ref_kv=ref_kv, **extra)
                outs.extend(out.float().chunk(len(group)))
            return sum(weights[i] * out for i, out in zip(active, outs))

        # 4. denoising loop
        scheduler = make_scheduler(options.scheduler, cfg.noise)
        # the scheduler's arithmetic stays on the CPU (indexing its CPU tables with a device timestep would stop the
        # host for the GPU every step); the denoiser gets the same timesteps moved to the device once
        scheduler.set_timesteps(int(options.steps or cfg.guidance.steps))
        timesteps = scheduler.timesteps
        model_timesteps = timesteps.to(device)
        shape = (1, cfg.latent_channels, F_, cfg.latent_size, cfg.latent_size)
        latents = torch.randn(shape, generator=state.generator, dtype=torch.float32).to(device)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = {"generator": state.generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        n = len(timesteps)
        # (ref, audio) at each step: the schedules inside the guidance interval, 1 outside it
        scales = [(guidance.scale_at(ref_scale, i, n), guidance.scale_at(audio_scale, i, n))
                  if guidance.in_interval(i, n, options.guidance_interval) else (1.0, 1.0) for i in range(n)]
        if distilled:
            scale_inputs = torch.tensor(scales, device=device)[:, None]  # [steps, 1, 2]: one copy per clip
            for message in outside_distilled_range(cfg.guidance, scales):
                if message not in self._warned:  # once per pipeline, not once per clip
                    self._warned.add(message)
                    logger.warning(message)
        for i, t in enumerate(timesteps):
            if cancel is not None and cancel():
                raise GenerationCancelled(f"cancelled at clip {clip_index}, step {i}")
            x = scheduler.scale_model_input(latents, t).to(dtype)
            if distilled:
                pred = predict(x, model_timesteps[i], (0.0, 0.0, 1.0), scale_inputs[i])
            else:
                pred = predict(x, model_timesteps[i], guidance.branch_weights(*scales[i]))
            latents = scheduler.step(pred.float(), t, latents, **step_kwargs).prev_sample
            if callback is not None:
                callback({"clip": clip_index, "clips": num_clips, "step": i + 1, "steps": len(timesteps)})

        # 5. history (bounded by the TSM's span) and sliced decode
        latents = latents[:, :, :keep].to(dtype)
        history = latents if state.history is None else torch.cat([state.history, latents], dim=2)
        state.history = history[:, :, -model.tsm.span :]
        flat = latents[0].permute(1, 0, 2, 3)  # [n, C, h, w]
        pixels = model.vae.decode(flat, slice_size=options.decode_slice_size)
        return to_image_tensor(pixels)

    # ---- 4. whole video
    def clips(
        self,
        image,
        audio: AudioFeatures,
        options: GenerationOptions | None = None,
        callback: Callable[[dict], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        state: VideoState | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield each clip's frames (IMAGE `[n, H, W, 3]`) as soon as it is done."""
        options = options or GenerationOptions()
        options.check()
        state = state or self.start_video(image, options.seed)
        for k in range(math.ceil(audio.num_frames / self.config.frames_per_clip)):
            yield self.run_clip(state, audio, k, options, callback, cancel)

    def __call__(self, image, audio: AudioFeatures, options: GenerationOptions | None = None, **kwargs) -> torch.Tensor:
        """All frames of the video, IMAGE `[ceil(duration * fps), H, W, 3]`."""
        return torch.cat(list(self.clips(image, audio, options, **kwargs)))
