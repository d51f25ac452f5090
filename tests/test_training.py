"""Training: preprocessing with broken inputs, loss goes down in both stages, exact resume, DDP on two CPU
processes, export -> generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from loopy_core.audio import tiny_wav2vec2
from loopy_core.checkpoint import load_checkpoint, save_checkpoint
from loopy_core.config import LoopyConfig
from loopy_core.models import LoopyModel
from training.config import TrainConfig
from training.data import EpochSampler, ShardDataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic videos + three broken files -> shards, with a tiny starting checkpoint."""
    from loopy_core.synthetic.dataset import write_dataset
    from training.preprocess import main as preprocess

    root = tmp_path_factory.mktemp("train")
    videos = root / "videos"
    write_dataset(videos, videos=3, seconds=2.0, size=64, seed=0)
    (videos / "not_a_video.mp4").write_text("hello")
    (videos / "empty.mp4").write_bytes(b"")
    from loopy_core.video import VideoWriter

    with VideoWriter(videos / "silent_film.mp4", fps=25) as w:  # no audio track
        w.write(np.zeros((30, 64, 64, 3), np.uint8))
    torch.manual_seed(0)
    cfg = LoopyConfig.tiny()
    init = save_checkpoint(LoopyModel(cfg), root / "init.safetensors", audio_encoder=tiny_wav2vec2(cfg.audio))
    assert preprocess(["--videos", str(videos), "--out", str(root / "shards"), "--model", str(init)]) == 0
    return root, init


def test_preprocess_keeps_good_videos_and_skips_broken_ones(data):
    root, _ = data
    index = json.loads((root / "shards" / "index.json").read_text())
    assert len(index["videos"]) == 3
    reasons = {s["video"]: s["reason"] for s in index["skipped"]}
    assert set(reasons) == {"not_a_video.mp4", "empty.mp4", "silent_film.mp4"}
    assert "no audio" in reasons["silent_film.mp4"]
    assert all("unreadable" in reasons[k] or "no audio" in reasons[k] for k in ("not_a_video.mp4", "empty.mp4"))
    with safe_open(str(root / "shards" / index["videos"][0]["shard"]), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes["latents"] == (50, 4, 8, 8) and shapes["audio"] == (50, 2, 32) and shapes["head"] == (50, 3)


def test_dataset_items(data):
    root, _ = data
    cfg = LoopyConfig.tiny()
    ds = ShardDataset(root / "shards", cfg, stage=2, seed=1)
    item = ds[0]
    assert item["target"].shape == (4, 12, 8, 8) and item["motion"].shape == (4, 20, 8, 8)
    assert item["audio"].shape == (12, 5, 2, 32) and item["motion_stats"].shape == (2,)
    assert all(torch.equal(item[k], ds[0][k]) for k in item)  # deterministic per (seed, global index)
    assert not torch.equal(item["target"], ds[len(ds)]["target"])  # the next epoch draws other clips
    sampler = EpochSampler(4)
    sampler.set_epoch(2)
    assert list(sampler) == [8, 9, 10, 11]
    assert ShardDataset(root / "shards", cfg, stage=1)[3]["target"].shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="different vae"):
        ShardDataset(root / "shards", LoopyConfig.demo(), stage=2)


@pytest.mark.parametrize("stage", [1, 2])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(data, stage):
    from training.objective import LoopyObjective, trainable_modules

    root, init = data
    model = load_checkpoint(init).train()
    cfg = TrainConfig(model=str(init), data=str(root / "shards"), stage=stage, p_drop_ref=0, p_drop_audio=0,
                      p_drop_both=0, p_drop_motion_frames=0)
    model.requires_grad_(False)
    for m in trainable_modules(model, cfg.trainable):
        m.requires_grad_(True)
    ds = ShardDataset(root / "shards", model.config, stage=stage)
    batch = torch.utils.data.default_collate([ds[i] for i in range(2)])
    objective = LoopyObjective(model, cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def loss_now():
        return objective(batch, torch.Generator().manual_seed(0))

    with torch.no_grad():
        before = loss_now().item()
    for _ in range(8):
        opt.zero_grad()
        loss_now().backward()
        opt.step()
    with torch.no_grad():
        after = loss_now().item()
    assert after < 0.8 * before, (before, after)
    if stage == 1:  # stage 1 leaves the temporal layers and audio-to-latents untouched
        fresh = load_checkpoint(init)
        for name in ("denoiser.intra_clip", "denoiser.inter_clip", "audio_to_latents"):
            a = dict(model.named_parameters())
            b = dict(fresh.named_parameters())
            assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(name)), name


