"""Training configuration: a dataclass read from YAML, with `key=value` overrides from the command line
(`section.key=value` inside a section: `distill.teacher=PATH`, `model_changes.a2l.keep_level=true`).

The model itself (architecture, noise schedule, prediction type, guidance scales) is defined by the Loopy
checkpoint the run starts from (`loopy init`), so one source of truth travels from training to inference; this
file holds only how to train it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

COMPONENTS = ("reference_net", "denoiser_spatial", "inter_clip", "intra_clip", "audio_to_latents")
STAGE_DEFAULTS = {
    1: ["reference_net", "denoiser_spatial"],  # image pairs, no temporal layers, no audio
    2: list(COMPONENTS),  # video: temporal layers, TSM and audio-to-latents join
}


@dataclass
class DistillConfig:
    """Guidance distillation: with a `teacher`, the student (`model`, by default the teacher's own weights) learns
    to give in ONE forward with every condition the teacher's guided prediction
    `guidance.combine(e_uncond, e_ref, e_full, ref_scale, audio_scale)`, the two scales being denoiser inputs drawn
    per sample, uniformly in the ranges. The default ranges hold the paper's 5 (audio) and 3 (reference) with room on
    both sides for schedules and user taste, and start at 1, no guidance: the scale the pipeline uses outside its
    guidance interval. A model with other recommended scales (the demo: 1.5 and 1) sets its own ranges."""

    teacher: str = ""  # a trained, not distilled, Loopy checkpoint; "" = no distillation
    audio_scale_range: list[float] = field(default_factory=lambda: [1.0, 8.0])
    ref_scale_range: list[float] = field(default_factory=lambda: [1.0, 5.0])

    def __post_init__(self):
        for name in ("audio_scale_range", "ref_scale_range"):
            lo_hi = getattr(self, name)
            if not isinstance(lo_hi, (list, tuple)) or len(lo_hi) != 2 or not 0 <= float(lo_hi[0]) <= float(lo_hi[1]):
                raise ValueError(f"distill.{name} must be [low, high] with 0 <= low <= high, got {lo_hi!r}")
            setattr(self, name, [float(v) for v in lo_hi])


@dataclass
class TrainConfig:
    # what and where
    model: str = ""  # starting Loopy checkpoint (.safetensors) from `loopy init` or an earlier stage
    # changes to the starting checkpoint's model config (`LoopyConfig.replace` form, e.g. {a2l: {keep_level: true}}):
    # parts the change adds start from their initialisation, parts it removes are dropped (ablations, new paths)
    model_changes: dict[str, Any] = field(default_factory=dict)
    data: str = ""  # DATA_DIR written by `python -m training.preprocess`
    output_dir: str = "runs/loopy"
    stage: int = 2
    trainable: list[str] | None = None  # default: STAGE_DEFAULTS[stage]
    seed: int = 0
    # optimisation (paper: AdamW, lr 1e-5, batch 24)
    learning_rate: float = 1e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    lr_warmup_steps: int = 0
    max_train_steps: int = 1000
    max_train_minutes: float = 0.0  # > 0: stop (with a checkpoint) once this much wall-clock time has passed
    train_batch_size: int = 1  # per device
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False
    use_ema: bool = False
    ema_decay: float = 0.999
    num_workers: int = 0
    # diffusion objective (the target and schedule come from the model's noise config)
    timestep_sampling: str = "uniform"  # "uniform" | "high_noise_mix"
    high_noise_fraction: float = 0.5  # high_noise_mix: this share of samples draws t from the top of the schedule
    high_noise_min: float = 0.7  # ... from [high_noise_min * T, T)
    region_loss_weight: float = 0.0  # loss weight 1 + w * (normalised |target - reference| per latent pixel)
    mouth_loss_weight: float = 0.0  # loss weight 1 + w inside the mouth box (shards' `mouth`, one latent pixel margin)
    # condition dropout (one random draw per sample) trains the guidance branches
    p_drop_ref: float = 0.05
    p_drop_audio: float = 0.1
    p_drop_both: float = 0.05
    p_drop_motion_frames: float = 0.05
    # long-video robustness: motion frames get Gaussian noise of a std drawn per sample from [0, motion_noise_max]
    # (in latent units), so the model learns not to copy the flaws of its own generated history; 0 = off
    motion_noise_max: float = 0.0
    # reference path: motion frames get a random colour and lighting change (gain and smooth offset of up to this
    # much, latent units, per sample; the reference and the target keep theirs), so the model learns to take the
    # appearance from the reference and only the motion from the motion frames; 0 = off
    motion_appearance_max: float = 0.0
    # reference path: one random colour and lighting change of up to this much per sample on all its frames alike
    # (reference, motion frames, target), so the same videos show many more appearances; 0 = off
    appearance_aug_max: float = 0.0
    # long-video robustness: this share of samples sees the clip before its target, inside the motion frames, as the
    # model's own x0 estimate of it from a noised copy (timestep uniform), so it learns to continue from its own
    # output, flaws included, towards the truth; 0 = off
    self_history_prob: float = 0.0
    # checkpoints, logs, validation
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 3
    log_every: int = 10
    report_to: str = "tensorboard"  # "tensorboard" | "none"
    validation_steps: int = 0  # 0: no validation
    validation_seconds: float = 2.0
    validation_steps_per_clip: int = 10
    # guidance distillation (`configs/*_distill.yaml`): a one-branch student of a three-branch teacher
    distill: DistillConfig = field(default_factory=DistillConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with the run

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.trainable is None:
            self.trainable = list(STAGE_DEFAULTS[self.stage])
        unknown = sorted(set(self.trainable) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown trainable component(s) {unknown}; choose from {list(COMPONENTS)}")
        if self.timestep_sampling not in ("uniform", "high_noise_mix"):
            raise ValueError(
                f"timestep_sampling must be 'uniform' or 'high_noise_mix', got {self.timestep_sampling!r}"
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        total = self.p_drop_ref + self.p_drop_audio + self.p_drop_both
        if min(self.p_drop_ref, self.p_drop_audio, self.p_drop_both, self.p_drop_motion_frames) < 0 or total > 1:
            raise ValueError("dropout probabilities must be >= 0 and p_drop_ref + p_drop_audio + p_drop_both <= 1")
        if self.motion_noise_max < 0:
            raise ValueError(f"motion_noise_max must be >= 0 (0 = off), got {self.motion_noise_max}")
        if self.motion_appearance_max < 0:
            raise ValueError(f"motion_appearance_max must be >= 0 (0 = off), got {self.motion_appearance_max}")
        if self.appearance_aug_max < 0:
            raise ValueError(f"appearance_aug_max must be >= 0 (0 = off), got {self.appearance_aug_max}")
        if not 0 <= self.self_history_prob <= 1:
            raise ValueError(f"self_history_prob must be in [0, 1] (0 = off), got {self.self_history_prob}")
        if not isinstance(self.model_changes, dict):
            raise ValueError(f"model_changes must be a mapping of config sections, got {self.model_changes!r}")
        if self.self_history_prob > 0 and self.stage != 2:
            raise ValueError("self_history_prob needs stage 2 (stage 1 has no motion frames); set it to 0")
        if self.distill is None or isinstance(self.distill, dict):  # from YAML
            known = {f.name for f in dataclasses.fields(DistillConfig)}
            unknown = sorted(set(self.distill or {}) - known)
            if unknown:
                raise ValueError(f"unknown distill option(s) {unknown}; known: {sorted(known)}")
            self.distill = DistillConfig(**(self.distill or {}))
        if self.distill.teacher and self.stage != 2:
            raise ValueError("distillation needs stage 2 (the student learns the video model's guided prediction)")
        if self.distill.teacher and "denoiser_spatial" not in self.trainable:
            raise ValueError("distillation trains the guidance-scale embedding with denoiser_spatial: add it to "
                             "`trainable`")

    @classmethod
    def load(cls, path: str | None, overrides: list[str] = ()) -> TrainConfig:
        data: dict[str, Any] = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"training config {p.name!r} not found in {str(p.parent.resolve())!r}")
            data = yaml.safe_load(p.read_text()) or {}
            if not isinstance(data, dict):
                raise ValueError(f"{path}: a training config must be a YAML mapping")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key=value")
            key, value = (x.strip() for x in item.split("=", 1))
            section, *path = key.split(".")
            node, leaf, kind = data, section, types.get(section)
            if path:  # `section.key=value`: one option inside a mapping
                if section not in SECTIONS:
                    raise ValueError(f"override {item!r}: only {sorted(SECTIONS)} take section.key=value")
                node = data.get(section) if isinstance(data.get(section), dict) else {}
                data[section] = node
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                leaf = path[-1]
                kind = SECTIONS[section].get(leaf) if len(path) == 1 else None
            # a str option keeps the text as typed (YAML would turn `no` into False)
            node[leaf] = value if kind == "str" else yaml.safe_load(value)
        names = set(types)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        for key, value in data.items():
            # YAML reads `2e-4` (no dot) as text; numbers are numbers whichever way they were written
            kind = {"float": float, "int": int}.get(types[key])
            if kind is not None and isinstance(value, str):
                try:
                    data[key] = kind(value)
                except ValueError:
                    raise ValueError(f"training option {key}={value!r} must be a number ({types[key]})") from None
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# the options that are mappings, and the types of their own options where they have fixed ones
SECTIONS = {"distill": {f.name: f.type for f in dataclasses.fields(DistillConfig)}, "model_changes": {}, "extra": {}}
