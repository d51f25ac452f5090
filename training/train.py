"""Train Loopy with accelerate: stage 1 (image pairs) or stage 2 (video), from preprocessed shards.

    python -m training.train --config training/configs/synthetic_tiny.yaml [key=value ...] [--resume latest]
    accelerate launch -m training.train --config training/configs/stage2_sd15.yaml
    python -m training.train --config training/configs/synthetic_tiny_distill.yaml distill.teacher=TEACHER.safetensors

The last one is guidance distillation (`training/distill.py`): a one-branch student of a three-branch teacher.

Runs on:
  - a single CPU or GPU;
  - several GPUs (DDP): `accelerate launch --multi_gpu --num_processes N -m training.train ...`; on a machine with
    no GPU the same command runs N CPU processes over gloo;
  - DeepSpeed/FSDP through accelerate's own config (`accelerate config`).

The run folder holds `config.yaml`, `log.jsonl` (and TensorBoard logs where tensorboard is installed),
`checkpoint-{step}/` folders (accelerate state: model, optimizer, lr scheduler, RNG; plus `loopy.safetensors`, the
model in the checkpoint format the CLI and the nodes load), and `validation/step-{step}.mp4`. Checkpoints are written
to a temporary folder and renamed when complete, so a run killed at any moment loses at most the steps since the
last one; `--resume latest` continues with the same step counter, optimizer, scheduler and data position.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from .config import TrainConfig

logger = logging.getLogger("training.train")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m training.train", description="Train Loopy.")
    parser.add_argument("--config", help="YAML training config (training/configs/*.yaml)")
    parser.add_argument("--resume", help="'latest' or a checkpoint folder to continue from")
    parser.add_argument("overrides", nargs="*", help="key=value settings that override the YAML")
    return parser.parse_args(argv)


def list_checkpoints(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """All randomness of one micro-batch, reproducible from the step number alone."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 131 + micro) * 1031 + rank)


def save_checkpoint_dir(accelerator, objective, ema, run_dir: Path, step: int, limit: int, audio_encoder=None,
                        metadata: dict[str, str] | None = None) -> Path:
    """accelerate state + `loopy.safetensors`, written to a temp folder and renamed; old ones pruned.

    `audio_encoder` (the starting model's embedded one, frozen) is embedded again, so each checkpoint generates
    on its own; `metadata` joins each file's metadata."""
    from loopy_core.checkpoint import save_checkpoint

    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(objective).model
        metadata = {**(metadata or {}), "training_step": str(step)}
        save_checkpoint(model, tmp / "loopy.safetensors", metadata=metadata, audio_encoder=audio_encoder)
        if ema is not None:
            params = [p for p in model.parameters() if p.requires_grad]
            ema.store(params)
            ema.copy_to(params)
            save_checkpoint(model, tmp / "loopy_ema.safetensors", metadata={**metadata, "ema": "1"},
                            audio_encoder=audio_encoder)
            ema.restore(params)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(run_dir)[:-limit] if limit > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


@torch.no_grad()
def validate(model, data_dir: Path, cfg: TrainConfig, step: int, run_dir: Path, audio_encoder=None) -> dict:
    """Render a short video of the first training video's voice and reference with the shared pipeline
    (`audio_encoder`: the starting model's embedded wav2vec2; None for log-mel models)."""
    from safetensors import safe_open

    from loopy_core.image import to_image_tensor
    from loopy_core.pipeline import GenerationOptions, LoopyPipeline
    from loopy_core.video import VideoWriter

    from .data import read_index

    video = read_index(data_dir)["videos"][0]
    with safe_open(str(data_dir / video["shard"]), framework="pt") as f:
        ref_latent = f.get_slice("latents")[0:1].float()
        wave = f.get_tensor("wave16k").float() / 32767.0
    sr = model.config.audio.sample_rate
    wave = wave[: int(cfg.validation_seconds * sr)]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        image = to_image_tensor(model.vae.decode(ref_latent.to(device)))[0]
        pipe = LoopyPipeline(model, None if audio_encoder is None else audio_encoder.to(device))
        audio = pipe.encode_audio(wave.numpy(), sr)
        frames = pipe(image, audio, GenerationOptions(steps=cfg.validation_steps_per_clip, seed=cfg.seed))
    finally:
        model.train(was_training)
    out = run_dir / "validation" / f"step-{step}.mp4"
    out.parent.mkdir(exist_ok=True)
    with VideoWriter(out, fps=model.config.fps, audio=wave.numpy(), sample_rate=sr) as writer:
        writer.write(frames)
    result = {"validation/video": str(out), "validation/frames": int(frames.shape[0])}
    try:
        from loopy_core.eval import evaluate_video

        metrics = evaluate_video(frames.numpy(), model.config.fps, wave.numpy(), sr, image.numpy())
        result.update({f"validation/{k}": v for k, v in flatten(metrics).items() if isinstance(v, (int, float))})
    except Exception as e:  # metrics are a bonus here; the video is what validation must produce
        logger.info("validation metrics unavailable: %s", e)
    return result


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        elif isinstance(v, bool):
            out[key] = float(v)
        else:
            out[key] = v
    return out