def test_motion_frame_noise_reaches_the_reference_net_only_when_asked(data, monkeypatch):
    """`motion_noise_max` adds per-sample noise to the motion frames (the ReferenceNet's motion input); at 0 the
    motion frames and the generator's random stream are exactly those of a run without the option."""
    from training.objective import LoopyObjective

    root, init = data
    model = load_checkpoint(init).eval()
    ds = ShardDataset(root / "shards", model.config, stage=2)
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])
    seen = []
    forward = model.reference_net.forward
    monkeypatch.setattr(model.reference_net, "forward", lambda ref, mf: seen.append(mf) or forward(ref, mf))

    def run(noise):
        cfg = TrainConfig(model=str(init), data=str(root / "shards"), stage=2, p_drop_motion_frames=0,
                          motion_noise_max=noise)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            LoopyObjective(model, cfg)(batch, gen)
        return seen[-1], gen.get_state()

    clean, state = run(0.0)
    assert torch.equal(clean, batch["motion"])
    noisy, state_noisy = run(0.5)
    std = (noisy - clean).flatten(1).std(dim=1)
    assert (std > 0.0).all() and (std < 0.5 * 1.1).all() and len(set(std.tolist())) == 3  # one std per sample
    assert not torch.equal(state_noisy, state)  # the extra draws happen only when the option is on
    with pytest.raises(ValueError, match="motion_noise_max"):
        TrainConfig(model=str(init), data=str(root / "shards"), motion_noise_max=-0.1)


def test_appearance_shift_is_a_colour_change_of_the_decoded_frames():
    """On `pixel_unshuffle` latents the shift is exactly a per-colour gain and smooth offset of the image, the same
    on every motion frame of a sample, another draw for each sample; amount 0 leaves a sample as it was."""
    import torch.nn.functional as F

    from loopy_core.config import VAEConfig
    from training.objective import appearance_shift, colour_groups

    vae = VAEConfig(kind="pixel_unshuffle", unshuffle_factor=4)
    pixels = torch.rand(3, 3, 5, 32, 32) * 2 - 1  # [B, RGB, M, H, W]
    latents = F.pixel_unshuffle(pixels.transpose(1, 2).flatten(0, 1), 4).unflatten(0, (3, 5)).transpose(1, 2)
    groups = colour_groups(vae, latents.shape[1])
    assert groups.tolist() == [c for c in range(3) for _ in range(16)]
    out = appearance_shift(latents, groups, torch.tensor([0.3, 0.0, 0.3]), torch.Generator().manual_seed(0))
    image = F.pixel_shuffle(out.transpose(1, 2).flatten(0, 1), 4).unflatten(0, (3, 5)).transpose(1, 2)
    assert torch.equal(out[1], latents[1])
    for b in (0, 2):
        # per colour, per pixel: image = gain * pixels + offset with one gain per colour and an offset field
        # that is smooth (the 2x2 grid upsampled) and the same in all five frames
        d = image[b] - pixels[b]
        x, y = pixels[b], image[b]
        gain = ((x - x.mean(1, keepdim=True)) * (y - y.mean(1, keepdim=True))).sum(1) / (
            (x - x.mean(1, keepdim=True)) ** 2).sum(1)  # least squares over the frames, per pixel
        assert torch.allclose(gain, gain[:, :1, :1].expand_as(gain), atol=1e-4)  # one gain per colour
        g = gain[:, 0, 0]
        assert (g - 1).abs().max() <= 0.3 + 1e-5 and (g - 1).abs().max() > 0.0
        offset = y - g.view(3, 1, 1, 1) * x
        assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-5)  # same in all frames
        assert offset.abs().max() <= 0.3 + 1e-5 and offset[:, 0].std() > 0  # a field, not a constant
        assert d.abs().max() > 0.01
    assert not torch.allclose(out[0] - latents[0], out[2] - latents[2])  # one draw per sample
    assert colour_groups(VAEConfig(), 4).tolist() == [0, 1, 2, 3]  # SD latents: each channel its own group


