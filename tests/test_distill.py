"""Guidance distillation: the student's target, its identity with the teacher at init, one denoiser call per step,
resume, the checkpoint flag and the errors for a bad teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from loopy_core import guidance
from loopy_core.bench import random_audio
from loopy_core.checkpoint import load_checkpoint, read_config, read_metadata, save_checkpoint
from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel
from loopy_core.pipeline import GenerationOptions, LoopyPipeline
from training import distill
from training.config import TrainConfig
from training.objective import LoopyObjective, trainable_modules

ROOT = Path(__file__).resolve().parents[1]
SCALES = {"audio_scale_range": [1.0, 8.0], "ref_scale_range": [1.0, 5.0]}


def teacher_file(path: Path, config: LoopyConfig | None = None) -> Path:
    """A tiny three-branch model whose zero-initialised temporal outputs have "trained" values."""
    torch.manual_seed(0)
    model = LoopyModel(config or LoopyConfig.tiny())
    for name, p in model.named_parameters():
        if "proj_out" in name:
            p.data.normal_(0, 0.05)
    return save_checkpoint(model, path)


def distill_config(teacher: Path, **changes) -> TrainConfig:
    return TrainConfig(stage=2, distill={"teacher": str(teacher), **SCALES}, **changes)


def random_batch(config: LoopyConfig, B: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of the shapes `ShardDataset` gives (values random)."""
    g = torch.Generator().manual_seed(seed)
    C, s, F, M = config.latent_channels, config.latent_size, config.frames_per_clip, config.num_motion_frames
    a = config.audio
    return {
        "target": torch.randn(B, C, F, s, s, generator=g),
        "ref": torch.randn(B, C, s, s, generator=g),
        "motion": torch.randn(B, C, M, s, s, generator=g),
        "audio": torch.randn(B, F, 2 * a.window + 1, a.num_layers, a.feature_dim, generator=g),
        "motion_stats": torch.rand(B, 2, generator=g),
        "mouth": torch.tensor([0.5, 0.7, 0.1, 0.05]).expand(B, F, 4),
    }


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_target_is_the_teachers_guided_prediction(tmp_path, prediction_type):
    """The objective's target equals `guidance.combine` of the teacher's three branches run one by one by hand, on
    the same noisy input, timesteps and motion frames as the plain objective draws from the same generator."""
    config = LoopyConfig.tiny().replace(noise={"prediction_type": prediction_type})
    cfg = distill_config(teacher_file(tmp_path / "teacher.safetensors", config), p_drop_ref=0.3, p_drop_audio=0.3,
                         motion_noise_max=0.3)  # dropout must not reach the student; motion noise is shared
    teacher, student = distill.load_teacher(cfg), distill.load_student(cfg)
    batch = random_batch(config)
    out = LoopyObjective(student, cfg, teacher).predict(batch, torch.Generator().manual_seed(0))
    plain = LoopyObjective(teacher, TrainConfig(stage=2, p_drop_ref=0.3, p_drop_audio=0.3, motion_noise_max=0.3))
    plain_out = plain.predict(batch, torch.Generator().manual_seed(0))
    for key in ("noisy", "timesteps", "motion"):  # the normal objective's data path and random stream
        assert torch.equal(out[key], plain_out[key]), key
    noise = torch.randn(batch["target"].shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out["noisy"], plain.scheduler.add_noise(batch["target"], noise, out["timesteps"]))

    with torch.no_grad():
        ref_tokens, feats = teacher.reference_net(batch["ref"], out["motion"])
        on = torch.ones(3, dtype=torch.bool)
        with_audio = teacher.audio_to_latents(batch["audio"], on, batch["motion_stats"], out["motion_mask"])
        no_audio = teacher.audio_to_latents(batch["audio"], ~on, batch["motion_stats"], out["motion_mask"])
        zero_ref = {k: torch.zeros_like(v) for k, v in ref_tokens.items()}
        x, t = out["noisy"], out["timesteps"]
        e_uncond = teacher.denoiser(x, t, no_audio, zero_ref, feats)
        e_ref = teacher.denoiser(x, t, no_audio, ref_tokens, feats)
        e_full = teacher.denoiser(x, t, with_audio, ref_tokens, feats)
    ref_scale, audio_scale = (s.view(-1, 1, 1, 1, 1) for s in out["guidance_scales"].T)
    expected = guidance.combine(e_uncond, e_ref, e_full, ref_scale, audio_scale)
    torch.testing.assert_close(out["target"], expected, atol=1e-5, rtol=1e-5)
    assert (expected - e_full).abs().max() > 1e-3  # the guidance moves the target away from the full branch
    scales = out["guidance_scales"]  # one (ref, audio) draw per sample, inside the ranges
    assert scales.shape == (3, 2) and len(set(scales[:, 1].tolist())) == 3
    assert ((scales[:, 0] >= 1) & (scales[:, 0] <= 5) & (scales[:, 1] >= 1) & (scales[:, 1] <= 8)).all()
    # a fresh student sees every condition: its prediction is the teacher's full branch
    torch.testing.assert_close(out["pred"], e_full, atol=1e-6, rtol=0)


