"""Turn a folder of talking-head videos into training shards.

    python -m training.preprocess --videos DIR --out DATA_DIR --model START.safetensors [--audio-encoder DIR]
        [--keypoints {auto,landmarks,pixels}]

`--model` is the Loopy checkpoint training will start from (`loopy init`): its config fixes the resolution, the
fps, the codec (VAE) and the audio features, so the cached latents and features match the model exactly.

Per video (any container PyAV reads, any fps and resolution):
1. decode frames and audio; skip (with a logged reason, never a crash) videos with no audio, unreadable ones, and
   ones shorter than one clip;
2. resample to the model's fps (nearest frame);
3. crop a face-centred square: a synthetic-world video (a `<stem>.json` ground truth beside it) is already one;
   otherwise `loopy_core.face` (OpenCV's Haar detector, weights inside the `opencv-python-headless` wheel) finds the
   face in sampled frames and one steady crop with margin for head motion is used for the whole video; with no face
   found, the video is skipped with the reason (`--allow-center-crop` keeps it, centre-cropped);
4. encode the frames with the model's codec (scaled latents) and the audio into per-frame features;
5. per-frame motion tracks for the motion statistics (paper Sec. 3.3), head `[T, 3]` (tx, ty, roll) and
   expression `[T, 2]` (mouth opening, eye closure), and the mouth box `[T, 4]` (centre x, y, half-width,
   half-height; image fractions) for the mouth-region loss weight. Synthetic videos: the ground truth, and mouth
   boxes measured from their pixels. Real videos, by `--keypoints`:
   - `landmarks`: 68 facial keypoints per frame (`loopy_core.landmarks`: dlib's HOG detector and shape predictor,
     from `pip install "comfyui-loopy[landmarks]"`; the 68-point model's training data, iBUG 300-W, is for
     non-commercial use) -> eye/nose centre drift and eye-line roll, inner-lip gap and eye aspect ratio, the lip
     box. Frames without a face are interpolated from their neighbours; a video with landmarks in fewer than half
     its frames is skipped with the reason, so every kept video has landmark tracks;
   - `pixels`: coarse pixel proxies (brightness-centroid drift, a left/right tilt proxy, lower-face and eye-band
     activity) and the lower face of the crop as the mouth box;
   - `auto` (default): `landmarks` when dlib is installed, else `pixels` with a one-line warning; a video with too
     few landmarks falls back to the pixel proxies, with a warning, instead of being skipped.

Output: `DATA_DIR/<id>.safetensors` per video (tensors `latents [T, C, h, w]` fp16, `audio [T, L, D]` fp16,
`wave16k [N]` int16, `head [T, 3]`, `expression [T, 2]`, `mouth [T, 4]`; metadata: source, fps, keypoints) and
`DATA_DIR/index.json` with the model config, the keypoint mode, the kept videos (each with the source of its tracks:
`truth`, `landmarks` or `pixels`) and the skipped ones with their reasons.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from loopy_core.face import detect_face_box
from loopy_core.video import resample_frames

logger = logging.getLogger("training.preprocess")

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
SHARD_FORMAT = "loopy-shards-v1"
KEYPOINT_MODES = ("auto", "landmarks", "pixels")
MIN_LANDMARK_FRACTION = 0.5  # of a video's frames; fewer: skipped (`landmarks`) or pixel proxies (`auto`)
LOWER_FACE_MOUTH = (0.5, 0.7, 0.16, 0.08)  # the pixel proxies' mouth box: the lower face of the crop


class SkipVideo(Exception):
    """A video that can't become training data; the message is the logged reason."""


