"""The training objective of one batch: noise, condition dropout, one Loopy forward, the weighted MSE.

Kept in one `nn.Module` so that `accelerator.prepare` (DDP, FSDP, ...) wraps the whole forward. Every random draw
(noise, timesteps, dropout) comes from a generator the loop passes in, seeded from the step number, so a resumed run
repeats the uninterrupted one exactly. `add_noise` and the target (epsilon, v or x0, as the model's noise config
says) come from the same diffusers scheduler family that sampling uses.

Condition dropout, one uniform draw `u` per sample (as in instruct-pix2pix):
`u < p_ref` drops the reference; `p_ref <= u < p_ref + p_both` drops reference and audio;
`p_ref + p_both <= u < p_ref + p_both + p_audio` drops the audio. Dropped reference = zeroed reference tokens,
dropped audio = the audio-to-latents "no modality" tokens: exactly the guidance branches used at inference.
A second draw replaces the motion frames by the video-start padding (`p_drop_motion_frames`); a third picks the
audio-to-latents modality mix (audio only / audio + motion statistics / motion statistics only). With
`motion_noise_max > 0` the motion frames also get Gaussian noise of a per-sample std (drawn after the rest, so runs
without it keep their random stream). With `self_history_prob > 0`, drawn before that noise, a share of the
samples sees its previous clip, inside the motion frames, as the model's own x0 estimate of it (`own_history`).
With `motion_appearance_max > 0` (drawn last) the motion frames of each sample, not its reference or target, get a
random colour and lighting change (`appearance_shift`), so the appearance has to come from the reference.
With `appearance_aug_max > 0` (drawn first, in `forward`) one such change is applied to the whole sample alike
(reference, motion frames, target, previous clip): every sample shows a new appearance that only the reference and
the history can tell, a wider appearance space from the same videos.

Guidance distillation (a `teacher`, `TrainConfig.distill`): the same draws, noisy input and motion frames, but the
student sees every condition and the guidance scales (drawn last, per sample), and its target is the frozen
teacher's guided prediction at those scales (`guided_target`), in the model's own prediction type.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loopy_core import guidance
from loopy_core.models.loopy import LoopyModel
from loopy_core.pipeline import make_scheduler


def trainable_modules(model: LoopyModel, names: list[str]) -> list[nn.Module]:
    """The modules behind each trainable component name (config `trainable`)."""
    den = model.denoiser
    audio_path = [model.audio_to_latents] + ([den.token_to_timestep] if den.token_to_timestep is not None else [])
    mapping = {
        "reference_net": [model.reference_net],
        "denoiser_spatial": [den.unet, den.guidance_embedding],  # the scales join the timestep embedding
        "inter_clip": [den.inter_clip],
        "intra_clip": [den.intra_clip],
        "audio_to_latents": audio_path,
    }
    return [m for name in names for m in mapping[name] if m is not None]  # a switched-off layer trains nothing


def mouth_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`[B, F, 4]` mouth boxes (centre x, y, half-width, half-height; image fractions) -> `[B, 1, F, h, w]` 0/1 mask
    on the latent grid, grown by one latent pixel so that a small mouth always covers a few latents."""
    h, w = size
    ys = (torch.arange(h, device=boxes.device) + 0.5) / h
    xs = (torch.arange(w, device=boxes.device) + 0.5) / w
    cx, cy, hw, hh = (boxes[..., i, None, None] for i in range(4))  # [B, F, 1, 1]
    inside_x = (xs[None, None, None, :] - cx).abs() <= hw + 1.0 / w
    inside_y = (ys[None, None, :, None] - cy).abs() <= hh + 1.0 / h
    return (inside_x & inside_y).float()[:, None]  # [B, 1, F, h, w]