def test_motion_appearance_reaches_the_motion_frames_only(data, monkeypatch):
    """`motion_appearance_max` changes what the ReferenceNet sees as motion frames, never the reference or a
    sample whose motion frames are the video-start padding; at 0 the random stream is that of a run without it."""
    from training.objective import LoopyObjective

    root, init = data
    model = load_checkpoint(init).eval()
    ds = ShardDataset(root / "shards", model.config, stage=2)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    seen = []
    forward = model.reference_net.forward
    monkeypatch.setattr(model.reference_net, "forward", lambda ref, mf: seen.append((ref, mf)) or forward(ref, mf))

    def run(amount, p_drop=0.0):
        cfg = TrainConfig(model=str(init), data=str(root / "shards"), stage=2, p_drop_motion_frames=p_drop,
                          motion_appearance_max=amount)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            LoopyObjective(model, cfg)(batch, gen)
        return seen[-1], gen.get_state()

    (ref0, clean), state = run(0.0)
    assert torch.equal(clean, batch["motion"])
    (ref1, shifted), state_on = run(0.4)
    assert torch.equal(ref1, ref0) and torch.equal(ref1, batch["ref"])
    moved = (shifted - clean).flatten(1).abs().amax(dim=1)
    assert (moved > 0).all() and (moved <= 0.4 * (1 + clean.abs().max()) + 1e-5).all()
    assert not torch.equal(state_on, state)
    (_, padded), _ = run(0.4, p_drop=1.0)  # every sample's motion frames are the padding: left alone
    assert torch.equal(padded, batch["ref"][:, :, None].expand_as(padded))
    with pytest.raises(ValueError, match="motion_appearance_max"):
        TrainConfig(model=str(init), data=str(root / "shards"), motion_appearance_max=-0.1)