def square_crop(frames: np.ndarray, box, margin: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One steady square crop around `box` (or the centre when None), enlarged by `margin`, clamped to the frame."""
    _, H, W, _ = frames.shape
    if box is None:
        side = min(H, W)
        cx, cy = W / 2, H / 2
    else:
        x, y, w, h = box
        side = min(int(max(w, h) * margin), H, W)
        cx, cy = x + w / 2, y + h / 2
    left = int(np.clip(cx - side / 2, 0, W - side))
    top = int(np.clip(cy - side / 2, 0, H - side))
    return frames[:, top : top + side, left : left + side], (left, top, side)


def real_video_tracks(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Approximate motion tracks for a real, face-cropped video: head = brightness centroid drift and tilt proxy,
    expression = lower-face and eye-band activity. Coarse, but on the same scale for every video."""
    x = torch.from_numpy(frames).float().mean(-1) / 255.0  # [T, S, S]
    S = x.shape[1]
    grid = torch.linspace(0, 1, S)
    mass = x.sum(dim=(1, 2)).clamp_min(1e-6)
    cx = (x.sum(1) * grid).sum(1) / mass
    cy = (x.sum(2) * grid).sum(1) / mass
    left, right = x[:, :, : S // 2].mean(dim=(1, 2)), x[:, :, S // 2 :].mean(dim=(1, 2))
    head = torch.stack([cx - cx.mean(), cy - cy.mean(), right - left], dim=1)
    lower = x[:, 2 * S // 3 :, S // 4 : 3 * S // 4]
    eyes = x[:, S // 4 : S // 2, S // 6 : 5 * S // 6]
    expression = torch.stack(
        [(lower - lower.mean(0)).abs().mean(dim=(1, 2)), (eyes - eyes.mean(0)).abs().mean(dim=(1, 2))], dim=1
    )
    return head.numpy(), expression.numpy()


def make_landmarker(mode: str):
    """The `loopy_core.landmarks.FaceLandmarker` for `--keypoints mode`, or None for the pixel proxies. `landmarks`
    without dlib raises the ImportError (it names the extra); `auto` logs it once and uses the pixel proxies."""
    if mode not in KEYPOINT_MODES:
        raise ValueError(f"--keypoints must be one of {', '.join(KEYPOINT_MODES)}, got {mode!r}")
    if mode == "pixels":
        return None
    from loopy_core.landmarks import FaceLandmarker

    try:
        return FaceLandmarker()
    except (ImportError, FileNotFoundError) as e:
        if mode == "landmarks":
            raise
        logger.warning("--keypoints auto: %s; real videos get pixel proxies", e)
        return None


def real_video_motion(crop: np.ndarray, landmarker, strict: bool, name: str):
    """Head `[T, 3]`, expression `[T, 2]` and mouth `[T, 4]` tracks of a face-cropped real video, and their source
    (`landmarks` or `pixels`). Too few frames with landmarks: `SkipVideo` when `strict`, else the pixel proxies."""
    if landmarker is not None:
        from loopy_core.landmarks import tracks_from_landmarks, video_landmarks

        points, found = video_landmarks(crop, landmarker)
        if found.mean() >= MIN_LANDMARK_FRACTION:
            head, expression, mouth = tracks_from_landmarks(points, found, crop.shape[1:3])
            return head, expression, mouth, "landmarks"
        reason = (f"facial landmarks found in {int(found.sum())} of {len(found)} frames "
                  f"(need {MIN_LANDMARK_FRACTION:.0%})")
        if strict:
            raise SkipVideo(reason)
        logger.warning("%s: %s; using pixel proxies", name, reason)
    head, expression = real_video_tracks(crop)
    mouth = np.tile(np.array([LOWER_FACE_MOUTH], np.float32), (len(crop), 1))
    return head, expression, mouth, "pixels"


def synthetic_tracks(truth: dict, num_frames: int, src_fps: float, fps: float) -> tuple[np.ndarray, np.ndarray]:
    frames = truth["frames"]
    idx = np.minimum(np.floor(np.arange(num_frames) / fps * src_fps + 1e-6).astype(int), len(frames["tx"]) - 1)
    head = np.stack([np.asarray(frames[k], np.float32)[idx] for k in ("tx", "ty", "roll")], axis=1)
    expression = np.stack([np.asarray(frames[k], np.float32)[idx] for k in ("mouth_open", "blink")], axis=1)
    return head, expression


@torch.no_grad()
def process_video(path: Path, model, encoder, args, landmarker=None) -> tuple[dict[str, torch.Tensor], str]:
    """One video -> its shard tensors and the source of its motion tracks (`truth`, `landmarks` or `pixels`)."""
    from loopy_core.audio import extract_audio_features, prepare_waveform
    from loopy_core.video import read_video

    cfg = model.config
    # 1. decode
    try:
        video = read_video(path)
    except (ValueError, OSError) as e:
        raise SkipVideo(f"unreadable: {e}") from None
    if video.audio is None or video.audio.size == 0:
        raise SkipVideo("no audio track")
    if len(video.frames) == 0:
        raise SkipVideo("no frames")
    # 2. fps
    frames = resample_frames(video.frames, video.fps, cfg.fps)
    if len(frames) < cfg.frames_per_clip + 1:
        raise SkipVideo(f"too short: {len(frames)} frames at {cfg.fps} fps, need more than one clip")
    # 3. face crop and motion tracks
    truth_path = path.with_suffix(".json")
    truth = json.loads(truth_path.read_text()) if truth_path.is_file() else None
    if truth is not None and str(truth.get("format", "")).startswith("loopy-synthetic"):
        from loopy_core.eval.estimators import measure_faces

        crop = frames
        head, expression = synthetic_tracks(truth, len(frames), video.fps, cfg.fps)
        faces = measure_faces(frames)
        mouth = np.stack([faces.mouth_x, faces.mouth_y, np.maximum(faces.mouth_width, 0.06),
                          np.maximum(faces.mouth_open, 0.03)], axis=1)
        keypoints = "truth"
    else:
        box = detect_face_box(frames)
        if box is None and not args.allow_center_crop:
            raise SkipVideo("no face found (install opencv-python-headless for the detector, or --allow-center-crop)")
        crop, _ = square_crop(frames, box, args.margin)
        head, expression, mouth, keypoints = real_video_motion(crop, landmarker, args.keypoints == "landmarks",
                                                               path.name)
    # 4. latents and audio features
    pixels = torch.from_numpy(np.ascontiguousarray(crop)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = []
    for chunk in pixels.split(args.batch_size):
        chunk = F.interpolate(chunk, size=(cfg.resolution, cfg.resolution), mode="bicubic", antialias=True,
                              align_corners=False).clamp(-1, 1)
        latents.append(model.vae.encode(chunk.to(args.device)).float().cpu())
    latents = torch.cat(latents)
    try:
        feats = extract_audio_features(video.audio, video.sample_rate, cfg.fps, encoder, cfg.audio)
        wave16k = prepare_waveform(video.audio, video.sample_rate, cfg.audio.sample_rate)
    except ValueError as e:
        raise SkipVideo(f"unusable audio: {e}") from None
    T = min(len(latents), feats.num_frames)
    audio = feats.feats[:T, cfg.audio.window]  # the window's centre: per-frame features [T, L, D]
    tensors = {
        "latents": latents[:T].half().contiguous(),
        "audio": audio.half().contiguous(),
        "wave16k": (wave16k.clamp(-1, 1) * 32767).round().to(torch.int16).contiguous(),
        "head": torch.as_tensor(head[:T], dtype=torch.float32).contiguous(),
        "expression": torch.as_tensor(expression[:T], dtype=torch.float32).contiguous(),
        "mouth": torch.as_tensor(mouth[:T], dtype=torch.float32).contiguous(),
    }
    return tensors, keypoints


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.preprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    parser.add_argument("--out", required=True, help="output DATA_DIR")
    parser.add_argument("--model", required=True, help="the Loopy checkpoint training starts from (loopy init)")
    parser.add_argument("--base", help="SD1.5 base if the checkpoint has no VAE")
    parser.add_argument("--audio-encoder", help="wav2vec2 folder (default: the model's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per codec batch")
    parser.add_argument("--margin", type=float, default=1.8, help="crop side / face-box side")
    parser.add_argument("--allow-center-crop", action="store_true", help="keep videos where no face is found")
    parser.add_argument("--keypoints", choices=KEYPOINT_MODES, default="auto",
                        help="motion tracks of real videos: facial landmarks (needs the [landmarks] extra), pixel "
                             "proxies, or auto (landmarks when installed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    from loopy_core.checkpoint import load_checkpoint
    from loopy_core.render import load_audio_encoder

    videos_dir, out = Path(args.videos), Path(args.out)
    if not videos_dir.is_dir():
        print(f"preprocess: error: --videos folder {str(videos_dir)!r} does not exist", file=sys.stderr)
        return 2
    files = sorted(p for p in videos_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not files:
        print(f"preprocess: error: no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {str(videos_dir)!r}",
              file=sys.stderr)
        return 2
    try:
        landmarker = make_landmarker(args.keypoints)
    except (ImportError, FileNotFoundError) as e:
        print(f"preprocess: error: --keypoints {args.keypoints}: {e}", file=sys.stderr)
        return 2
    keypoints = "landmarks" if landmarker is not None else "pixels"
    model = load_checkpoint(args.model, device=args.device, base=args.base)
    encoder = load_audio_encoder(model.config, args.model, args.audio_encoder, args.device)
    out.mkdir(parents=True, exist_ok=True)
    kept, skipped = [], []
    for i, path in enumerate(files):
        rel = str(path.relative_to(videos_dir))
        try:
            tensors, source = process_video(path, model, encoder, args, landmarker)
        except SkipVideo as e:
            logger.warning("skipping %s: %s", rel, e)
            skipped.append({"video": rel, "reason": str(e)})
            continue
        vid = f"{i:06d}"
        tmp = out / f".{vid}.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": SHARD_FORMAT, "source": rel, "fps": str(model.config.fps),
                                               "keypoints": source})
        os.replace(tmp, out / f"{vid}.safetensors")
        kept.append({"id": vid, "shard": f"{vid}.safetensors", "source": rel, "num_frames": len(tensors["latents"]),
                     "keypoints": source})
        logger.info("%s -> %s (%d frames, %s motion tracks)", rel, vid, len(tensors["latents"]), source)
    index = {
        "format": SHARD_FORMAT,
        "fps": model.config.fps,
        "config": model.config.to_dict(),
        "keypoints": keypoints,
        "videos": kept,
        "skipped": skipped,
    }
    tmp = out / ".index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / "index.json")
    print(f"preprocess: {len(kept)} videos -> {out} ({len(skipped)} skipped)")
    return 0 if kept else 1


if __name__ == "__main__":
    sys.exit(main())