def test_fresh_student_is_the_teachers_full_branch(tmp_path):
    """The zero-initialised scale embedding adds exactly nothing: at any scales the student's denoiser equals the
    teacher's, and the student's one-branch video at the paper's scales equals the teacher's at unit scales."""
    cfg = distill_config(teacher_file(tmp_path / "teacher.safetensors"))
    teacher, student = distill.load_teacher(cfg), distill.load_student(cfg)
    assert student.config.guidance.distilled and not teacher.config.guidance.distilled
    assert student.config.guidance.distilled_audio_range == (1.0, 8.0)
    emb = student.denoiser.guidance_embedding
    assert not emb.embedding.linear_2.weight.any() and teacher.denoiser.guidance_embedding is None
    assert emb in trainable_modules(student, ["denoiser_spatial"])
    config, batch = student.config, random_batch(student.config, B=2)
    with torch.no_grad():
        ref_tokens, feats = teacher.reference_net(batch["ref"], batch["motion"])
        tokens = teacher.audio_to_latents(batch["audio"])
        x, t = batch["target"], torch.tensor([900, 100])
        scales = torch.tensor([[3.0, 5.0], [1.0, 1.0]])
        assert torch.equal(student.denoiser(x, t, tokens, ref_tokens, feats, guidance_scales=scales),
                           teacher.denoiser(x, t, tokens, ref_tokens, feats))
        with pytest.raises(ValueError, match="not guidance-distilled"):
            teacher.denoiser(x, t, tokens, ref_tokens, feats, guidance_scales=scales)
    image = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    audio = random_audio(config, 14)
    ours = LoopyPipeline(student)(image, audio, GenerationOptions(steps=2, audio_guidance_scale=5.0,
                                                                  ref_guidance_scale=3.0))
    theirs = LoopyPipeline(teacher)(image, audio, GenerationOptions(steps=2, audio_guidance_scale=1.0,
                                                                    ref_guidance_scale=1.0))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_pipeline_runs_one_branch_per_step_for_a_distilled_model(tmp_path, monkeypatch, caplog):
    """4 steps, audio schedule 6 -> 2, guidance on the first half: the student makes one call of batch 1 per step
    with that step's scales (1 outside the interval); the teacher runs 3 branches (one batch of 3, or 3 calls
    with sequential guidance) on the guided steps and the full branch alone on the others."""
    cfg = distill_config(teacher_file(tmp_path / "teacher.safetensors"))
    teacher, student = distill.load_teacher(cfg), distill.load_student(cfg)
    options = dict(steps=4, audio_guidance_scale=[6.0, 2.0], ref_guidance_scale=3.0, guidance_interval=(0.0, 0.5))
    image, audio = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32), random_audio(student.config, 12)

    def calls(model, **extra) -> list[tuple[int, list | None]]:
        seen = []
        forward = model.denoiser.forward

        def spy(x, *args, guidance_scales=None, **kwargs):
            seen.append((x.shape[0], None if guidance_scales is None else guidance_scales.tolist()))
            return forward(x, *args, **({"guidance_scales": guidance_scales} if guidance_scales is not None else {}),
                           **kwargs)

        monkeypatch.setattr(model.denoiser, "forward", spy)
        LoopyPipeline(model)(image, audio, GenerationOptions(**options, **extra))
        return seen

    student_calls = calls(student)
    assert [n for n, _ in student_calls] == [1, 1, 1, 1]
    expected = [[3.0, 6.0], [3.0, guidance.scale_at([6.0, 2.0], 1, 4)], [1.0, 1.0], [1.0, 1.0]]  # (ref, audio)
    for (_, got), want in zip(student_calls, expected):
        assert got[0] == pytest.approx(want)
    assert calls(teacher) == [(3, None), (3, None), (1, None), (1, None)]
    assert [n for n, _ in calls(teacher, sequential_guidance=True)] == [1] * 8  # 3 + 3 + 1 + 1 calls
    assert len(calls(student, sequential_guidance=True)) == 4
    with caplog.at_level("WARNING", logger="loopy_core.pipeline"):  # beyond the trained range: said once a video
        LoopyPipeline(student)(image, random_audio(student.config, 24), GenerationOptions(steps=1,
                                                                                       audio_guidance_scale=10.0))
    warnings = [r.getMessage() for r in caplog.records if "outside the range" in r.getMessage()]
    assert warnings == ["audio guidance 10..10 is outside the range 1..8 this distilled model was trained on; its "
                        "output there is an extrapolation"]


