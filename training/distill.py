"""Guidance distillation's models: the frozen three-branch teacher and the one-branch student that starts from it.

    python -m training.train --config training/configs/synthetic_tiny_distill.yaml distill.teacher=TEACHER.safetensors

The student is a normal Loopy checkpoint whose config says `guidance.distilled: true` (with the scale ranges it is
trained on), so its denoiser has the guidance-scale embedding (zero-initialised: at step 0 it is the teacher's
full-conditions branch) and every sampler runs it one branch per step. What the objective does with the two is in
`objective.LoopyObjective.guided_target`. A run's checkpoints record the teacher (`distill_teacher` metadata), and
`--resume` refuses to continue with another teacher or none.
"""

from __future__ import annotations

from pathlib import Path

from loopy_core.checkpoint import load_checkpoint, read_config, read_metadata
from loopy_core.config import LoopyConfig

TEACHER_KEY = "distill_teacher"  # checkpoint metadata: the resolved path of the teacher a student was distilled from


def student_changes(cfg) -> dict:
    """The `load_checkpoint(config_changes=...)` that turns the starting model into a student: the run's
    `model_changes` plus the guidance section's distillation fields."""
    changes = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.model_changes.items()}
    changes["guidance"] = {**changes.get("guidance", {}), "distilled": True,
                           "distilled_audio_range": list(cfg.distill.audio_scale_range),
                           "distilled_ref_range": list(cfg.distill.ref_scale_range)}
    return changes


def config_differences(a: LoopyConfig, b: LoopyConfig, ignore=("name", "guidance")) -> list[str]:
    """Dotted config fields where `a` and `b` differ, with both values ("unet.block_out_channels: [32, 64] vs ...")."""

    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    fa, fb = dict(flat(a.to_dict())), dict(flat(b.to_dict()))
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if k.split(".")[0] not in ignore and fa.get(k) != fb.get(k)]


def load_teacher(cfg):
    """The frozen teacher `cfg.distill.teacher`, checked against the student it trains: a Loopy checkpoint, not
    distilled itself, and of the student's architecture apart from the guidance section."""
    path = Path(cfg.distill.teacher)
    if not path.is_file():
        raise FileNotFoundError(f"distill.teacher {path.name!r} not found in {str(path.parent.resolve())!r}: set "
                                "distill.teacher=PATH to the trained Loopy checkpoint (.safetensors) to distil")
    teacher_config = read_config(path)
    if teacher_config.guidance.distilled:
        raise ValueError(f"distill.teacher {str(path)!r} is itself guidance-distilled (one branch); distil from the "
                         "three-branch model it was made from")
    student_path = cfg.model or cfg.distill.teacher
    expected = teacher_config.replace(**student_changes(cfg))
    differences = config_differences(read_config(student_path).replace(**student_changes(cfg)), expected)
    if differences:
        raise ValueError(f"the student {str(student_path)!r} and distill.teacher {str(path)!r} are different models "
                         f"({'; '.join(differences[:6])}{' ...' if len(differences) > 6 else ''}); the student "
                         "starts from the teacher: leave `model:` empty (it then defaults to distill.teacher) or "
                         "give a checkpoint of the teacher's architecture")
    return load_checkpoint(path)  # frozen, eval


def load_student(cfg):
    """The student: `cfg.model` (default: the teacher's own weights) with the distilled guidance config; the
    guidance-scale embedding it adds starts at zero."""
    return load_checkpoint(cfg.model or cfg.distill.teacher, config_changes=student_changes(cfg))


def check_resume(checkpoint: Path, cfg) -> None:
    """Refuse to resume a distillation run with another teacher or none, or a plain run as a distillation."""
    weights = checkpoint / "loopy.safetensors"
    if not weights.is_file():
        return  # accelerate's own state decides; nothing recorded to compare with
    recorded = read_metadata(weights).get(TEACHER_KEY)
    current = str(Path(cfg.distill.teacher).resolve()) if cfg.distill.teacher else None
    if recorded and not current:
        raise ValueError(f"{str(checkpoint)!r} belongs to a distillation run (teacher {recorded!r}); resume it with "
                         f"distill.teacher={recorded}")
    if current and not recorded:
        raise ValueError(f"{str(checkpoint)!r} is not from a distillation run; resume it without distill.teacher, "
                         "or start the distillation in a new output_dir")
    if recorded and current != recorded:
        raise ValueError(f"{str(checkpoint)!r} was distilled from {recorded!r}, not {current!r}; resume with "
                         f"distill.teacher={recorded} or start a new output_dir")