def find_resume(run_dir: Path, resume: str) -> Path:
    """The checkpoint folder `--resume` names ('latest': the highest step in `run_dir`)."""
    found = list_checkpoints(run_dir) if resume == "latest" else [Path(resume)]
    if not found or not found[-1].is_dir():
        raise FileNotFoundError(f"no checkpoint to resume from ({resume!r} in {str(run_dir)!r})")
    return found[-1]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = TrainConfig.load(args.config, args.overrides)
        return train(cfg, args.resume)
    except (FileNotFoundError, ValueError) as e:
        if os.environ.get("LOOPY_DEBUG"):
            raise
        print(f"train: error: {e}", file=sys.stderr)
        return 2


def train(cfg: TrainConfig, resume: str | None = None) -> int:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from loopy_core.checkpoint import load_checkpoint, load_embedded_audio_encoder

    from . import distill
    from .data import EpochSampler, ShardDataset
    from .objective import LoopyObjective, trainable_modules

    # 1. accelerator, then the seed, then the model (so the seed also fixes any new weights)
    run_dir = Path(cfg.output_dir)
    report_to = cfg.report_to
    if report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            report_to = None
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=report_to if report_to not in (None, "none") else None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        cpu=not torch.cuda.is_available(),
    )
    logging.basicConfig(level=logging.INFO if accelerator.is_local_main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    set_seed(cfg.seed)
    resume_dir = find_resume(run_dir, resume) if resume else None
    if resume_dir is not None:
        distill.check_resume(resume_dir, cfg)
    teacher, metadata = None, {}
    if cfg.distill.teacher:  # the student starts from `model`, by default the teacher itself
        teacher = distill.load_teacher(cfg)
        model = distill.load_student(cfg)
        metadata[distill.TEACHER_KEY] = str(Path(cfg.distill.teacher).resolve())
    elif not cfg.model:
        raise ValueError("no starting model: set `model:` to a Loopy checkpoint from `loopy init`")
    else:
        model = load_checkpoint(cfg.model, config_changes=cfg.model_changes or None)
    # frozen; carried into every checkpoint, used by validation
    audio_encoder = load_embedded_audio_encoder(cfg.model or cfg.distill.teacher)

    # 2. what trains: explicit modules, never name substrings
    model.requires_grad_(False)
    for module in trainable_modules(model, cfg.trainable):
        module.requires_grad_(True)
    model.train()
    if cfg.gradient_checkpointing:
        model.denoiser.gradient_checkpointing = True
        model.reference_net.gradient_checkpointing = True
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: one multi-tensor update a step, not a Python loop of small ops over every parameter tensor
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=True) if cfg.use_ema else None

    # 3. data, optimizer, schedule
    dataset = ShardDataset(cfg.data, model.config, cfg.stage, seed=cfg.seed, previous_clip=cfg.self_history_prob > 0)
    sampler = EpochSampler(len(dataset))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.train_batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=True,
        persistent_workers=cfg.num_workers > 0,
    )
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.max_train_steps * accelerator.num_processes,
    )
    objective = LoopyObjective(model, cfg, teacher)
    objective, optimizer, loader, lr_scheduler = accelerator.prepare(objective, optimizer, loader, lr_scheduler)
    if teacher is not None:  # frozen: in the weight dtype, as accelerate's autocast runs it
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        teacher.to(accelerator.device, weight_dtype)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # 4. resume
    global_step = 0
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        global_step = int(resume_dir.name.split("-")[1])
        logger.info("resumed from %s at step %d", resume_dir, global_step)
    if report_to not in (None, "none"):
        accelerator.init_trackers("loopy", config={k: v for k, v in flatten(cfg.to_dict()).items()
                                                   if isinstance(v, (int, float, str, bool))})

    batches_per_epoch = len(loader)
    consumed = global_step * cfg.gradient_accumulation_steps
    total_batch = cfg.train_batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps
    logger.info("***** Running training (stage %d) *****", cfg.stage)
    if teacher is not None:
        logger.info("  guidance distillation from %s: audio scales %s, reference scales %s", cfg.distill.teacher,
                    cfg.distill.audio_scale_range, cfg.distill.ref_scale_range)
    logger.info("  trainable %s: %d parameters", cfg.trainable, sum(p.numel() for p in params))
    logger.info("  videos %d, items per epoch %d, batch per device %d", len(dataset.videos), len(dataset),
                cfg.train_batch_size)
    logger.info("  total train batch size (w. parallel, distributed & accumulation) = %d", total_batch)
    logger.info("  steps %d -> %d", global_step, cfg.max_train_steps)

    # 5. the loop
    log_file = open(run_dir / "log.jsonl", "a") if accelerator.is_main_process else None
    tick, samples, running = time.perf_counter(), 0, []
    deadline = time.perf_counter() + cfg.max_train_minutes * 60 if cfg.max_train_minutes > 0 else None
    last_step = cfg.max_train_steps
    while global_step < last_step:
        epoch, skip = divmod(consumed, batches_per_epoch)
        sampler.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        for micro, batch in enumerate(epoch_loader):
            generator = step_generator(cfg.seed, global_step, consumed % cfg.gradient_accumulation_steps,
                                       accelerator.process_index)
            with accelerator.accumulate(objective):
                loss = objective(batch, generator)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            consumed += 1
            samples += batch["target"].shape[0] * accelerator.num_processes
            running.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(params)
            global_step += 1
            if deadline is not None and time.perf_counter() > deadline:
                out_of_time = torch.tensor([1.0], device=accelerator.device)
            else:
                out_of_time = torch.tensor([0.0], device=accelerator.device)
            if accelerator.reduce(out_of_time, "max").item() > 0 and last_step > global_step:
                logger.info("max_train_minutes reached: stopping at step %d", global_step)
                last_step = global_step
            # 6. logs
            if global_step % cfg.log_every == 0 or global_step == last_step:
                elapsed = time.perf_counter() - tick
                logs = {
                    "train/loss": accelerator.gather(torch.stack(running).mean()[None]).mean().item(),
                    "lr": lr_scheduler.get_last_lr()[0],
                    "samples_per_s": samples / max(elapsed, 1e-9),
                    "step_s": elapsed / cfg.log_every,
                }
                if grad_norm is not None:
                    logs["grad_norm"] = float(grad_norm)
                accelerator.log(logs, step=global_step)
                if log_file:
                    log_file.write(json.dumps({"step": global_step, **logs}) + "\n")
                    log_file.flush()
                logger.info("step %d: loss %.4f, lr %.2e, %.2f samples/s", global_step, logs["train/loss"],
                            logs["lr"], logs["samples_per_s"])
                tick, samples, running = time.perf_counter(), 0, []
            # 7. checkpoints and validation
            if global_step % cfg.checkpointing_steps == 0 or global_step == last_step:
                path = save_checkpoint_dir(accelerator, objective, ema, run_dir, global_step,
                                           cfg.checkpoints_total_limit, audio_encoder, metadata)
                logger.info("saved %s", path)
            if cfg.validation_steps and global_step % cfg.validation_steps == 0 and accelerator.is_main_process:
                result = validate(accelerator.unwrap_model(objective).model, Path(cfg.data), cfg, global_step, run_dir,
                                  audio_encoder)
                accelerator.log({k: v for k, v in result.items() if isinstance(v, (int, float))}, step=global_step)
                if log_file:
                    log_file.write(json.dumps({"step": global_step, **result}) + "\n")
                    log_file.flush()
            if global_step >= last_step:
                break
    # a digest of the final weights per process: DDP keeps them identical, and this makes that checkable
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().float().cpu().numpy().tobytes())
    (run_dir / f"final_weights_rank{accelerator.process_index}.sha256").write_text(digest.hexdigest())
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if log_file:
        log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