def predicted_x0(scheduler, sample: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The clean sample a prediction implies at timesteps `t` `[B]`, for the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return pred
    alpha_bar = scheduler.alphas_cumprod.to(sample.device)[t].float().view(-1, *[1] * (sample.ndim - 1))
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if kind == "v_prediction":
        return a * sample - s * pred
    return (sample - s * pred) / a.clamp_min(1e-4)  # epsilon: ill-posed at zero terminal SNR, hence the clamp


def colour_groups(vae, channels: int) -> torch.Tensor:
    """`[channels]`: the image colour channel each latent channel carries. Exact for `pixel_unshuffle` (channel
    `c * f * f + i * f + j` holds colour `c`); SD's VAE mixes colours, so each of its latent channels is its own
    group there (a per-channel affine change of SD latents is an approximate colour change)."""
    if vae.kind == "pixel_unshuffle":
        return torch.arange(channels) // vae.unshuffle_factor**2
    return torch.arange(channels)


def appearance_shift(motion: torch.Tensor, groups: torch.Tensor, amount: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """`motion` `[B, C, M, h, w]` with one random colour and lighting change per sample, the same on all its M
    frames (it reads as another appearance, not as noise): per colour group a gain `1 + a * u` and a smooth offset
    field `a * u` drawn on a 2x2 grid and bilinearly upsampled, `u ~ U(-1, 1)`, `a = amount[b]` `[B]`."""
    B, C, M, h, w = motion.shape
    G = int(groups.max()) + 1
    a = amount.view(B, 1, 1, 1)
    gain = 1 + a * (2 * torch.rand(B, G, 1, 1, generator=generator) - 1)
    field = a * (2 * torch.rand(B, G, 2, 2, generator=generator) - 1)
    field = F.interpolate(field, size=(h, w), mode="bilinear", align_corners=True)  # [B, G, h, w]
    gain, field = gain[:, groups], field[:, groups]  # [B, C, 1 | h, w]
    return motion * gain[:, :, None].to(motion) + field[:, :, None].to(motion)


class LoopyObjective(nn.Module):
    def __init__(self, model: LoopyModel, train_config, teacher: LoopyModel | None = None):
        super().__init__()
        self.model = model
        self.cfg = train_config
        self.scheduler = make_scheduler("ddpm", model.config.noise)
        self.stage = train_config.stage
        # not a submodule: the frozen teacher is neither trained, wrapped by DDP nor saved in the run's state
        object.__setattr__(self, "teacher", teacher)

    def sample_timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        T = self.scheduler.config.num_train_timesteps
        t = torch.randint(0, T, (batch,), generator=generator)
        if self.cfg.timestep_sampling == "high_noise_mix":
            high = torch.randint(int(self.cfg.high_noise_min * T), T, (batch,), generator=generator)
            pick = torch.rand(batch, generator=generator) < self.cfg.high_noise_fraction
            t = torch.where(pick, high, t)
        return t

    @torch.no_grad()
    def own_history(self, batch: dict[str, torch.Tensor], motion: torch.Tensor, generator: torch.Generator):
        """Motion frames in which the clip before the target is the model's own one-step x0 estimate of it.

        At inference the motion frames come from the model's own clips; training on true history alone lets a
        model's flaws (a colour pulled towards the average face, motion too large) feed on themselves over a minute.
        For a `self_history_prob` share of the samples that have a whole previous clip, that clip is noised to a
        uniformly drawn timestep and denoised in one step with its own conditions (reference, motion frames, audio),
        and the motion frames are recomputed with it: the TSM is a fixed linear map of the history, so that is the
        true motion frames plus the TSM of the difference on the last F history frames (with the TSM's `pad: first`,
        the padding before a video's first frame stays that frame's true latent).
        """
        model, prev = self.model, batch["prev_target"]
        B, F = prev.shape[0], prev.shape[2]
        pick = (torch.rand(B, generator=generator) < self.cfg.self_history_prob) & (batch["has_prev"].cpu() > 0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (B,), generator=generator)
        noise = torch.randn(prev.shape, generator=generator)
        idx = pick.nonzero().flatten()
        if not len(idx):
            return motion
        idx_d, t = idx.to(prev.device), t[idx].to(prev.device)
        prev = prev[idx_d]
        noisy = self.scheduler.add_noise(prev, noise[idx].to(prev.device, prev.dtype), t)
        ref_tokens, motion_feats = model.reference_net(batch["ref"][idx_d], batch["prev_motion"][idx_d])
        tokens = model.audio_to_latents(batch["prev_audio"][idx_d])
        pred = model.denoiser(noisy, t, tokens, ref_tokens, motion_feats, use_temporal=True)
        delta = predicted_x0(self.scheduler, noisy, pred, t).to(prev.dtype) - prev  # [n, C, F, h, w]
        reach = min(F, model.tsm.span)  # a TSM shorter than a clip sees only its last frames
        weights = model.tsm.weights[:, -reach:].to(delta)  # [M, reach]: each motion latent's share of those frames
        shift = torch.einsum("bcfhw,mf->bcmhw", delta[:, :, -reach:], weights)  # autocast may make this bf16
        return motion.index_add(0, idx_d, shift.to(motion.dtype))

    def motion_frames(self, batch: dict[str, torch.Tensor], v: torch.Tensor, generator: torch.Generator):
        """The batch's motion frames as the model sees them: the video-start padding where `v` says, the model's
        own history, Gaussian noise and an appearance change where the config asks for them."""
        cfg, motion = self.cfg, batch["motion"]
        drop_motion = (v < cfg.p_drop_motion_frames)[:, None, None, None, None]
        if cfg.self_history_prob > 0:
            motion = self.own_history(batch, motion, generator)
        motion = torch.where(drop_motion, batch["ref"][:, :, None].expand_as(motion), motion)
        if cfg.motion_noise_max > 0:
            B = motion.shape[0]
            sigma = torch.rand(B, generator=generator) * cfg.motion_noise_max
            jitter = torch.randn(motion.shape, generator=generator) * sigma.view(-1, 1, 1, 1, 1)
            motion = motion + jitter.to(motion.device, motion.dtype)
        if cfg.motion_appearance_max > 0:  # not on the video-start padding: that is the reference itself
            amount = torch.rand(motion.shape[0], generator=generator) * cfg.motion_appearance_max
            amount = amount * ~drop_motion.flatten().cpu()
            groups = colour_groups(self.model.config.vae, motion.shape[1])
            motion = appearance_shift(motion, groups, amount, generator)
        return motion

    def augment_appearance(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        """The batch with one random colour and lighting change per sample (`appearance_aug_max`) on every frame it
        holds: reference, motion frames, target and previous clip share it, so the sample stays one consistent
        video of another-looking person. Pixel-space latents are clamped to the image range they encode."""
        keys = [k for k in ("ref", "motion", "target", "prev_target", "prev_motion") if k in batch]
        ref = batch["ref"]
        frames = [batch[k] if k != "ref" else ref[:, :, None] for k in keys]
        sizes = [f.shape[2] for f in frames]
        amount = torch.rand(ref.shape[0], generator=generator) * self.cfg.appearance_aug_max
        vae = self.model.config.vae
        shifted = appearance_shift(torch.cat(frames, dim=2), colour_groups(vae, ref.shape[1]), amount, generator)
        if vae.kind == "pixel_unshuffle":
            shifted = shifted.clamp(-1, 1)
        out = dict(batch)
        for k, part in zip(keys, shifted.split(sizes, dim=2)):
            out[k] = part[:, :, 0] if k == "ref" else part.contiguous()
        return out

    def sample_scales(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """`[B, 2]` (ref_scale, audio_scale) per sample, uniform in the distillation's ranges."""
        ranges = torch.tensor([self.cfg.distill.ref_scale_range, self.cfg.distill.audio_scale_range])  # [2, lo/hi]
        return ranges[:, 0] + torch.rand(batch, 2, generator=generator) * (ranges[:, 1] - ranges[:, 0])

    @torch.no_grad()
    def guided_target(self, batch: dict[str, torch.Tensor], noisy: torch.Tensor, timesteps: torch.Tensor,
                      motion: torch.Tensor, motion_mask: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's guided prediction at `scales` `[B, 2]`: its three branches (guidance.BRANCHES:
        no reference and no audio, reference, reference and audio) as one batch of 3B, same noisy input, timesteps
        and motion frames, combined by `guidance.combine`; the pipeline's branch conditions exactly."""
        teacher, B = self.teacher, noisy.shape[0]
        ref_tokens, motion_feats = teacher.reference_net(batch["ref"], motion)
        on = torch.ones(B, dtype=torch.bool, device=noisy.device)
        with_audio = teacher.audio_to_latents(batch["audio"], on, batch["motion_stats"], motion_mask)
        no_audio = teacher.audio_to_latents(batch["audio"], ~on, batch["motion_stats"], motion_mask)
        tokens = torch.cat([no_audio, no_audio, with_audio])  # [3B, F, N, D]
        refs = {k: torch.cat([torch.zeros_like(v), v, v]) for k, v in ref_tokens.items()}
        feats = {k: v.repeat(3, 1, 1, 1) for k, v in motion_feats.items()}  # [(3B M), C, h, w]
        pred = teacher.denoiser(noisy.repeat(3, 1, 1, 1, 1), timesteps.repeat(3), tokens, refs, feats)
        ref_scale, audio_scale = (s.view(-1, 1, 1, 1, 1).to(noisy.device) for s in scales.T)
        return guidance.combine_batched(pred.float(), ref_scale, audio_scale)

    def predict(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One batch's prediction `pred` and its `target` `[B, C, F, h, w]`, with the inputs they came from."""
        model, cfg, distill = self.model, self.cfg, self.teacher is not None
        target_latents = batch["target"]  # [B, C, F, h, w]
        B, device = target_latents.shape[0], target_latents.device
        # 1. random draws (CPU generator -> device)
        noise = torch.randn(target_latents.shape, generator=generator).to(device, target_latents.dtype)
        timesteps = self.sample_timesteps(B, generator).to(device)
        u, v, m = torch.rand(3, B, generator=generator).to(device)
        drop_ref = (u < cfg.p_drop_ref + cfg.p_drop_both)
        drop_audio = (u >= cfg.p_drop_ref) & (u < cfg.p_drop_ref + cfg.p_drop_both + cfg.p_drop_audio)
        a2l = model.config.a2l
        audio_mask = ~drop_audio & (m < a2l.p_audio_only + a2l.p_audio_motion)
        motion_mask = ~drop_audio & (m >= a2l.p_audio_only)
        if distill:  # the student sees every condition (the teacher's branches stand for the dropped ones)
            drop_ref, audio_mask = torch.zeros_like(drop_ref), torch.ones_like(drop_ref)
            motion_mask = m >= a2l.p_audio_only  # audio + motion statistics, as the intensity control gives them
        if self.stage == 1:  # image stage: no audio, no motion statistics
            audio_mask = motion_mask = torch.zeros_like(drop_audio)
        # 2. noisy input and target from the model's noise schedule
        noisy = self.scheduler.add_noise(target_latents, noise, timesteps)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(target_latents, noise, timesteps)
        else:
            target = target_latents
        # 3. conditions: ReferenceNet, motion frames, motion tokens
        motion = self.motion_frames(batch, v, generator) if self.stage == 2 else None
        ref_tokens, motion_feats = model.reference_net(batch["ref"], motion)
        keep = (~drop_ref).to(target_latents.dtype)
        ref_tokens = {k: t * keep.view(-1, 1, 1).to(t.dtype) for k, t in ref_tokens.items()}
        tokens = model.audio_to_latents(batch["audio"], audio_mask, batch["motion_stats"], motion_mask)
        # 4. distillation: the teacher's guided prediction at scales drawn per sample replaces the target
        scales, extra = None, {}
        if distill:
            scales = self.sample_scales(B, generator)
            target = self.guided_target(batch, noisy, timesteps, motion, motion_mask, scales)
            extra = {"guidance_scales": scales.to(device, target_latents.dtype)}
        # 5. prediction
        pred = model.denoiser(noisy, timesteps, tokens, ref_tokens, motion_feats, use_temporal=self.stage == 2,
                              **extra)
        return {"pred": pred, "target": target, "noisy": noisy, "timesteps": timesteps, "motion": motion,
                "motion_mask": motion_mask, "guidance_scales": scales}

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        if cfg.appearance_aug_max > 0:
            batch = self.augment_appearance(batch, generator)
        target_latents = batch["target"]
        out = self.predict(batch, generator)
        loss = F.mse_loss(out["pred"].float(), out["target"].float(), reduction="none")  # [B, C, F, h, w]
        if cfg.mouth_loss_weight > 0:
            loss = loss * (1.0 + cfg.mouth_loss_weight * mouth_mask(batch["mouth"], loss.shape[-2:]))
        if cfg.region_loss_weight > 0:
            change = (target_latents - batch["ref"][:, :, None]).abs().mean(dim=1, keepdim=True)
            change = change / change.mean(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)
            loss = loss * (1.0 + cfg.region_loss_weight * change.clamp(max=5.0))
        return loss.mean()