def test_appearance_aug_is_one_colour_change_of_the_whole_sample(data, monkeypatch):
    """`appearance_aug_max` gives each sample one colour and lighting change on its reference, motion frames, target
    and previous clip alike (per latent: the same gain and offset on every frame), another draw per sample; the
    objective trains on the changed sample; at 0 nothing is drawn."""
    from types import SimpleNamespace

    from loopy_core.config import VAEConfig
    from training.objective import LoopyObjective

    root, init = data
    model = load_checkpoint(init).eval()
    ds = ShardDataset(root / "shards", model.config, stage=2, previous_clip=True)
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])
    keys = ("ref", "motion", "target", "prev_target", "prev_motion")
    batch = {k: v * 0.5 if k in keys else v for k, v in batch.items()}  # inside the range: no clamping
    cfg = TrainConfig(model=str(init), data=str(root / "shards"), stage=2, appearance_aug_max=0.3)
    out = LoopyObjective(model, cfg).augment_appearance(batch, torch.Generator().manual_seed(0))
    flat = lambda b: torch.cat([b["ref"][:, :, None]] + [b[k] for k in keys[1:]], dim=2)  # [B, C, frames, h, w]
    x, y = flat(batch), flat(out)
    xc, yc = x - x.mean(2, keepdim=True), y - y.mean(2, keepdim=True)
    gain = (xc * yc).sum(2, keepdim=True) / (xc**2).sum(2, keepdim=True)
    offset = y.mean(2, keepdim=True) - gain * x.mean(2, keepdim=True)
    assert torch.allclose(gain * x + offset, y, atol=1e-4)  # one affine map per latent for every frame
    assert ((y - x).abs() <= 0.3 * x.abs() + 0.3 + 1e-5).all()  # gain and offset within appearance_aug_max
    assert (y - x).flatten(1).abs().amax(1).min() > 1e-3  # every sample changed ...
    assert not torch.allclose(gain[0], gain[1])  # ... by its own draw
    assert out["audio"] is batch["audio"] and out["ref"].shape == batch["ref"].shape
    big = {k: 2 * v / v.abs().max() for k, v in batch.items() if k in keys}  # outside [-1, 1]
    unclamped = LoopyObjective(model, cfg).augment_appearance(big, torch.Generator().manual_seed(0))
    assert unclamped["target"].abs().max() > 1.0  # SD latents have no fixed range: left as they are
    pixel_model = SimpleNamespace(config=SimpleNamespace(vae=VAEConfig(kind="pixel_unshuffle", unshuffle_factor=2),
                                                         noise=model.config.noise))
    clamped = LoopyObjective(pixel_model, cfg).augment_appearance(big, torch.Generator().manual_seed(0))
    assert clamped["target"].abs().max() <= 1.0 and clamped["ref"].abs().max() <= 1.0  # pixel latents stay images

    seen = []
    forward = model.reference_net.forward
    monkeypatch.setattr(model.reference_net, "forward", lambda ref, mf: seen.append(ref) or forward(ref, mf))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        LoopyObjective(model, cfg)(batch, gen)
    assert torch.allclose(seen[-1], out["ref"])  # the ReferenceNet sees the changed reference
    off = TrainConfig(model=str(init), data=str(root / "shards"), stage=2)
    states = []
    for c in (off, TrainConfig(model=str(init), data=str(root / "shards"), stage=2, appearance_aug_max=0.0)):
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            LoopyObjective(model, c)(batch, gen)
        states.append(gen.get_state())
    assert torch.equal(states[0], states[1]) and torch.equal(seen[-1], batch["ref"])
    with pytest.raises(ValueError, match="appearance_aug_max"):
        TrainConfig(model=str(init), data=str(root / "shards"), appearance_aug_max=-0.1)


@pytest.mark.parametrize("tsm", ["paper", "shorter_than_a_clip"])
def test_own_history_puts_the_models_estimate_of_the_previous_clip_into_the_motion_frames(data, monkeypatch, tsm):
    """`self_history_prob`: the motion frames of a picked sample equal the TSM of the true history whose last F
    frames are the denoiser's x0 estimate of the previous clip; samples without a whole previous clip, and those
    not drawn, keep the true motion frames."""
    import dataclasses

    from loopy_core.config import TSMConfig
    from training.objective import LoopyObjective

    root, init = data
    model = load_checkpoint(init).eval()
    if tsm == "shorter_than_a_clip":  # 4 motion frames from the last 4 frames: it sees only part of the clip
        torch.manual_seed(0)
        model = LoopyModel(dataclasses.replace(model.config, tsm=TSMConfig(s=4, r=1, K=1))).eval()
    ds = ShardDataset(root / "shards", model.config, stage=2, previous_clip=True)
    items = [ds[i] for i in range(40)]
    with_prev = [it for it in items if it["has_prev"] == 1][:3]
    without = [it for it in items if it["has_prev"] == 0][:2]
    assert len(with_prev) == 3 and len(without) == 2
    assert all(not it["prev_target"].any() for it in without)
    assert all(torch.equal(items[0][k], ds[0][k]) for k in items[0])  # still deterministic
    batch = torch.utils.data.default_collate(with_prev + without)
    # the item's previous clip is the F frames before its target: its motion frames + its own frames are the
    # history of the target's (TSM over them = the target's motion frames)
    F = batch["target"].shape[2]
    history = _history_before(root, ds, with_prev[0], F)
    assert torch.allclose(model.tsm(history, with_prev[0]["ref"][None]), with_prev[0]["motion"][None], atol=1e-5)

    estimate = torch.full_like(batch["prev_target"][:1], 0.25)  # what the denoiser will "predict", as x0
    monkeypatch.setattr(model.denoiser, "forward", lambda noisy, *a, **k: estimate.expand_as(noisy))
    monkeypatch.setattr("training.objective.predicted_x0", lambda scheduler, sample, pred, t: pred)

    def run(prob):
        cfg = TrainConfig(model=str(init), data=str(root / "shards"), stage=2, self_history_prob=prob)
        gen = torch.Generator().manual_seed(0)
        return LoopyObjective(model, cfg).own_history(batch, batch["motion"], gen), gen

    out, _ = run(1.0)
    hist = history.clone()
    hist[:, :, -F:] = 0.25
    assert torch.allclose(out[:1], model.tsm(hist, batch["ref"][:1]), atol=1e-5)
    assert not torch.equal(out[:3], batch["motion"][:3])
    assert torch.equal(out[3:], batch["motion"][3:])  # no whole previous clip: untouched
    half, _ = run(0.5)
    changed = [not torch.equal(half[i], batch["motion"][i]) for i in range(3)]
    assert 0 < sum(changed) < 3  # a share of the samples (the draws for seed 0: 0.50, 0.77, 0.09)
    assert torch.equal(half[3:], batch["motion"][3:])
    assert all(torch.equal(half[i], out[i]) for i in range(3) if changed[i])
    with pytest.raises(ValueError, match="self_history_prob must be in"):
        TrainConfig(model=str(init), data=str(root / "shards"), self_history_prob=1.5)
    with pytest.raises(ValueError, match="self_history_prob needs stage 2"):
        TrainConfig(model=str(init), data=str(root / "shards"), stage=1, self_history_prob=0.5)
    with pytest.raises(ValueError, match="previous_clip needs stage 2"):
        ShardDataset(root / "shards", model.config, stage=1, previous_clip=True)