def test_distilled_checkpoint_round_trip_and_old_checkpoints(tmp_path, capsys):
    """The flag and ranges travel in the checkpoint's config (`loopy inspect` counts one branch per step); a file
    written before the field existed loads as a three-branch model."""
    cfg = distill_config(teacher_file(tmp_path / "teacher.safetensors"))
    student = distill.load_student(cfg)
    with torch.no_grad():
        student.denoiser.guidance_embedding.embedding.linear_2.weight.normal_()  # "trained"
    path = save_checkpoint(student, tmp_path / "student.safetensors")
    assert read_config(path).guidance.distilled
    loaded = load_checkpoint(path)
    assert loaded.config == student.config
    a, b = student.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("denoiser.guidance_embedding.") for k in a)
    from loopy_core.cli import main

    assert main(["inspect", "--checkpoint", str(path), "--json", "--flops"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["guidance_distilled"] and card["flops"]["branches"] == 1

    old = LoopyConfig.tiny().to_dict()
    for key in ("distilled", "distilled_audio_range", "distilled_ref_range"):
        del old["guidance"][key]
    tensors = {k: v.contiguous() for k, v in LoopyModel(LoopyConfig.tiny()).state_dict().items()}
    save_file(tensors, tmp_path / "old.safetensors",
              metadata={"format": "loopy", "format_version": "1", "config": json.dumps(old)})
    model = load_checkpoint(tmp_path / "old.safetensors")
    assert not model.config.guidance.distilled and model.denoiser.guidance_embedding is None


def test_bad_teachers_and_options_are_named(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.safetensors")
    with pytest.raises(FileNotFoundError, match=rf"distill.teacher 'nope.safetensors' not found in '{tmp_path}'.*"
                                                "distill.teacher=PATH"):
        distill.load_teacher(distill_config(tmp_path / "nope.safetensors"))
    narrow = LoopyConfig.tiny().replace(unet={"block_out_channels": [32, 32]})
    other = teacher_file(tmp_path / "other.safetensors", narrow)
    with pytest.raises(ValueError, match=r"different models \(unet.block_out_channels: \[32, 32\] vs \[32, 64\]\).*"
                                         "leave `model:` empty"):
        distill.load_teacher(distill_config(teacher, model=str(other)))
    student = save_checkpoint(distill.load_student(distill_config(teacher)), tmp_path / "student.safetensors")
    with pytest.raises(ValueError, match="is itself guidance-distilled"):
        distill.load_teacher(distill_config(student))
    with pytest.raises(ValueError, match="distillation needs stage 2"):
        TrainConfig(stage=1, distill={"teacher": str(teacher)})
    with pytest.raises(ValueError, match="add it to `trainable`"):
        TrainConfig(distill={"teacher": str(teacher)}, trainable=["intra_clip"])
    with pytest.raises(ValueError, match=r"unknown distill option\(s\) \['teachr'\]"):
        TrainConfig.load(None, ["distill.teachr=x"])
    with pytest.raises(ValueError, match="distill.audio_scale_range must be"):
        TrainConfig.load(None, ["distill.audio_scale_range=[5, 1]"])
    cfg = TrainConfig.load(str(ROOT / "training" / "configs" / "synthetic_tiny_distill.yaml"), ["distill.teacher=no"])
    assert cfg.distill.teacher == "no" and cfg.distill.audio_scale_range == [1.0, 3.0]  # text stays text


def run_training(config: dict, tmp: Path, *extra) -> subprocess.CompletedProcess:
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "training.train", "--config", str(path), *extra], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)


def test_distillation_resumes_with_its_teacher(make_tiny_world, tmp_path):
    """Two steps, stop, resume to three: the resumed run loads the teacher again (from the command line's
    `distill.teacher=`), continues the step count, and its checkpoints record the teacher; resuming without the
    teacher, or with another, is refused by name."""
    teacher = make_tiny_world(tmp_path, videos=2, seconds=2.0, seed=0)
    out = tmp_path / "run"
    config = dict(data=str(tmp_path / "shards"), output_dir=str(out), stage=2, learning_rate=1e-3, max_train_steps=2,
                  train_batch_size=2, checkpointing_steps=1, log_every=1, report_to="none")
    first = run_training(config, tmp_path, f"distill.teacher={teacher}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "guidance distillation from" in first.stderr
    resumed = run_training({**config, "max_train_steps": 3}, tmp_path, f"distill.teacher={teacher}",
                           "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "guidance distillation from" in resumed.stderr
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    final = out / "checkpoint-3" / "loopy.safetensors"
    assert read_metadata(final)[distill.TEACHER_KEY] == str(teacher.resolve())
    student = load_checkpoint(final)
    assert student.config.guidance.distilled
    assert student.denoiser.guidance_embedding.embedding.linear_2.weight.any()  # the scale embedding trained
    with pytest.raises(ValueError, match=rf"resume it with distill.teacher={teacher.resolve()}"):
        distill.check_resume(out / "checkpoint-3", TrainConfig())
    with pytest.raises(ValueError, match="was distilled from"):
        distill.check_resume(out / "checkpoint-3", distill_config(tmp_path / "other.safetensors"))
    distill.check_resume(out / "checkpoint-3", distill_config(teacher))


def test_bench_times_the_student_with_one_branch(monkeypatch):
    """`loopy bench`'s `distilled` part: the teacher's rows run batches of 3, the student's batches of 1."""
    from loopy_core import bench
    from loopy_core.models.denoiser import LoopyDenoiser

    batches = []
    forward = LoopyDenoiser.forward
    monkeypatch.setattr(LoopyDenoiser, "forward", lambda self, x, *a, **k: batches.append(x.shape[0]) or
                        forward(self, x, *a, **k))
    pipe = bench.build_pipeline(LoopyConfig.tiny(), "cpu", torch.float32)
    rows = bench.bench_distilled(pipe, steps=2, student_steps=(2, 1), repeats=1)
    assert list(rows) == ["teacher: ddim 2, 3 branches", "distilled: ddim 2, 1 branch", "distilled: ddim 1, 1 branch"]
    assert batches == [3] * 4 + [1] * 4 + [1] * 2  # (warm-up + 1 timed clip) x steps, per row
    assert rows["teacher: ddim 2, 3 branches"]["speedup"] == 1.0
    assert all(r["seconds_per_clip"] > 0 for r in rows.values())
    assert "distilled: ddim 1, 1 branch" in bench.format_table({"config": "tiny", "device": "cpu", "dtype": "fp32",
                                                                "steps": 2, "distilled": rows})