def test_own_history_runs_under_bf16_autocast(data, monkeypatch):
    """Mixed-precision training (accelerate's autocast) makes the estimate's TSM shift bf16; the motion frames must
    stay in their own dtype (a bf16 shift added into fp32 motion frames failed on the first GPU run)."""
    from training.objective import LoopyObjective

    root, init = data
    model = load_checkpoint(init).eval()
    ds = ShardDataset(root / "shards", model.config, stage=2, previous_clip=True)
    batch = torch.utils.data.default_collate([it for it in (ds[i] for i in range(40)) if it["has_prev"] == 1][:2])
    seen = []
    forward = model.reference_net.forward
    monkeypatch.setattr(model.reference_net, "forward", lambda ref, mf: seen.append(mf) or forward(ref, mf))
    cfg = TrainConfig(model=str(init), data=str(root / "shards"), stage=2, self_history_prob=1.0,
                      p_drop_motion_frames=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LoopyObjective(model, cfg)(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert seen[-1].dtype == batch["motion"].dtype and not torch.equal(seen[-1], batch["motion"])


def _history_before(root: Path, ds: ShardDataset, item: dict, F: int) -> torch.Tensor:
    """The true history `[1, C, t, h, w]` before an item's target, found by matching its target in the shards."""
    for video in ds.videos:
        with safe_open(str(root / "shards" / video["shard"]), framework="pt") as f:
            latents = f.get_tensor("latents").float()
        for start in range(F, latents.shape[0] - F + 1):
            if torch.equal(latents[start : start + F].permute(1, 0, 2, 3), item["target"]):
                assert torch.equal(latents[start - F : start].permute(1, 0, 2, 3), item["prev_target"])
                return latents[max(0, start - ds.tsm.span) : start].permute(1, 0, 2, 3)[None]
    raise AssertionError("target clip not found in the shards")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predicted_x0_inverts_each_training_target(kind):
    from diffusers import DDPMScheduler

    from training.objective import predicted_x0

    scheduler = DDPMScheduler(prediction_type=kind)
    x0, noise = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    t = torch.tensor([10, 500, 900])
    noisy = scheduler.add_noise(x0, noise, t)
    target = {"epsilon": noise, "v_prediction": scheduler.get_velocity(x0, noise, t), "sample": x0}[kind]
    assert torch.allclose(predicted_x0(scheduler, noisy, target, t), x0, atol=1e-3)


def run_training(config: dict, tmp: Path, *extra, launcher=None) -> subprocess.CompletedProcess:
    path = tmp / "cfg.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    cmd = (launcher or [sys.executable, "-m"]) + ["training.train", "--config", str(path), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)


def base_config(data, out: Path, **changes) -> dict:
    root, init = data
    cfg = dict(model=str(init), data=str(root / "shards"), output_dir=str(out), stage=2, learning_rate=1e-3,
               max_train_steps=4, train_batch_size=2, checkpointing_steps=2, log_every=1, report_to="none",
               timestep_sampling="high_noise_mix", region_loss_weight=1.0)
    cfg.update(changes)
    return cfg


def test_kill_and_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    # with the options that draw extra random numbers (motion-frame noise, the model's own history) switched on
    extras = dict(motion_noise_max=0.3, self_history_prob=0.5)
    straight = run_training(base_config(data, tmp_path / "a", **extras), tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run_training(base_config(data, tmp_path / "b", max_train_steps=2, **extras), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_training(base_config(data, tmp_path / "b", **extras), tmp_path, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = load_checkpoint(tmp_path / "a" / "checkpoint-4" / "loopy.safetensors").state_dict()
    b = load_checkpoint(tmp_path / "b" / "checkpoint-4" / "loopy.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not list((tmp_path / "b").glob(".checkpoint-*"))  # no half-written checkpoint left


def test_ema_checkpoint_is_the_moving_average_of_the_raw_weights(data, tmp_path):
    """Each checkpoint's `loopy_ema.safetensors` (what `export --ema` ships) is the EMA recurrence over the raw weights
    after every optimizer step, with diffusers' decay schedule."""
    from diffusers.training_utils import EMAModel

    out = tmp_path / "run"
    result = run_training(base_config(data, out, max_train_steps=3, checkpointing_steps=1, checkpoints_total_limit=5,
                                      use_ema=True, ema_decay=0.5), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    schedule = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.5)
    average = None
    for step in (1, 2, 3):
        raw = load_checkpoint(out / f"checkpoint-{step}" / "loopy.safetensors").state_dict()
        decay = schedule.get_decay(step)
        average = raw if average is None else {k: average[k] - (1 - decay) * (average[k] - raw[k]) for k in raw}
        saved = load_checkpoint(out / f"checkpoint-{step}" / "loopy_ema.safetensors").state_dict()
        assert all(torch.allclose(saved[k], average[k], atol=1e-6) for k in raw), step
    assert 0 < decay < 1 and any(not torch.equal(saved[k], raw[k]) for k in raw)  # the average lags the raw weights


def test_two_cpu_processes_end_with_identical_weights(data, tmp_path):
    # `--multi_gpu` picks accelerate's torchrun launcher; with no GPU each process runs on the CPU over gloo
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    out = tmp_path / "ddp"
    result = run_training(base_config(data, out, max_train_steps=2, train_batch_size=1), tmp_path, launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [(out / f"final_weights_rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    assert "total train batch size (w. parallel, distributed & accumulation) = 2" in result.stderr


def test_export_then_generate(data, tmp_path):
    from loopy_core.cli import main as loopy
    from loopy_core.video import read_video, save_wav
    from training.export import main as export

    root, init = data
    result = run_training(base_config(data, tmp_path / "run", max_train_steps=1, checkpointing_steps=1), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "model.safetensors"
    args = [str(tmp_path / "run"), "--out", str(out), "--dtype", "fp16"]  # the run carries the audio encoder
    assert export(args) == 0
    wav = tmp_path / "a.wav"
    save_wav(wav, (0.2 * np.sin(np.linspace(0, 300, 8000))).astype(np.float32), 16000)
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "face.png")
    video = tmp_path / "v.mp4"
    assert loopy(["generate", "--image", str(tmp_path / "face.png"), "--audio", str(wav), "--out", str(video),
                  "--model", str(out), "--steps", "1", "--device", "cpu", "--quiet"]) == 0
    assert read_video(video).frames.shape[0] == 13  # ceil(0.5 s * 25)


def test_bad_training_options_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['learning_rat'\]"):
        TrainConfig.load(None, ["learning_rat=1e-4"])
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        TrainConfig(stage=3)
    with pytest.raises(ValueError, match="unknown trainable"):
        TrainConfig(trainable=["vae"])
    for name in ("stage1_sd15.yaml", "stage2_sd15.yaml", "synthetic_tiny.yaml"):
        cfg = TrainConfig.load(str(ROOT / "training" / "configs" / name))
        assert cfg.model.endswith(".safetensors")
    sd = TrainConfig.load(str(ROOT / "training" / "configs" / "stage2_sd15.yaml"))
    assert sd.learning_rate == 1e-5 and sd.stage == 2
    # YAML reads 2e-4 (no dot) as text: numbers still come out as numbers, in a file and on the command line
    (tmp_path / "c.yaml").write_text("learning_rate: 3e-5\nmax_train_steps: '40'\n")
    cfg = TrainConfig.load(str(tmp_path / "c.yaml"), ["ema_decay=9e-1", "mixed_precision=no"])
    assert (cfg.learning_rate, cfg.max_train_steps, cfg.ema_decay, cfg.mixed_precision) == (3e-5, 40, 0.9, "no")
    with pytest.raises(ValueError, match=r"learning_rate='fast' must be a number"):
        TrainConfig.load(None, ["learning_rate=fast"])


def test_mouth_mask_and_shard_mouth_boxes(data):
    from training.objective import mouth_mask

    boxes = torch.tensor([[[0.5, 0.75, 0.1, 0.05]]])  # one frame: mouth centred low in the image
    mask = mouth_mask(boxes, (8, 8))[0, 0, 0]
    assert mask.shape == (8, 8) and mask.sum() > 0
    rows = mask.sum(1).nonzero().flatten().tolist()
    cols = mask.sum(0).nonzero().flatten().tolist()
    assert min(rows) >= 4 and max(rows) <= 7 and min(cols) >= 2 and max(cols) <= 5
    root, _ = data
    ds = ShardDataset(root / "shards", LoopyConfig.tiny(), stage=2)
    mouth = ds[0]["mouth"]
    assert mouth.shape == (12, 4)
    assert (mouth[:, 1] > 0.55).all() and (mouth[:, 1] < 0.85).all()  # measured below the face's centre
    assert ((mouth[:, 0] - 0.5).abs() < 0.2).all()


def test_preprocess_finds_the_face_in_a_real_style_video(data, tmp_path):
    """A video with no ground truth beside it goes through face detection and the steady square crop."""
    from PIL import Image

    from loopy_core.commands.demo import DEMO_DIR
    from loopy_core.video import VideoWriter
    from training.preprocess import detect_face_box
    from training.preprocess import main as preprocess

    root, init = data
    portrait = np.asarray(Image.open(DEMO_DIR / "portrait.png").convert("RGB").resize((96, 96)))
    canvas = np.full((150, 200, 3), 200, np.uint8)
    canvas[30:126, 80:176] = portrait
    frames = np.repeat(canvas[None], 40, axis=0)
    box = detect_face_box(frames)
    assert box is not None
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    assert 100 < cx < 156 and 50 < cy < 110  # inside the pasted portrait
    videos = tmp_path / "videos"
    videos.mkdir()
    t = np.arange(int(1.6 * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 160 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)
    with VideoWriter(videos / "person.mp4", fps=25, audio=wave, sample_rate=16000) as w:
        w.write(frames)
    assert preprocess(["--videos", str(videos), "--out", str(tmp_path / "shards"), "--model", str(init)]) == 0
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert [v["source"] for v in index["videos"]] == ["person.mp4"] and not index["skipped"]
